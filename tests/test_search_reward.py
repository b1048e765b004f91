# ruff: noqa: F811
"""What a search episode's reward and lengths are made of, through the code that produces them:
episodes built by the EpisodeEngine (a scripted sampler over BM25), scored by the training
rewards, and the lengths the training loop hands every algorithm hook."""

import pytest
import torch
from conftest import run_overrides, search_settings

# the episode tests' fixtures, imported so pytest finds them here (their names are arguments below)
from test_episode import Scripted, corpus, retriever, settings, tiny  # noqa: F401

from evals.verifiers import qa_em, qa_f1, search_f1, search_f1_think, tagged_answer
from rlvr.rollout.episode import INVALID, EpisodeEngine


def scripted_episodes(tok, cfg, retriever, scripts):
    """One episode per prompt of `scripts` (prompt i seeded by i), through the EpisodeEngine."""
    return EpisodeEngine(Scripted(tok, scripts), tok, cfg, retriever).generate(list(scripts), 1, list(range(len(scripts))))


def episode_texts(tok, cfg, retriever, scripts):
    return dict(zip(scripts, scripted_episodes(tok, cfg, retriever, scripts).texts, strict=True))


def test_the_answer_is_read_from_the_models_turns_never_from_the_invalid_notice(tiny, corpus, retriever):
    _, tok = tiny
    cfg = settings(corpus, **{"rollout.episode.max_turns": 4, "rollout.episode.top_k": 1})
    texts = episode_texts(tok, cfg, retriever, {
        # searched, one invalid turn, then stopped without answering
        "A:": ["<search>Mira Holt</search>", "I am not sure", "still unsure<eos>"],
        # an <answer> the model never closed: the turn is invalid, the notice follows it
        "B:": ["<search>Mira Holt</search>", "<answer>Procter", "hmm<eos>"],
        # the notice, then a real answer
        "C:": ["<search>Mira Holt</search>", "oops", "<answer>Procter and Gamble</answer>"],
    })  # fmt: skip
    for prompt in ("A:", "B:"):
        assert INVALID in texts[prompt]  # the notice spells "<answer> and </answer>" ...
        assert tagged_answer(texts[prompt]) is None  # ... and is never the model's answer
        # no answer: the F1 term is 0, only the format term (1 good turn of 3) remains
        assert search_f1(texts[prompt], "Procter and Gamble") == pytest.approx(0.3 / 3)
        assert qa_em(texts[prompt], "and") == 0.0 and qa_f1(texts[prompt], "Procter and Gamble") < 0.5
    assert tagged_answer(texts["C:"]) == "Procter and Gamble"
    assert search_f1(texts["C:"], "Procter and Gamble") == pytest.approx(1 + 0.3 * 2 / 3)


def test_the_seeds_reward_is_squad_f1_and_qa_evaluation_keeps_hotpotqas():
    from evals.verifiers import squad_f1

    info = "\n\n<information>Doc 1(Title: \"A\") a</information>\n\n"
    episode = "<think>a</think><search>a</search>" + info + "<think>b</think><answer>yes, both are</answer>"
    # wapo's compute_f1 (SQuAD): P = 1/3, R = 1, F1 = 0.5; HotpotQA's official F1 gives yes/no no credit
    assert squad_f1("yes, both are", "yes") == pytest.approx(0.5)
    assert search_f1_think(episode, "yes") == pytest.approx(0.5 + 0.3)
    assert qa_f1(episode, "yes") == 0.0
    assert squad_f1("the", "a") == 1.0 and squad_f1("the", "Oslo") == 0.0  # empty after normalising


@pytest.mark.slow
def test_every_length_an_algorithm_sees_is_the_models_own_tokens(tiny, openbook, tmp_path):
    """The loop's calls of shape_rewards and advantages(lengths=), on episodes with passages."""
    from rlvr.config import load_config
    from rlvr.models import save_checkpoint
    from rlvr.train import Trainer

    model, tok = tiny
    save_checkpoint(model, tok, tmp_path / "base")
    cfg = load_config(None, run_overrides(tmp_path / "base", openbook, tmp_path / "run", *search_settings(openbook),
                                          "algorithm.name=opo", "rollout.prompts_per_step=2", "rollout.group_size=4"))
    trainer = Trainer(cfg)
    # a row whose first turn has an odd seed searches once, then answers; the others answer at
    # once (row seeds alternate in parity within a group): groups mix lengths and passages
    inner = Scripted(tok, {})
    inner.extend = lambda contexts, seeds, n, temperature, stop=(): [
        _turn(tok, tok.decode(c), seed) for c, seed in zip(contexts, seeds, strict=True)]
    collector = trainer.batches.collector
    collector.engine = EpisodeEngine(inner, tok, cfg.rollout, collector.engine.retriever)
    seen, algo = {}, trainer.algo
    shape, advantages = algo.shape_rewards, algo.advantages
    algo.shape_rewards = lambda r, lengths, t: (seen.__setitem__("shape", lengths), shape(r, lengths, t))[1]
    algo.advantages = lambda r, g, lengths: (seen.__setitem__("adv", lengths), advantages(r, g, lengths=lengths))[1]
    batch, _ = collector.collect(0)
    trainer.advantages(batch)
    r = batch.rollouts
    injected = r.completion_mask.sum(-1) - r.loss_mask.sum(-1)
    assert (injected > 0).any() and (injected == 0).any()  # some rows carry passages, some none
    torch.testing.assert_close(seen["adv"], r.loss_mask.sum(-1))
    torch.testing.assert_close(seen["shape"], r.loss_mask.sum(-1))


def _turn(tok, context: str, seed: int):
    from rlvr.rollout.base import Turn

    text = "<search>Bako</search>" if seed % 2 and "<information>" not in context else "<answer>Norvia</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return Turn(ids, [-0.5] * len(ids))


def test_evaluation_counts_the_searches_the_episode_made(tiny, corpus, retriever):
    """lm-eval's searches / two_searches, read from the episode text, equal the engine's counters."""
    from evals.tasks.utils import process_search

    _, tok = tiny
    cfg = settings(corpus, **{"rollout.episode.max_turns": 4, "rollout.episode.top_k": 1})
    scripts = {
        "A:": ["<search>Mira Holt</search>", "<search>Alder Vale</search>", "<answer>1901</answer>"],
        "B:": ["<search></search>", "<search>Mira Holt</search>", "<answer>1901</answer>"],  # one invalid
        "C:": ["<answer>1901</answer>"],
    }
    roll = scripted_episodes(tok, cfg, retriever, scripts)
    assert roll.episode["searches"].tolist() == [2.0, 1.0, 0.0]
    got = process_search({"answer": "1901"}, [roll.texts])
    assert got["searches"] == pytest.approx(1.0) and got["two_searches"] == pytest.approx(1 / 3)
    assert got["em"] == 1.0

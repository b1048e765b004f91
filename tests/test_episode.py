"""rlvr.rollout.episode: the turn logic of search episodes, driven by a scripted model (each
prompt's continuations in order) against BM25 over a small corpus."""

import json

import pytest

from rlvr.retrieval import BM25Retriever
from rlvr.rollout.episode import (
    INVALID,
    EpisodeSettings,
    cut_after_action,
    episode_stats,
    parse_action,
    run_episodes,
)


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    root = tmp_path_factory.mktemp("episode")
    docs = {"d1": '"Alder Vale"\nAlder Vale is the home town of Mira Holt.',
            "d2": '"Mira Holt"\nMira Holt was born in 1901.'}
    (root / "c.jsonl").write_text("".join(json.dumps({"id": i, "contents": c}) + "\n" for i, c in docs.items()))
    return BM25Retriever.open(root / "c.jsonl", root / "index")


def scripted(scripts: dict[str, list[str]]):
    """generate(): the next scripted continuation of the prompt each context starts with."""
    cursor = {p: 0 for p in scripts}

    def generate(contexts):
        out = []
        for context in contexts:
            prompt = next(p for p in scripts if context.startswith(p))
            out.append(scripts[prompt][cursor[prompt]])
            cursor[prompt] += 1
        return out

    return generate


def test_actions_are_parsed_and_cut_as_search_r1_does():
    assert cut_after_action("a <search>x</search> trailing <answer>y</answer>") == "a <search>x</search>"
    assert parse_action("think <search> Mira Holt </search>").content == "Mira Holt"
    assert parse_action("<answer>1901</answer>").kind == "answer"
    for bad in ("no tags", "<search>unclosed", "<search>   </search>", "<answer>x</search>"):
        assert parse_action(bad).kind == "invalid", bad


def test_a_two_hop_episode_searches_twice_then_answers(retriever):
    q1 = "Q1:"
    generate = scripted({q1: ["I look. <search>home town of Mira Holt</search> ignored",
                              "<search>Mira Holt born</search>", "<answer>1901</answer>"]})
    [episode] = run_episodes([q1], generate, retriever, EpisodeSettings(top_k=1))
    assert (episode.turns, episode.searches, episode.invalid, episode.answer) == (3, 2, 0, "1901")
    owners = [model for _, model in episode.segments]
    assert owners == [True, False, True, False, True]
    assert episode.segments[0][0] == "I look. <search>home town of Mira Holt</search>"  # cut after the tag
    assert episode.segments[1][0] == "\n\n<information>Doc 1(Title: Alder Vale) Alder Vale is the home town of Mira Holt.</information>\n\n"
    assert "Doc 1(Title: Mira Holt)" in episode.segments[3][0]
    assert episode.context == q1 + episode.completion


def test_malformed_turns_empty_and_huge_queries_are_counted(retriever):
    generate = scripted({
        "A:": ["no action here", "<search></search>", "<answer>x</answer>"],
        "B:": ["<search>zyxxy qwrtp</search>", "<search>" + "Mira " * 20_000 + "</search>", "still nothing"],
    })
    a, b = run_episodes(["A:", "B:"], generate, retriever, EpisodeSettings(max_turns=3, max_query_chars=100))
    assert (a.turns, a.invalid, a.searches, a.answer) == (3, 2, 0, "x")
    assert [t for t, model in a.segments if not model] == [INVALID, INVALID]
    assert (b.turns, b.searches, b.empty_results, b.truncated_queries, b.invalid, b.answer) == (3, 2, 1, 1, 1, None)
    assert "No results." in b.segments[1][0]
    assert b.segments[-1] == ("still nothing", True)  # the last turn injects nothing after it
    stats = episode_stats([a, b])
    assert stats["episode/answer_rate"] == 0.5 and stats["episode/invalid_actions"] == 1.5
    assert stats["episode/searches"] == 1.0 and 0 < stats["episode/injected_frac"] < 1


def test_max_turns_ends_an_episode_that_keeps_searching(retriever):
    generate = scripted({"C:": ["<search>Mira</search>"] * 4})
    [episode] = run_episodes(["C:"], generate, retriever, EpisodeSettings(max_turns=4))
    assert (episode.turns, episode.searches, episode.answer) == (4, 4, None)
    assert [model for _, model in episode.segments] == [True, False] * 3 + [True]


def test_a_generate_that_drops_contexts_is_an_error(retriever):
    with pytest.raises(ValueError, match="returned 0 continuations for 1 contexts"):
        run_episodes(["D:"], lambda contexts: [], retriever)

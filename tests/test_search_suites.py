"""Search suites: the shipped openbook suite (search over the closedbook knowledge base) and the
real multi-hop benchmarks in the retrieval setting, on the shipped fixtures; their corpora, the
BM25 index the DAG builds, and lm-eval running the same episodes training runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evals.suites import get_suite
from evals.suites.loaders import load_benchmark
from rlvr.data import load_records, write_suite
from rlvr.retrieval import BM25Retriever, read_corpus

FIXTURES = Path(__file__).resolve().parents[1] / "evals" / "fixtures"


def test_openbook_holds_test_people_out_of_every_training_prompt(tmp_path):
    paths = write_suite("openbook", tmp_path, n_people=200)
    train, test = load_records(paths["train"]), load_records(paths["test"])
    test_people = {r.metadata["actions"][0][1] for r in test}
    assert test_people and all(r.metadata["hops"] == 2 for r in test)
    assert not any(p in r.prompt for r in train for p in test_people)
    assert {r.metadata["chance"] for r in test} == {1 / 8}
    # every record's worked episode is search(person) -> search(city) -> answer(country)
    r = test[0]
    (k1, person), (k2, city), (k3, country) = r.metadata["actions"]
    assert (k1, k2, k3) == ("search", "search", "answer") and r.answer == country and person in r.prompt
    # the corpus: each fact and its distractor, tied under BM25, so either may be listed first
    docs = dict(read_corpus(paths["corpus"]))
    assert len(docs) == 2 * (200 + 32)
    bm25 = BM25Retriever.open(paths["corpus"], tmp_path / "bm25")
    first_is_fact = []
    for record in train[:200]:
        query, truth = record.metadata["actions"][0][1], record.metadata["actions"][1][1]
        top = bm25.search([query], 3)[0]
        assert top[0].score == top[1].score and truth in " ".join(p.text for p in top[:2])
        first_is_fact.append(top[0].text.endswith(f" {truth}."))
    assert 0.3 < sum(first_is_fact) / len(first_is_fact) < 0.7


@pytest.mark.parametrize("bench", ["hotpotqa", "2wikimultihopqa", "musique"])
def test_benchmarks_in_the_retrieval_setting_pool_their_passages(bench, tmp_path):
    fixture = FIXTURES / bench / "validation.jsonl"
    paths = write_suite(f"{bench}_search", tmp_path, path=str(fixture))
    assert set(paths) == {"test", "corpus"}  # a single file is the test split
    plain = load_benchmark(bench, "test", path=fixture)
    search = load_records(paths["test"])
    assert [r.id for r in search] == [r.id for r in plain] and [r.answer for r in search] == [r.answer for r in plain]
    for s, p in zip(search, plain, strict=True):
        assert s.prompt.endswith(f"Question: {p.metadata['question']}\n") and "<search>" in s.prompt
        assert not any(text in s.prompt for _, text in p.metadata["passages"])  # no passages given
    pooled = {(t, x) for r in plain for t, x in r.metadata["passages"]}
    corpus = read_corpus(paths["corpus"])
    assert len(corpus) == len(pooled)
    assert {(c.split("\n", 1)[0].strip('"'), c.split("\n", 1)[1]) for _, c in corpus} == pooled
    # the question's words find one of its own passages first
    bm25 = BM25Retriever.open(paths["corpus"], tmp_path / "bm25")
    own = {x for _, x in plain[0].metadata["passages"]}
    assert bm25.search([plain[0].metadata["question"]], 3)[0][0].text in own
    assert get_suite(f"{bench}_search").correctness == "qa_em"


def test_rlvr_index_builds_the_index_once_and_says_what_it_indexed(tmp_path):
    paths = write_suite("hotpotqa_search", tmp_path, path=str(FIXTURES / "hotpotqa" / "validation.jsonl"))
    out = tmp_path / "bm25" / "index.json"
    cmd = [sys.executable, "-m", "rlvr", "index", "--corpus", str(paths["corpus"]), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    summary = json.loads(out.read_text())
    assert summary["documents"] == len(read_corpus(paths["corpus"])) and summary["retriever"] == "bm25s"
    built = sorted(p.name for p in out.parent.iterdir())
    subprocess.run(cmd, check=True, capture_output=True)  # a second build finds the cached index
    assert sorted(p.name for p in out.parent.iterdir()) == built
    missing = subprocess.run([*cmd[:5], str(tmp_path / "nope.jsonl"), *cmd[6:]], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr


class Request:
    def __init__(self, context, kwargs):
        self.args = (context, kwargs)


def test_lm_eval_runs_the_training_episode_and_scores_it_with_the_training_verifier(tmp_path):
    from evals.tasks.utils import process_qa
    from evals.verifiers import qa_em
    from rlvr.config import load_config
    from rlvr.evaluate.episode_lm import EpisodeLM
    from rlvr.models import TinySpec, build_tiny_model

    paths = write_suite("musique_search", tmp_path, path=str(FIXTURES / "musique" / "validation.jsonl"))
    cfg = load_config(None, ["rollout.episode.mode=search", f"rollout.episode.retriever.corpus={paths['corpus']}",
                             "rollout.max_new_tokens=200", "rollout.episode.max_turn_tokens=24",
                             "rollout.max_prompt_len=512", "eval.batch_size=2", "seed=3"])
    model, tok = build_tiny_model("qwen2", TinySpec(max_positions=1024), seed=0)
    lm = EpisodeLM(model, tok, cfg, engine="native")
    records = load_records(paths["test"])
    sampled = {"do_sample": True, "temperature": 1.0, "until": ["<eos>"]}
    requests = [Request(r.prompt, sampled) for r in records] + [Request(records[0].prompt, {"do_sample": False})]
    texts = lm.generate_until(requests)
    # request i is the episode of its prompt seeded by (seed, i): what the training engine gives
    for i, r in enumerate(records):
        [again] = lm.engine.episodes([r.prompt], 1, [3 * 1_000_003 + i], 1.0).texts
        assert texts[i] == again
    greedy = lm.engine.episodes([records[0].prompt], 1, [0], 0.0).texts[0]
    assert texts[-1] == greedy
    doc = {"answer": records[0].answer}
    assert process_qa(doc, [[texts[0]]])["em"] == qa_em(texts[0], records[0].answer)


def test_the_paper_config_plans_the_seeds_search_qa_setting():
    """`snakemake -n` on config/paper.yaml: Qwen3-4B trains on hotpotqa_search only, with 10
    turns of top-3 passages from the configured server and the seed's reward; its evaluations
    on the other two benchmarks search the same server (no corpus is indexed). The jobs' run
    configs are the plan's (rlvr/plan.py), which the rules run with `--config`."""
    import yaml
    from snakemake.utils import validate

    from rlvr.plan import Plan

    root = Path(__file__).resolve().parents[1]
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [str(bin_dir / "snakemake"), "-n", "-p", "all", "--configfile", "config/paper.yaml"], cwd=root,
        capture_output=True, text=True, env={**__import__("os").environ, "PATH": f"{bin_dir}:/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    matrix = yaml.safe_load((root / "config/paper.yaml").read_text())
    validate(matrix, str(root / "workflows/schema/config.schema.yaml"))
    plan = Plan(matrix)
    trains = plan.by_stage("train")
    lines = [line.removeprefix("Shell command: ") for line in done.stdout.splitlines() if line.startswith("Shell command: ")]
    assert {job.command for job in trains} <= {line.split(" > ")[0] for line in lines}  # the rules run the plan's
    search_train = [job.config for job in trains if job.config.data.suite == "hotpotqa_search"]
    assert len(search_train) == 4 * 3  # 4 algorithms × 3 seeds, one model
    for cfg in search_train:
        assert cfg.model.name_or_path == "Qwen/Qwen3-4B" and cfg.data.reward == "search_f1_think"
        episode = cfg.rollout.episode
        assert (episode.mode, episode.max_turns, episode.top_k) == ("search", 10, 3)
        assert episode.retriever.url == "http://127.0.0.1:8000"
    assert not any(job.config.model.name_or_path == "Qwen/Qwen3-4B" and job.config.data.suite == "gsm8k" for job in trains)
    cross = [job.config for job in plan.by_stage("eval") if job.config.eval.suites == ["2wikimultihopqa_search"]]
    assert cross and all(c.rollout.episode.retriever.url and c.rollout.episode.retriever.corpus is None for c in cross)
    assert "rlvr index" not in done.stdout

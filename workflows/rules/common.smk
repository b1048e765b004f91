# The run plan (rlvr/plan.py) holds every job of the matrix, resolved and checked at planning
# time: each rule below is one stage of it, asking its job for inputs, command and resources.
import json
import os
import shlex  # aggregate.smk

from snakemake.utils import validate

from rlvr.plan import Plan, PlanError

validate(config, "../schema/config.schema.yaml")

try:
    PLAN = Plan(config, os.path.relpath(workflow.configfiles[-1]) if workflow.configfiles else "config/default.yaml")
except PlanError as err:  # a typo: one line naming the field and what is allowed, before any job
    raise ValueError(str(err)) from None

EXP, RESULTS, SUITES, CURVES = PLAN.experiment, PLAN.results, PLAN.suites, PLAN.curves


wildcard_constraints:
    suite=r"[A-Za-z0-9_.-]+",
    model=r"[A-Za-z0-9_.-]+",
    algo=r"[A-Za-z0-9_.@=-]+",
    seed=r"\d+",
    evalsuite=r"[A-Za-z0-9_.-]+",
    runname=r"base|[A-Za-z0-9_.@=-]+/seed\d+",


def job(stage, what):
    """`what` (inputs, command, threads, ...) of the plan's `stage` job that a rule's wildcards name."""
    return lambda w: getattr(PLAN.job(stage, **w), what)


def all_statuses():
    return PLAN.outputs("train")


def all_evals():
    return PLAN.outputs("eval")


def all_curves():
    return PLAN.outputs("curve")


# The run config of every job, written once here: the file its stage reads (`rlvr <stage>
# --config <it>`, by hand too). Rewritten when the plan's text for it changes (Snakemake's params
# trigger), which reruns that job and what follows from it, and only that.
rule run_config:
    output:
        f"runs/{EXP}/{{job}}.yaml",
    wildcard_constraints:
        job=r".+/(config|eval/[A-Za-z0-9_.-]+|curve/[A-Za-z0-9_.-]+)",
    params:
        text=lambda w, output: PLAN.config_job(output[0]).config_text,
    localrule: True
    run:
        from rlvr.io import atomic_write_text

        atomic_write_text(output[0], params.text)


# What the report side reads back: every planned run with its labels and directory.
rule plan_manifest:
    output:
        PLAN.paths.manifest(),
    params:
        text=json.dumps(PLAN.manifest(), indent=1),
    localrule: True
    run:
        from rlvr.io import atomic_write_text

        atomic_write_text(output[0], params.text + "\n")

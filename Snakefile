# rlvr-bench: suite data -> base model per model × suite (tiny: init + SFT warm start) -> RL run
# per algorithm × model × suite × seed -> lm-eval on every checkpoint -> leaderboard + stability.
# Every job, its run config and its command come from the run plan (rlvr/plan.py; `rlvr plan CONFIG`).
#   make run                                   (local profile, config/default.yaml)
#   snakemake --profile slurm all              (a Slurm cluster)
#   snakemake --profile slurm all --configfile config/paper.yaml
from snakemake.utils import min_version

min_version("9.0")


# A --configfile on the command line replaces the default matrix instead of merging into it.
if not workflow.overwrite_configfiles:

    configfile: "config/default.yaml"


include: "workflows/rules/common.smk"
include: "workflows/rules/data.smk"
include: "workflows/rules/base.smk"
include: "workflows/rules/train.smk"
include: "workflows/rules/eval.smk"
include: "workflows/rules/aggregate.smk"


rule all:
    input:
        rules.aggregate.output,
    default_target: True

STRESS_FIGURES = ("collapse", "heldout", "steps", "entropy", "grad_norm", "taxonomy")


def shown(path, category, subcategory=None):
    """`path` registered with Snakemake's report (a line may not start with `report(` here:
    Snakemake's parser takes it for the report directive)."""
    return report(path, category=category, subcategory=subcategory)


def tables_and_figures():
    """Every file the aggregate writes, registered with Snakemake's report (`snakemake --report
    results/report.html` then holds them on one page), by what they show."""
    out = {
        "leaderboard": shown(f"{RESULTS}/leaderboard.md", "Leaderboard"),
        "leaderboard_csv": shown(f"{RESULTS}/leaderboard.csv", "Leaderboard"),
        "stability": shown(f"{RESULTS}/stability.md", "Stability"),
        "stability_csv": shown(f"{RESULTS}/stability.csv", "Stability"),
        "profile": shown(f"{RESULTS}/figures/performance_profile.png", "Leaderboard"),
        "figures": [
            shown(f"{RESULTS}/figures/{suite}_{metric}.png", "Training curves", suite)
            for suite in SUITES for metric in ("entropy", "reward", "grad_norm")
        ],
    }
    if config.get("sweep"):
        out |= {
            "stress": shown(f"{RESULTS}/stress.md", "Stress"),
            "stress_csv": shown(f"{RESULTS}/stress.csv", "Stress"),
            "stress_runs": shown(f"{RESULTS}/stress_runs.csv", "Stress"),
            "stress_figures": [
                shown(f"{RESULTS}/figures/stress_{suite}_{kind}.png", "Stress", suite)
                for suite in SUITES for kind in STRESS_FIGURES
            ],
        }
    if CURVES:
        out |= {
            "scaling": shown(f"{RESULTS}/scaling.md", "Scaling"),
            "scaling_csv": shown(f"{RESULTS}/scaling.csv", "Scaling"),
            "scaling_figures": [shown(f"{RESULTS}/figures/{suite}_scaling.png", "Scaling") for suite in SUITES],
        }
    return out


def aggregate_options():
    sweep = f"--sweep {shlex.quote(config['sweep'])} " if config.get("sweep") else ""
    return sweep + f"--baseline {shlex.quote(config.get('baseline', 'grpo'))}"


rule aggregate:
    input:
        statuses=all_statuses(),
        evals=all_evals(),
        curves=all_curves(),
    output:
        **tables_and_figures(),
        # results/ is committed, runs/ is not: this untracked output is what makes `make run` on a
        # fresh clone rebuild the whole DAG instead of trusting the committed tables
        manifest=f"runs/{EXP}/aggregated.json",
    params:
        runs=lambda w, output: os.path.dirname(os.path.dirname(output.manifest)),  # runs/<exp>/..
        out=lambda w, output: os.path.dirname(output.leaderboard),
        exp=EXP,
        config_name=lambda w: os.path.relpath(workflow.configfiles[-1]) if workflow.configfiles else "config/default.yaml",
        options=aggregate_options(),
    log:
        f"logs/{EXP}/aggregate.log",
    shell:
        "rlvr aggregate --runs {params.runs} --out {params.out} --experiment {params.exp} --config-name {params.config_name} {params.options} --manifest {output.manifest} > {log} 2>&1"

rule aggregate:
    input:
        statuses=all_statuses(),
        evals=all_evals(),
    output:
        leaderboard=f"{RESULTS}/leaderboard.md",
        leaderboard_csv=f"{RESULTS}/leaderboard.csv",
        stability=f"{RESULTS}/stability.md",
        stability_csv=f"{RESULTS}/stability.csv",
        # results/ is committed, runs/ is not: this untracked output is what makes `make run` on a
        # fresh clone rebuild the whole DAG instead of trusting the committed tables
        manifest=f"runs/{EXP}/aggregated.json",
        figures=expand(f"{RESULTS}/figures/{{suite}}_{{metric}}.png", suite=SUITES, metric=["entropy", "reward", "grad_norm"]),
    params:
        runs=lambda w, output: os.path.dirname(os.path.dirname(output.manifest)),  # runs/<exp>/..
        out=lambda w, output: os.path.dirname(output.leaderboard),
        exp=EXP,
        config_name=lambda w: os.path.relpath(workflow.configfiles[-1]) if workflow.configfiles else "config/default.yaml",
    log:
        f"logs/{EXP}/aggregate.log",
    shell:
        "rlvr aggregate --runs {params.runs} --out {params.out} --experiment {params.exp} --config-name {params.config_name} --manifest {output.manifest} > {log} 2>&1"

rule aggregate:
    input:
        statuses=all_statuses(),
        evals=all_evals(),
    output:
        leaderboard=f"{RESULTS}/leaderboard.md",
        leaderboard_csv=f"{RESULTS}/leaderboard.csv",
        stability=f"{RESULTS}/stability.md",
        stability_csv=f"{RESULTS}/stability.csv",
        figures=expand(f"{RESULTS}/figures/{{suite}}_{{metric}}.png", suite=SUITES, metric=["entropy", "reward", "grad_norm"]),
    params:
        runs="runs",
        out=lambda w, output: os.path.dirname(output.leaderboard),
        exp=EXP,
        config_name=lambda w: os.path.relpath(workflow.configfiles[-1]) if workflow.configfiles else "config/default.yaml",
    log:
        f"logs/{EXP}/aggregate.log",
    shell:
        "rlvr aggregate --runs {params.runs} --out {params.out} --experiment {params.exp} --config-name {params.config_name} > {log} 2>&1"

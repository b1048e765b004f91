from rlvr.report import Options, planned_outputs


def shown(path, category, subcategory=None):
    """`path` registered with Snakemake's report (a line may not start with `report(` here:
    Snakemake's parser takes it for the report directive)."""
    return report(path, category=category, subcategory=subcategory)


def tables_and_figures():
    """Every file the reports that apply write (rlvr/report/__init__.py's REPORTS, the matrix's
    `modules:` ones included: planning imported them), one named output per report, registered
    with Snakemake's report by what they show (`snakemake --report results/report.html`)."""
    options = Options(sweep=config.get("sweep"), curves=bool(CURVES))
    return {
        name: [shown(f"{RESULTS}/{out.path}", out.category, out.subcategory) for out in outputs]
        for name, outputs in planned_outputs(options, SUITES).items()
    }


def aggregate_options():
    sweep = f"--sweep {shlex.quote(config['sweep'])} " if config.get("sweep") else ""
    modules = "".join(f" --modules {shlex.quote(m)}" for m in PLAN.modules)
    return sweep + f"--baseline {shlex.quote(config.get('baseline', 'grpo'))}" + modules


rule aggregate:
    input:
        plan=PLAN.paths.manifest(),  # the runs the reports read back
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
        out=RESULTS,
        exp=EXP,
        config_name=lambda w: os.path.relpath(workflow.configfiles[-1]) if workflow.configfiles else "config/default.yaml",
        options=aggregate_options(),
    log:
        f"logs/{EXP}/aggregate.log",
    shell:
        "rlvr aggregate --runs {params.runs} --out {params.out} --experiment {params.exp} --config-name {params.config_name} {params.options} --manifest {output.manifest} > {log} 2>&1"

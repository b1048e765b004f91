def eval_input(w):
    rdir = f"runs/{EXP}/{w.suite}/{w.model}/{w.runname}"
    done = base_input(w) if w.runname == "base" else [f"{rdir}/status.json"]
    return done + [data_paths(w.evalsuite)["test"]] if w.evalsuite in SUITES else done


def eval_args(w):
    rdir = f"runs/{EXP}/{w.suite}/{w.model}/{w.runname}"
    ckpt = base_checkpoint(w.suite, w.model) if w.runname == "base" else f"{rdir}/final"
    items = stage_overrides(w.suite, w.model) + [
        f"output_dir={rdir}", f"eval.checkpoint={ckpt}", f"eval.out={rdir}/eval",
        f"eval.suites={json.dumps([w.evalsuite])}", "seed=0",
    ]
    if w.evalsuite in SUITES:
        items.append(f"eval.data={json.dumps({w.evalsuite: data_paths(w.evalsuite)['test']})}")
    return cli_args(items)


# lm-eval on one checkpoint × suite (the base before RL, or a run's final model).
rule evaluate:
    input:
        eval_input,
    output:
        "runs/{exp}/{suite}/{model}/{runname}/eval/{evalsuite}.json",
    params:
        args=eval_args,
    threads: 1
    log:
        "logs/{exp}/eval/{suite}/{model}/{runname}/{evalsuite}.log",
    shell:
        "rlvr eval {params.args} train.threads={threads} > {log} 2>&1"

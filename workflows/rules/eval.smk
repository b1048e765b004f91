def eval_input(w):
    rdir = f"runs/{EXP}/{w.suite}/{w.model}/{w.runname}"
    done = (base_input(w) if w.runname == "base" else [f"{rdir}/status.json"]) + index_input(w.suite, w.evalsuite)
    return done + [data_paths(w.evalsuite)["test"]] if has_data(w.evalsuite) else done


def eval_args(w):
    rdir = f"runs/{EXP}/{w.suite}/{w.model}/{w.runname}"
    ckpt = base_checkpoint(w.suite, w.model) if w.runname == "base" else f"{rdir}/final"
    items = stage_overrides(w.suite, w.model, episodes=w.evalsuite) + [
        f"output_dir={rdir}", f"eval.checkpoint={ckpt}", f"eval.out={rdir}/eval",
        f"eval.suites={json.dumps([w.evalsuite])}", "seed=0",
    ]
    if has_data(w.evalsuite):
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


def curve_args(w):
    rdir = run_dir(w.suite, w.model, w.algo, w.seed)
    items = stage_overrides(w.suite, w.model, episodes=w.evalsuite) + [
        f"output_dir={rdir}", "eval.curve=true", f"eval.out={rdir}/curve",
        f"eval.suites={json.dumps([w.evalsuite])}", "seed=0",
        f"eval.data={json.dumps({w.evalsuite: data_paths(w.evalsuite)['test']})}",
    ]
    return cli_args(items)


# A learning curve: lm-eval on every intermediate checkpoint of one run (config `curves`), one
# process for all of them; rlvr/curves.py fits them.
rule curve:
    input:
        "runs/{exp}/{suite}/{model}/{algo}/seed{seed}/status.json",
        lambda w: data_paths(w.evalsuite)["test"],
        lambda w: index_input(w.suite, w.evalsuite),
    output:
        "runs/{exp}/{suite}/{model}/{algo}/seed{seed}/curve/{evalsuite}.json",
    params:
        args=curve_args,
    threads: 1
    log:
        "logs/{exp}/curve/{suite}/{model}/{algo}/seed{seed}/{evalsuite}.log",
    shell:
        "rlvr eval {params.args} train.threads={threads} > {log} 2>&1"

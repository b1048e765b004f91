# lm-eval on one checkpoint × suite (the base before RL, or a run's final model).
rule evaluate:
    input:
        job("eval", "inputs"),
    output:
        PLAN.paths.eval_result("{suite}", "{model}", "{runname}", "{evalsuite}"),
    params:
        command=job("eval", "command"),
    threads: 1
    log:
        PLAN.paths.log("eval", "{suite}", "{model}", "{runname}", "{evalsuite}"),
    shell:
        "{params.command} > {log} 2>&1"


# A learning curve: lm-eval on every intermediate checkpoint of one run (config `curves`), one
# process for all of them; rlvr/report fits them.
rule curve:
    input:
        job("curve", "inputs"),
    output:
        PLAN.paths.curve_result("{suite}", "{model}", "{algo}", "{seed}", "{evalsuite}"),
    params:
        command=job("curve", "command"),
    threads: 1
    log:
        PLAN.paths.log("curve", "{suite}", "{model}", "{algo}", "seed{seed}", "{evalsuite}"),
    shell:
        "{params.command} > {log} 2>&1"

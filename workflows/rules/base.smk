# Tiny models only: a random-initialised model of the family, warm-started by SFT on the suite's
# worked solutions until it solves ~sft.target_accuracy of training prompts. Cached: it reruns
# only when its inputs or its run config change.
rule base:
    input:
        job("base", "inputs"),
    output:
        PLAN.paths.sft("{suite}", "{model}"),
    params:
        command=job("base", "command"),
    threads: 1
    log:
        PLAN.paths.log("base", "{suite}", "{model}"),
    shell:
        "{params.command} > {log} 2>&1"

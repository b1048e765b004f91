# Tiny models only: a random-initialised model of the family, warm-started by SFT on the suite's
# worked solutions until it solves ~sft.target_accuracy of training prompts. Cached: it reruns
# only when its inputs or settings change.
rule base:
    input:
        lambda w: index_input(w.suite),
        train="data/{exp}/{suite}/train.jsonl",
    output:
        "runs/{exp}/{suite}/{model}/base/sft.json",
    params:
        args=lambda w: cli_args(
            stage_overrides(w.suite, w.model)
            + [f"model.family={MODELS[w.model]['family']}", f"output_dir=runs/{EXP}/{w.suite}/{w.model}/base", f"seed={MODELS[w.model].get('base_seed', 0)}"]
        ),
    threads: 1
    log:
        "logs/{exp}/base/{suite}/{model}.log",
    shell:
        "rlvr sft {params.args} train.threads={threads} > {log} 2>&1"

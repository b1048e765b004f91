rule data:
    output:
        train="data/{exp}/{suite}/train.jsonl",
        test="data/{exp}/{suite}/test.jsonl",
    params:
        args=lambda w: cli_args(flatten(SUITES[w.suite].get("params", {}))),
    log:
        "logs/{exp}/data/{suite}.log",
    shell:
        "rlvr data --suite {wildcards.suite} --out data/{wildcards.exp}/{wildcards.suite} {params.args} > {log} 2>&1"

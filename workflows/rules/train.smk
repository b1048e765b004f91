# One RL run. Relaunching resumes from the newest complete checkpoint in the run directory;
# a collapsed run ends with status "collapsed" and exit 0, so the DAG goes on.
rule train:
    input:
        base_input,
        train="data/{exp}/{suite}/train.jsonl",
    output:
        "runs/{exp}/{suite}/{model}/{algo}/seed{seed}/status.json",
    params:
        args=train_overrides,
    threads: 1
    log:
        "logs/{exp}/train/{suite}/{model}/{algo}/seed{seed}.log",
    shell:
        "rlvr train {params.args} train.threads={threads} > {log} 2>&1"

# One RL run. Relaunching resumes from the newest complete checkpoint in the run directory;
# a collapsed run ends with status "collapsed" and exit 0, so the DAG goes on. A run whose
# train.processes (× train.nodes) > 1 is launched data-parallel through torchrun; the job
# takes processes × train.threads cores (and one GPU per rank with accelerator: gpu).
rule train:
    input:
        stage_input,
        train="data/{exp}/{suite}/train.jsonl",
    output:
        "runs/{exp}/{suite}/{model}/{algo}/seed{seed}/status.json",
    params:
        args=train_overrides,
        launch=train_launcher,
        threads_per_rank=lambda w: train_section(w).get("threads") or 1,
    threads: train_threads
    resources:
        nodes=lambda w: train_ranks(w)[1],
        gpu=train_gpus,
    log:
        "logs/{exp}/train/{suite}/{model}/{algo}/seed{seed}.log",
    shell:
        "{params.launch} {params.args} train.threads={params.threads_per_rank} > {log} 2>&1"

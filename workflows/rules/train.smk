# One RL run. Relaunching resumes from the newest complete checkpoint in the run directory;
# a collapsed run ends with status "collapsed" and exit 0, so the DAG goes on. A run whose
# train.processes (× train.nodes) > 1 is launched data-parallel through torchrun; the job
# takes processes × train.threads cores (and one GPU per rank with accelerator: gpu).
rule train:
    input:
        job("train", "inputs"),
    output:
        PLAN.paths.status("{suite}", "{model}", "{algo}", "{seed}"),
    params:
        command=job("train", "command"),
    threads: job("train", "threads")
    resources:
        nodes=job("train", "nodes"),
        gpu=job("train", "gpus"),
    log:
        PLAN.paths.log("train", "{suite}", "{model}", "{algo}", "seed{seed}"),
    shell:
        "{params.command} > {log} 2>&1"

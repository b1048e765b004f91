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


# A search suite's retriever: the BM25 index of the corpus the data rule wrote, built once here
# (not by each of the jobs that search it at once); index.json says what it indexed.
rule index:
    input:
        train="data/{exp}/{suite}/train.jsonl",
    output:
        "data/{exp}/{suite}/bm25/index.json",
    log:
        "logs/{exp}/index/{suite}.log",
    shell:
        "rlvr index --corpus data/{wildcards.exp}/{wildcards.suite}/corpus.jsonl --out {output} > {log} 2>&1"

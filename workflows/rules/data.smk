rule data:
    output:
        train="data/{exp}/{suite}/train.jsonl",
        test="data/{exp}/{suite}/test.jsonl",
    params:
        args=lambda w: cli_args(flatten(SUITES.get(w.suite, {}).get("params", {}))),
    log:
        "logs/{exp}/data/{suite}.log",
    shell:
        "rlvr data --suite {wildcards.suite} --out data/{wildcards.exp}/{wildcards.suite} {params.args} > {log} 2>&1"


# A search suite's data also holds its corpus (the passages its episodes search).
# (a search suite evaluated but not trained on is written here too: episodes need its files)
SEARCH_SUITES = "|".join(sorted({s for t in SUITES for s in eval_suites(t) if searches(s)})) or "(?!)"


use rule data as data_search with:
    output:
        train="data/{exp}/{suite}/train.jsonl",
        test="data/{exp}/{suite}/test.jsonl",
        corpus="data/{exp}/{suite}/corpus.jsonl",
    wildcard_constraints:
        suite=SEARCH_SUITES,


ruleorder: data_search > data


# Its retriever: the BM25 index of the corpus, built once here (not by each of the jobs that
# search it at once); index.json says what it indexed.
rule index:
    input:
        "data/{exp}/{suite}/corpus.jsonl",
    output:
        "data/{exp}/{suite}/bm25/index.json",
    log:
        "logs/{exp}/index/{suite}.log",
    shell:
        "rlvr index --corpus {input} --out {output} > {log} 2>&1"

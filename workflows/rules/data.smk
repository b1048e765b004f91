# A suite's train/test JSONL (`rlvr data`); a search suite's also holds its corpus, the passages
# its episodes search (a search suite evaluated but not trained on is written here too).
rule data:
    output:
        train=PLAN.paths.data("{suite}", "train"),
        test=PLAN.paths.data("{suite}", "test"),
    params:
        command=job("data", "command"),
    log:
        PLAN.paths.log("data", "{suite}"),
    shell:
        "{params.command} > {log} 2>&1"


use rule data as data_search with:
    output:
        train=PLAN.paths.data("{suite}", "train"),
        test=PLAN.paths.data("{suite}", "test"),
        corpus=PLAN.paths.corpus("{suite}"),
    wildcard_constraints:
        suite="|".join(PLAN.search_suites()) or "(?!)",


ruleorder: data_search > data


# Its retriever: the BM25 index of the corpus, built once here (not by each of the jobs that
# search it at once); index.json says what it indexed.
rule index:
    input:
        job("index", "inputs"),
    output:
        PLAN.paths.index("{suite}"),
    params:
        command=job("index", "command"),
    log:
        PLAN.paths.log("index", "{suite}"),
    shell:
        "{params.command} > {log} 2>&1"

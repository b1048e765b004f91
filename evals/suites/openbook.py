"""Synthetic open-book multi-hop QA: answer by searching the closedbook knowledge base.

What it tests: *search and composition in a multi-turn episode* (rollout.episode.mode=search,
rlvr/rollout/episode.py), the seed paper's multi-hop QA setting at CPU scale. The world is the
closedbook suite's KB (evals/suites/closedbook.py: people live in cities, cities are in
countries), but the facts are not memorised: each single fact is one passage of a corpus in the
FlashRAG / Search-R1 form, and the model must look them up:

    Question: In which country does Bako live?
    <search>Bako</search>
    <information>Doc 1(Title: "Bako") Bako works in Lorn.
    Doc 2(Title: "Bako") Bako lives in Varno.</information>
    <search>Varno</search>
    <information>Doc 1(Title: "Varno") Varno is in Kesmark.
    Doc 2(Title: "Varno") Varno is by Norvia.
    Doc 3(Title: "Tiru") Tiru lives in Varno.</information>
    <answer>Kesmark</answer>

(prompt "Question: <question>\\n"; metadata["actions"] = the worked episode's actions, which SFT
turns into a trace with the very passages the configured retriever returns, injected blocks
masked out of the loss.) Every fact has a distractor of the same subject that BM25 ranks level
with it ("Bako works in Lorn.", "Varno is by Norvia."; which comes first varies), and a city's
search also returns people who live or work there. Train holds the 1-hop questions of the
cities and of the train people (one search) and the 2-hop questions of the train people; test
holds the 2-hop questions of the others, who appear in no training prompt: their facts are only
in the corpus, so the first hop (person → city) needs a search and reading the right passage.
The second hop does not: the 32 city → country facts are the answers of training questions, so a
policy may recall the country instead of searching the city. The worked traces search twice;
evaluation reports how often a policy does (`searches`, `two_searches`: results/openbook/).

Chance: a model that does not search guesses among the countries: metadata["chance"] =
1 / n_countries (the majority answer of the split is the stronger guess; `baselines()` of the
closedbook suite reports both). Reward: search_f1 (F1 of the final <answer> + 0.3 × the format
score, evals/verifiers.py); "correct" (pass@1, SFT's target) is EM of the <answer>.

Budget: a worked 2-hop episode is 271 byte tokens on average and at most 339 (two searches, their
results, the answer) after a prompt of at most 43, so the tiny models need max_positions >= 512
and rollouts rollout.max_new_tokens >= 340 (config/openbook.yaml: 400; at 320 the longest
episodes are cut inside their answer).

Parameters: n_people (default 2000: 1000 train people, enough names that reading beats
memorising), n_cities (32), n_countries (8), test_frac (0.5: the share of people held out).
"""

from __future__ import annotations

import random
from typing import Any

from evals.schema import Record
from evals.suites._splits import key_id
from evals.suites.closedbook import QUESTIONS, TEMPLATES, _is_test, fact_text, knowledge_base

TEMPLATE = "residence_country"


def _record(question: str, actions: list[tuple[str, str]], answer: str, hops: int, chance: float,
            level: dict[str, Any]) -> Record:
    return Record(
        id=key_id("openbook", question),
        prompt=f"Question: {question}\n",
        answer=answer,
        metadata={"actions": [list(a) for a in actions], "hops": hops, "question": question,
                  "chance": chance, "kb": dict(level)},
    )  # fmt: skip


def corpus(seed: int = 0, n_train: int | None = None, n_test: int | None = None, *, n_people: int = 2000,
           n_cities: int = 32, n_countries: int = 8, test_frac: float = 0.5) -> list[dict[str, str]]:
    """Every fact of the seed's KB as one passage {"id", "contents": '"<subject>"\\n<fact>'}, each
    with its distractor: a person also works in another city ("Bako works in Lorn."), a city is
    also by another country ("Varno is by Norvia."). A fact and its distractor tie under BM25
    (the same words but the relation's, which are stopwords or equally rare), and the passages are
    in a seeded random order, so which of the two a search lists first varies: the model must
    read the relation, not take Doc 1. The whole KB, whatever the split sizes."""
    kb = knowledge_base(seed, n_people, n_cities, n_countries)
    rng = random.Random(f"openbook-distractors-{seed}")
    passages = []
    for (s, rel), o in kb.facts.items():
        passages.append((s, fact_text((s, rel, o))))
        if rel == "lives_in":
            passages.append((s, f"{s} works in {rng.choice([c for c in kb.entities['city'] if c != o])}."))
        else:  # city_in
            passages.append((s, f"{s} is by {rng.choice([c for c in kb.entities['country'] if c != o])}."))
    rng.shuffle(passages)
    return [{"id": f"p{i}", "contents": f'"{s}"\n{text}'} for i, (s, text) in enumerate(passages)]


def generate(n_train: int | None = None, n_test: int | None = None, seed: int = 0, *,
             n_people: int = 2000, n_cities: int = 32, n_countries: int = 8,
             test_frac: float = 0.5) -> dict[str, list[Record]]:
    """{"train": [...], "test": [...]} over the seed's KB; deterministic for a seed."""
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be within (0, 1), got {test_frac!r}")
    kb = knowledge_base(seed, n_people, n_cities, n_countries)
    level = {"seed": seed, "n_people": n_people, "n_cities": n_cities, "n_countries": n_countries,
             "test_frac": test_frac}  # fmt: skip
    path, question_fmt = TEMPLATES[TEMPLATE]
    countries, cities = 1.0 / n_countries, 1.0 / n_cities
    train = [
        _record(QUESTIONS["city_in"].format(s=c), [("search", c), ("answer", kb.facts[(c, "city_in")])],
                kb.facts[(c, "city_in")], 1, countries, level)
        for c in kb.entities["city"]
    ]  # fmt: skip
    test = []
    for person in kb.entities["person"]:
        (_, _, city), (_, _, country) = kb.walk(person, path)
        two_hop = _record(question_fmt.format(s=person),
                          [("search", person), ("search", city), ("answer", country)], country, 2,
                          countries, level)  # fmt: skip
        if _is_test(f"openbook-person-{seed}-{person}", test_frac):
            test.append(two_hop)
            continue
        train.append(two_hop)
        train.append(_record(QUESTIONS["lives_in"].format(s=person), [("search", person), ("answer", city)],
                             city, 1, cities, level))  # fmt: skip
    rng = random.Random(f"openbook-order-{seed}")
    rng.shuffle(train)
    rng.shuffle(test)
    for name, n, split in (("n_train", n_train, train), ("n_test", n_test, test)):
        if n is not None and not 0 <= n <= len(split):
            raise ValueError(f"{name}={n!r}: this KB has {len(split)} {name[2:]} questions")
    return {"train": train[:n_train], "test": test[:n_test]}

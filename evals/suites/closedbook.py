"""Synthetic closed-book multi-hop QA: compose facts memorised from a fixed knowledge base.

What it tests: *closed-book composition*. Each seed fixes one small synthetic world (the
knowledge base, KB): n_people people, each living in one of n_cities cities, each city in one of
n_countries countries (optionally people work for companies based in cities). The prompts carry
no passages; the model must have memorised the single facts during training and chain them at
test time:

    Q: Where does Bako live?                  (1-hop, every fact is one in train)
    A: Bako lives in Varno. \\boxed{Varno}
    Q: In which country is Varno?             (1-hop)
    A: Varno is in Kesmark. \\boxed{Kesmark}
    Q: In which country does Bako live?       (2-hop: train for some people, test for others)
    A: Bako lives in Varno. Varno is in Kesmark. \\boxed{Kesmark}

(prompt "Q: <question>\\nA:", metadata["solution"] = the completion after "A:", with a leading
space; answer = the last entity.) Train holds every 1-hop fact of the KB plus the 2-hop questions
of some people; test holds the 2-hop questions of the others. Every fact on a test chain is a
1-hop train question, but that person's composition never appears in train: a test question is
answered only by recalling "Bako lives in Varno" inside a 2-hop chain and then "Varno is in
Kesmark". It is NOT in-context reading (that is the `multihop` suite, which tiny CPU models do
not learn); this is the knowledge-composition half of multi-hop QA.

Why it stands in for HotpotQA / 2WikiMultiHopQA / MuSiQue at CPU scale: those ask 2-4 hop
bridge questions whose answers need two facts joined through a bridge entity, with a short
answer span scored by EM/F1. Here the bridge is the city (or the employer), the answer a short
span scored by the same qa_em / qa_f1 verifiers, and the worked chain is the bridge reasoning a
model writes before \\boxed{}. The reading-comprehension part (finding facts in passages) is left
out, because tiny random-init models do not learn in-context binding in CPU minutes; they do
memorise a few hundred facts and learn to chain them.

Chance level: a model that knows the answer type but not the fact guesses among the entities of
that type, so metadata["chance"] = 1 / metadata["n_candidates"] (n_countries for the default
2-hop question, n_cities for "where does X live" and for the employer's city). The stronger
baseline is the majority class, the most frequent answer of the test split; `baselines()`
reports both.

Generation budget: the longest completion (2-hop chain + box + EOS) is 63 byte tokens, so
rollouts and evaluation need max_new_tokens >= 64 (at 40, every 2-hop answer is cut off).

Parameters (all recorded in metadata["kb"]): n_people (default 300), n_cities (32, at most 40),
n_countries (8, at most 30), n_companies (0 = no employer facts; up to 30, adds the 1-hop
questions "Which company does X work for?" / "Where is C based?" and the 2-hop "In which city
is X's employer based?"), test_frac (0.5: the share of 2-hop questions held out for test).

Split and sizes (the KB is fixed, so sizes select, they never draw new problems):
- A 2-hop question is held out for test when a hash of its (question, chain) key falls in the
  lowest test_frac of buckets: the split is a function of the problem, as in the other suites,
  so about test_frac of the 2-hop questions are test. 1-hop questions are always train.
- n_train=None (default): every 1-hop fact plus every training 2-hop question, each once. An
  int keeps all 1-hop facts and the first n_train - n_facts training 2-hop questions (seeded
  order), so it sets the share of 2-hop in train; it must be >= the number of 1-hop facts.
- n_test=None (default): every held-out 2-hop question; an int keeps the first n_test.
- 0 skips a split; a size larger than the KB provides raises ValueError.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evals.schema import Record
from evals.suites._splits import key_id
from evals.suites.multihop import CITIES, COMPANIES, COUNTRIES, RELATIONS

_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_OTHER_NAMES = {n.lower() for n in CITIES + COUNTRIES + COMPANIES}
# Person names: every consonant-vowel-consonant-vowel word ("Bako", "Tiru"), 4900 of them, in a
# fixed order (the draw must not depend on set or hash order).
PEOPLE = tuple(
    n.capitalize()
    for n in (
        a + b + c + d for a in _CONSONANTS for b in _VOWELS for c in _CONSONANTS for d in _VOWELS
    )
    if n not in _OTHER_NAMES
)

# 1-hop questions, by relation (the subject fills {s}).
QUESTIONS = {
    "lives_in": "Where does {s} live?",
    "city_in": "In which country is {s}?",
    "works_for": "Which company does {s} work for?",
    "based_in": "Where is {s} based?",
}
# 2-hop templates: name -> (relation path from the person to the answer, question).
TEMPLATES: dict[str, tuple[tuple[str, ...], str]] = {
    "residence_country": (("lives_in", "city_in"), "In which country does {s} live?"),
    "employer_city": (("works_for", "based_in"), "In which city is {s}'s employer based?"),
}
LIMITS = {
    "n_people": len(PEOPLE),
    "n_cities": len(CITIES),
    "n_countries": len(COUNTRIES),
    "n_companies": len(COMPANIES),
}
TEST_BUCKETS = 10_000

Fact = tuple[str, str, str]  # (subject, relation, object)


def fact_text(fact: Fact) -> str:
    s, rel, o = fact
    return RELATIONS[rel].text.format(s=s, o=o)


@dataclass(frozen=True)
class KnowledgeBase:
    """One seed's world: a function (subject, relation) -> object, and the entities by type."""

    facts: dict[tuple[str, str], str]
    entities: dict[str, tuple[str, ...]]  # type -> names, in draw order

    def walk(self, subject: str, path: Sequence[str]) -> list[Fact]:
        chain = []
        for rel in path:
            obj = self.facts[(subject, rel)]
            chain.append((subject, rel, obj))
            subject = obj
        return chain


def knowledge_base(
    seed: int = 0,
    n_people: int = 300,
    n_cities: int = 32,
    n_countries: int = 8,
    n_companies: int = 0,
) -> KnowledgeBase:
    """The fixed KB of a seed. Cities are spread evenly over countries (every country has
    n_cities // n_countries or one more); people and companies pick a city uniformly."""
    sizes = {
        "n_people": n_people,
        "n_cities": n_cities,
        "n_countries": n_countries,
        "n_companies": n_companies,
    }
    for key, value in sizes.items():
        low = 0 if key == "n_companies" else 2
        if not isinstance(value, int) or not low <= value <= LIMITS[key]:
            raise ValueError(f"{key} must be an int within {low}..{LIMITS[key]}, got {value!r}")
    if n_cities < n_countries:
        raise ValueError(f"n_cities ({n_cities}) must be >= n_countries ({n_countries})")
    rng = random.Random(f"closedbook-kb-{seed}")
    countries = rng.sample(COUNTRIES, n_countries)
    cities = rng.sample(CITIES, n_cities)
    people = rng.sample(PEOPLE, n_people)
    companies = rng.sample(COMPANIES, n_companies)
    facts: dict[tuple[str, str], str] = {}
    for i, city in enumerate(cities):  # cities are already in random order
        facts[(city, "city_in")] = countries[i % n_countries]
    for person in people:
        facts[(person, "lives_in")] = rng.choice(cities)
    for company in companies:
        facts[(company, "based_in")] = rng.choice(cities)
    for person in people if companies else ():
        facts[(person, "works_for")] = rng.choice(companies)
    entities = {
        "person": tuple(people),
        "city": tuple(cities),
        "country": tuple(countries),
        "company": tuple(companies),
    }
    return KnowledgeBase(facts, entities)


def _is_test(key: str, test_frac: float) -> bool:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % TEST_BUCKETS
    return bucket < round(test_frac * TEST_BUCKETS)


def _record(
    kb: KnowledgeBase,
    template: str,
    subject: str,
    path: Sequence[str],
    question_fmt: str,
    level: dict[str, Any],
) -> tuple[str, Record]:
    chain = kb.walk(subject, path)
    answer = chain[-1][2]
    answer_type = RELATIONS[path[-1]].object
    question = question_fmt.format(s=subject)
    chain_text = [fact_text(f) for f in chain]
    n_candidates = len(kb.entities[answer_type])
    key = question + " | " + " ".join(chain_text)
    return key, Record(
        id=key_id("closedbook", key),
        prompt=f"Q: {question}\nA:",
        answer=answer,
        metadata={
            "solution": " " + " ".join(chain_text) + f" \\boxed{{{answer}}}",
            "hops": len(path),
            "template": template,
            "question": question,
            "chain": chain_text,
            "answer_type": answer_type,
            "n_candidates": n_candidates,
            "chance": 1.0 / n_candidates,
            "kb": dict(level),
        },
    )


def _take(records: list[Record], n: int | None, what: str) -> list[Record]:
    if n is None:
        return records
    if not isinstance(n, int) or n < 0 or n > len(records):
        raise ValueError(
            f"{what}: asked for {n!r} but this KB has {len(records)}; the KB is fixed, so the "
            "size can only select (raise n_people or test_frac, or leave the size unset)"
        )
    return records[:n]


def generate(
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    *,
    n_people: int = 300,
    n_cities: int = 32,
    n_countries: int = 8,
    n_companies: int = 0,
    test_frac: float = 0.5,
) -> dict[str, list[Record]]:
    """{"train": [...], "test": [...]} over the seed's fixed KB; deterministic for a seed."""
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be within (0, 1), got {test_frac!r}")
    kb = knowledge_base(seed, n_people, n_cities, n_countries, n_companies)
    level = {
        "seed": seed,
        "n_people": n_people,
        "n_cities": n_cities,
        "n_countries": n_countries,
        "n_companies": n_companies,
        "test_frac": test_frac,
    }
    one_hop = [
        _record(kb, rel, s, (rel,), QUESTIONS[rel], level)[1]
        for (s, rel) in kb.facts  # dict order: cities, people, companies (deterministic)
    ]
    two_hop: dict[str, list[Record]] = {"train": [], "test": []}
    for template, (path, question_fmt) in TEMPLATES.items():
        if (kb.entities["person"][0], path[0]) not in kb.facts:
            continue  # no employer facts without companies
        for person in kb.entities["person"]:
            key, record = _record(kb, template, person, path, question_fmt, level)
            two_hop["test" if _is_test(key, test_frac) else "train"].append(record)
    rng = random.Random(f"closedbook-order-{seed}")
    rng.shuffle(two_hop["train"])
    rng.shuffle(two_hop["test"])
    if n_train == 0:
        train = []
    else:
        extra = None if n_train is None else n_train - len(one_hop)
        if extra is not None and extra < 0:
            raise ValueError(
                f"n_train={n_train} is below the {len(one_hop)} 1-hop facts of this KB; every "
                "fact must be in train (leave n_train unset, or raise it)"
            )
        train = one_hop + _take(two_hop["train"], extra, "n_train (2-hop training questions)")
        rng.shuffle(train)
    return {"train": train, "test": _take(two_hop["test"], n_test, "n_test")}


def baselines(records: Sequence[Record]) -> dict[str, float]:
    """Guessing baselines of a split: chance (mean 1/n_candidates: a uniform guess of the right
    type) and majority (the share of the split's most frequent answer: always guessing it)."""
    if not records:
        return {"chance": 0.0, "majority": 0.0}
    counts = Counter(r.answer for r in records)
    return {
        "chance": sum(r.metadata["chance"] for r in records) / len(records),
        "majority": max(counts.values()) / len(records),
    }

"""Synthetic in-context multi-hop QA: chain facts from short passages to answer a question.

Each example is a small random world written as one-sentence passages, the facts the question
needs (the chain) shuffled among distractor passages about other entities:

    Ann lives in Varno.
    Tesk is based in Orlin.
    Varno is in Kesmark.
    ...
    Q: In which country does Ann live?
    A:

    solution  " Ann lives in Varno. Varno is in Kesmark. \\boxed{Kesmark}"
    answer    "Kesmark"

What it tests: reading and chaining facts *in context* (the mapping of people to cities, cities
to countries, ... is redrawn for every example, and the place and company names are invented, so
neither memorisation nor world knowledge helps). Every entity appears in at most one chain, so
each question has exactly one answer.

Question templates (hops = facts in the chain):
    2 hops: country of residence, city of the employer, city of residence of the mentor
    3 hops: country of the employer, country of residence of the mentor

Parameters: hops (2, 3 or [2, 3], drawn uniformly per example), n_distractors (passages not on
the chain; default 4). The first distractor chain follows the question's own template with other
entities, so with n_distractors >= hops the context holds at least two candidate answers. Metadata records hops, the template, the chain, the answer type, and chance level:
n_candidates = distinct entities of the answer's type in the context, chance = 1/n_candidates.

Train and test never share a (question, chain) problem: the split is a hash of it (see _splits).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from evals.schema import Record
from evals.suites._splits import fill_splits, key_id

PEOPLE = (
    "Ann Ben Cara Dan Eva Finn Gia Hugo Ida Jack Kim Leo Mia Nico Olga Paul Quinn Rosa Sam Tara "
    "Uma Victor Wendy Xavi Yara Zane Alma Boris Chloe Dario Elsa Felix Greta Hans Iris Joel "
    "Karla Lars Mona Nils Omar Petra Rita Sven Tomas Ugo Vera Willa"
).split()
CITIES = (
    "Varno Orlin Belmar Tavik Sorrel Lundra Kelby Mirova Dunmar Pella Rasko Velden Quorra Hadley "
    "Brisk Calder Ebbon Fennic Gorsk Holm Istra Jorva Kallin Lorne Marrow Nesko Ostra Pyre "
    "Rumel Selk Torvin Ulla Vesk Wyre Yarrow Zemla Arbo Crest Dovra Elm"
).split()
COUNTRIES = (
    "Kesmark Ardania Belvia Corvand Drest Elbonia Farland Galora Hestia Ivoria Jantar Korvia "
    "Lumera Morland Norvia Ostrava Pellucia Quendor Rovia Sardia Tallin Umbria Valdora Westia "
    "Xandria Yslandia Zorvia Aurelia Brennia Caldora"
).split()
COMPANIES = (
    "Tesk Acmo Brintel Corvex Dynamo Elara Fjord Gantry Helix Ionix Jubal Kestrel Lumos Mirage "
    "Nexa Orbit Pylon Quasar Rivet Sable Tundra Umbra Vertex Wisp Xenon Yonder Zephyr Axion "
    "Boreal Cobalt"
).split()
POOLS = {"person": PEOPLE, "city": CITIES, "country": COUNTRIES, "company": COMPANIES}


@dataclass(frozen=True)
class Relation:
    subject: str  # entity type of the subject
    object: str  # entity type of the object
    text: str  # the passage, with {s} and {o}


RELATIONS = {
    "lives_in": Relation("person", "city", "{s} lives in {o}."),
    "city_in": Relation("city", "country", "{s} is in {o}."),
    "works_for": Relation("person", "company", "{s} works for {o}."),
    "based_in": Relation("company", "city", "{s} is based in {o}."),
    "mentor": Relation("person", "person", "{s}'s mentor is {o}."),
}

# template -> (relation path from the subject to the answer, question)
TEMPLATES: dict[str, tuple[tuple[str, ...], str]] = {
    "residence_country": (("lives_in", "city_in"), "In which country does {s} live?"),
    "employer_city": (("works_for", "based_in"), "In which city is {s}'s employer based?"),
    "mentor_city": (("mentor", "lives_in"), "In which city does {s}'s mentor live?"),
    "employer_country": (
        ("works_for", "based_in", "city_in"),
        "In which country is {s}'s employer based?",
    ),
    "mentor_country": (
        ("mentor", "lives_in", "city_in"),
        "In which country does {s}'s mentor live?",
    ),
}

Fact = tuple[str, str, str]  # (subject, relation, object)


def fact_text(fact: Fact) -> str:
    s, rel, o = fact
    return RELATIONS[rel].text.format(s=s, o=o)


class _Names:
    """Draws entity names without replacement, so no entity is in two chains of one example."""

    def __init__(self, rng: random.Random):
        self._left = {t: rng.sample(pool, len(pool)) for t, pool in POOLS.items()}

    def take(self, etype: str) -> str:
        if not self._left[etype]:
            raise ValueError(f"ran out of {etype} names; lower n_distractors")
        return self._left[etype].pop()


def _chain(template: str, names: _Names) -> list[Fact]:
    path, _ = TEMPLATES[template]
    subject = names.take(RELATIONS[path[0]].subject)
    facts = []
    for rel in path:
        obj = names.take(RELATIONS[rel].object)
        facts.append((subject, rel, obj))
        subject = obj
    return facts


def _entities_of_type(facts: Sequence[Fact], etype: str) -> list[str]:
    found: dict[str, None] = {}  # a dict keeps first-seen order, unlike a set
    for s, rel, o in facts:
        for name, t in ((s, RELATIONS[rel].subject), (o, RELATIONS[rel].object)):
            if t == etype:
                found[name] = None
    return list(found)


def make_example(rng: random.Random, hops: int, n_distractors: int) -> tuple[str, Record]:
    """One example with `hops` chain facts and `n_distractors` other passages."""
    names = _Names(rng)
    template = rng.choice(sorted(t for t, (path, _) in TEMPLATES.items() if len(path) == hops))
    path, question_fmt = TEMPLATES[template]
    chain = _chain(template, names)
    # Distractors: other chains, the first one of the same template, so the context holds a
    # parallel path to another answer of the right type (the question cannot be answered by
    # type alone once n_distractors >= hops); then chains of random templates.
    distractors: list[Fact] = []
    other = template
    while len(distractors) < n_distractors:
        distractors += _chain(other, names)
        other = rng.choice(sorted(TEMPLATES))
    passages = chain + distractors[:n_distractors]
    rng.shuffle(passages)

    subject, answer = chain[0][0], chain[-1][2]
    answer_type = RELATIONS[path[-1]].object
    question = question_fmt.format(s=subject)
    chain_text = [fact_text(f) for f in chain]
    n_candidates = len(_entities_of_type(passages, answer_type))
    key = question + " | " + " ".join(chain_text)
    record = Record(
        id=key_id("multihop", key),
        prompt="\n".join(fact_text(f) for f in passages) + f"\nQ: {question}\nA:",
        answer=answer,
        metadata={
            "solution": " " + " ".join(chain_text) + f" \\boxed{{{answer}}}",
            "hops": hops,
            "template": template,
            "question": question,
            "chain": chain_text,
            "answer_type": answer_type,
            "n_distractors": n_distractors,
            "n_candidates": n_candidates,
            "chance": 1.0 / n_candidates,
        },
    )
    return key, record


def generate(
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    *,
    hops: int | Sequence[int] = (2, 3),
    n_distractors: int = 4,
) -> dict[str, list[Record]]:
    """{"train": [...], "test": [...]} of multi-hop QA records; deterministic for a seed."""
    hop_choices = sorted({hops} if isinstance(hops, int) else set(hops))
    if not hop_choices or set(hop_choices) - {2, 3}:
        raise ValueError(f"hops must be 2, 3 or a list of them, got {hops!r}")
    if not 0 <= n_distractors <= 16:
        raise ValueError(f"n_distractors must be within 0..16, got {n_distractors}")

    def draw(rng: random.Random) -> tuple[str, Record]:
        return make_example(rng, rng.choice(hop_choices), n_distractors)

    return fill_splits(
        draw, 4000 if n_train is None else n_train, 256 if n_test is None else n_test, seed
    )

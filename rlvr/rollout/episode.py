"""Multi-turn search episodes, as Search-R1 and the seed paper's QA agents run them: the model
writes until `</search>` or `</answer>` (or stops), a search is answered with an
`<information>` block of the top-k passages, and the episode continues, up to max_turns.

This module is the turn logic only, engine-agnostic: `run_episodes` takes a `generate` callable
(contexts → continuations; any engine, with stop strings or not: a continuation is cut after its
first closing tag, as Search-R1 cuts after decoding) and a retriever (rlvr/retrieval.py). An
episode is a list of segments, each the model's or injected; the injected ones are what the loss
mask will zero. Every malformed turn is handled and counted, never raised:

    invalid     no complete <search>/<answer> tag, or an empty query: the model is told so
                (Search-R1's message) and the turn counts
    truncated   a query past max_query_chars is cut to it before retrieval
    empty       a search the retriever found nothing for: "No results." is injected
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from rlvr.retrieval import Retriever, format_information

ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
CLOSING = re.compile(r"</(search|answer)>")
INVALID = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> "
    "and </search>. If I want to give the final answer, I should put the answer between <answer> "
    "and </answer>. Let me try again.\n"
)


@dataclass(frozen=True)
class EpisodeSettings:
    max_turns: int = 10
    top_k: int = 3
    max_query_chars: int = 512
    max_information_chars: int = 2000


@dataclass(frozen=True)
class Action:
    kind: str  # "search" | "answer" | "invalid"
    content: str = ""


def cut_after_action(text: str) -> str:
    """The continuation up to its first closing </search> or </answer> (what follows is discarded,
    as Search-R1 does after decoding without stop strings)."""
    match = CLOSING.search(text)
    return text[: match.end()] if match else text


def parse_action(segment: str) -> Action:
    match = ACTION.search(segment)
    if match is None:
        return Action("invalid")
    kind, content = match.group(1), match.group(2).strip()
    if kind == "search" and not content:
        return Action("invalid")
    return Action(kind, content)


@dataclass
class Episode:
    """One prompt's episode: segments as (text, written by the model?) and its counters."""

    prompt: str
    segments: list[tuple[str, bool]] = field(default_factory=list)
    turns: int = 0
    searches: int = 0
    invalid: int = 0
    truncated_queries: int = 0
    empty_results: int = 0
    answer: str | None = None

    @property
    def done(self) -> bool:
        return self.answer is not None

    @property
    def context(self) -> str:
        return self.prompt + "".join(text for text, _ in self.segments)

    @property
    def completion(self) -> str:
        return "".join(text for text, _ in self.segments)

    def injected_fraction(self) -> float:
        total = sum(len(t) for t, _ in self.segments)
        return sum(len(t) for t, model in self.segments if not model) / total if total else 0.0


def information(passages, settings: EpisodeSettings) -> str:
    return f"\n\n<information>{format_information(passages, settings.max_information_chars)}</information>\n\n"


def run_episodes(prompts: list[str], generate: Callable[[list[str]], list[str]], retriever: Retriever,
                 settings: EpisodeSettings = EpisodeSettings()) -> list[Episode]:
    """Every prompt's episode, the live ones generating together each turn and their searches
    retrieved in one batch. An episode ends at its answer, when the model stops without an
    action on its last turn, or after max_turns."""
    episodes = [Episode(p) for p in prompts]
    for turn in range(settings.max_turns):
        live = [e for e in episodes if not e.done]
        if not live:
            break
        outputs = generate([e.context for e in live])
        if len(outputs) != len(live):
            raise ValueError(f"generate returned {len(outputs)} continuations for {len(live)} contexts")
        searching: list[tuple[Episode, str]] = []
        for episode, raw in zip(live, outputs, strict=True):
            text = cut_after_action(raw)
            episode.segments.append((text, True))
            episode.turns += 1
            action = parse_action(text)
            if action.kind == "answer":
                episode.answer = action.content
            elif action.kind == "search":
                query = action.content
                if len(query) > settings.max_query_chars:
                    query, episode.truncated_queries = query[: settings.max_query_chars], episode.truncated_queries + 1
                searching.append((episode, query))
            else:
                episode.invalid += 1
                if turn + 1 < settings.max_turns:
                    episode.segments.append((INVALID, False))
        if searching:
            results = retriever.search([q for _, q in searching], settings.top_k)
            for (episode, _), passages in zip(searching, results, strict=True):
                episode.searches += 1
                episode.empty_results += not passages
                if turn + 1 < settings.max_turns:
                    episode.segments.append((information(passages, settings), False))
    return episodes


def episode_stats(episodes: list[Episode]) -> dict[str, float]:
    """Per-step means over episodes (the rollout/ metrics of a search run)."""
    n = max(len(episodes), 1)
    return {
        "episode/turns": sum(e.turns for e in episodes) / n,
        "episode/searches": sum(e.searches for e in episodes) / n,
        "episode/invalid_actions": sum(e.invalid for e in episodes) / n,
        "episode/answer_rate": sum(e.done for e in episodes) / n,
        "episode/empty_results": sum(e.empty_results for e in episodes) / n,
        "episode/truncated_queries": sum(e.truncated_queries for e in episodes) / n,
        "episode/injected_frac": sum(e.injected_fraction() for e in episodes) / n,
    }

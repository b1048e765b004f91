"""Multi-turn search episodes (rollout.episode.mode=search), as Search-R1 and the seed paper's QA
agents run them: the model writes until `</search>` or `</answer>` (or EOS), a search is answered
with an `<information>` block of the top-k passages, and the episode continues, up to max_turns.

`EpisodeEngine` wraps any rollout engine (native, hf, vllm) through its token-level `extend`, so
the policy's tokens are exactly the sampled ones (never re-tokenized text) and every sampling
log-prob belongs to the token the trainer scores. One episode is one completion: the model's
turns and the injected blocks in order, with `loss_mask` = 1 on the model's tokens only, so
every registered algorithm, the entropy, the taxonomy and the log-prob gaps see model tokens
alone (rlvr/update/step.py). Rewards read the completion's text, injected blocks included.

A turn is cut after its first closing tag (stop strings where the engine has them, and after
decoding in any case, as Search-R1 does). The whole episode, injected tokens included, fits in
rollout.max_new_tokens; one turn generates at most episode.max_turn_tokens. Every malformed turn
is handled and counted, never raised:

    invalid      no complete <search>/<answer> tag, or an empty query: the model is told so
                 (Search-R1's message) and the episode goes on; a turn that ends in EOS
                 without an action ends the episode
    truncated    a query past max_query_chars is cut to it before retrieval
    empty        a search the retriever found nothing for: "No results." is injected
    out of room  the episode's token budget ran out: the completion is `truncated`

A retriever that fails (a server down or too slow) raises RetrieverError: the step fails and
the run records the reason (rlvr/retrieval.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from rlvr.config import EpisodeConfig, RolloutConfig
from rlvr.retrieval import Passage, Retriever, format_information
from rlvr.rollout.base import RolloutEngine, Rollouts, encode_prompts, row_seeds

ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
CLOSING = re.compile(r"</(search|answer)>")
STOP = ("</search>", "</answer>")
INVALID = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> "
    "and </search>. If I want to give the final answer, I should put the answer between <answer> "
    "and </answer>. Let me try again.\n"
)
# the per-row counters a search rollout carries (Rollouts.episode) and the metrics they become
COUNTERS = ("turns", "searches", "invalid_actions", "answered", "empty_results", "truncated_queries",
            "injected_tokens")  # fmt: skip


@dataclass(frozen=True)
class Action:
    kind: str  # "search" | "answer" | "invalid"
    content: str = ""


def cut_after_action(text: str) -> str:
    """The text up to its first closing </search> or </answer>."""
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


def information(passages: list[Passage], settings: EpisodeConfig) -> str:
    """What a search injects: the passages as Search-R1 formats them, in <information> tags."""
    return f"\n\n<information>{format_information(passages, settings.max_information_chars)}</information>\n\n"


def scripted_segments(actions: list[tuple[str, str]], retriever: Retriever,
                      settings: EpisodeConfig) -> list[tuple[str, bool]]:
    """A worked episode for SFT: the model's turns `<kind>content</kind>` in order, each search
    answered by exactly what an episode would inject. (text, written by the model?) pairs."""
    segments = []
    for kind, content in actions:
        segments.append((f"<{kind}>{content}</{kind}>", True))
        if kind == "search":
            passages = retriever.search([content[: settings.max_query_chars]], settings.top_k)[0]
            segments.append((information(passages, settings), False))
    return segments


@dataclass
class EpisodeRow:
    """One completion being built: its tokens, who wrote each, and its counters."""

    context: list[int]  # the prompt's ids
    seed: int
    ids: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    by_model: list[bool] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    finished: bool = False
    truncated: bool = False

    def add(self, ids: list[int], logps: list[float] | None, by_model: bool) -> None:
        self.ids += ids
        self.logps += logps if logps is not None else [0.0] * len(ids)
        self.by_model += [by_model] * len(ids)
        if not by_model:
            self.counts["injected_tokens"] += len(ids)


class EpisodeEngine:
    """A RolloutEngine whose completions are search episodes, on top of `inner`'s `extend`."""

    def __init__(self, inner: RolloutEngine, tok, cfg: RolloutConfig, retriever: Retriever):
        self.inner, self.tok, self.cfg, self.retriever = inner, tok, cfg, retriever
        self.eos_ids = inner.eos_ids  # a turn ends where the engine ends it
        self.settings = cfg.episode
        self.turn_tokens = min(self.settings.max_turn_tokens or cfg.max_new_tokens, cfg.max_new_tokens)

    def sync_weights(self) -> None:
        self.inner.sync_weights()

    def sleep(self) -> None:
        self.inner.sleep()

    def close(self) -> None:
        self.inner.close()

    def generate(self, prompts: list[str], n: int, seeds: list[int]) -> Rollouts:
        return self.episodes(prompts, n, seeds, self.cfg.temperature)

    def episodes(self, prompts: list[str], n: int, seeds: list[int], temperature: float) -> Rollouts:
        """n episodes per prompt (rows i*n..i*n+n-1 for prompt i), row j of prompt i seeded by
        (seeds[i], j) and its turn t by (that, t): a row's episode does not depend on its batch
        (native, vllm). Temperature 0 is greedy."""
        ids, mask = encode_prompts(self.tok, prompts, self.cfg.max_prompt_len, n)
        rows = [EpisodeRow(ids[i][mask[i].bool()].tolist(), s) for i, s in enumerate(row_seeds(seeds, n))]
        budget, s = self.cfg.max_new_tokens, self.settings
        for turn in range(s.max_turns):
            live = [r for r in rows if not r.finished]
            if not live:
                break
            room = [min(self.turn_tokens, budget - len(r.ids)) for r in live]
            outs = self.inner.extend(
                [r.context + r.ids for r in live], [(r.seed * 1_000_033 + turn) % 2**63 for r in live],
                max(room), temperature, STOP,
            )  # fmt: skip
            last_turn = turn + 1 == s.max_turns
            searching: list[tuple[EpisodeRow, str]] = []
            for row, out, limit in zip(live, outs, room, strict=True):
                take = self._through_action(out.ids)[:limit]
                row.add(take, out.logps[: len(take)], by_model=True)
                row.counts["turns"] += 1
                action = parse_action(self.tok.decode(take, skip_special_tokens=True))
                if action.kind == "answer":
                    row.counts["answered"], row.finished = 1, True
                elif action.kind == "search":
                    row.counts["searches"] += 1
                    query = action.content
                    if len(query) > s.max_query_chars:
                        query = query[: s.max_query_chars]
                        row.counts["truncated_queries"] += 1
                    if not last_turn:
                        searching.append((row, query))
                else:
                    row.counts["invalid_actions"] += 1
                    if take and take[-1] in self.eos_ids:
                        row.finished = True  # the model stopped without acting
                    elif not last_turn:
                        self._inject(row, INVALID)
                if len(row.ids) >= budget and not row.finished:
                    row.finished = row.truncated = True
            if searching:
                results = self.retriever.search([q for _, q in searching], s.top_k)
                for (row, _), passages in zip(searching, results, strict=True):
                    row.counts["empty_results"] += not passages
                    self._inject(row, information(passages, s))
        self.inner.sleep()
        return self._rollouts(ids, mask, rows)

    def _through_action(self, ids: list[int]) -> list[int]:
        """The shortest prefix of a turn whose text holds its first closing tag (all of it when
        there is none): what follows a tag is discarded, whatever the engine's stop handling."""
        if not CLOSING.search(self.tok.decode(ids, skip_special_tokens=True)):
            return ids
        lo, hi = 1, len(ids)  # binary search: the text of a longer prefix holds the tag too
        while lo < hi:
            mid = (lo + hi) // 2
            if CLOSING.search(self.tok.decode(ids[:mid], skip_special_tokens=True)):
                hi = mid
            else:
                lo = mid + 1
        return ids[:lo]

    def _inject(self, row: EpisodeRow, text: str) -> None:
        """Append an injected block, or end the episode as truncated when it does not fit."""
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(row.ids) + len(ids) >= self.cfg.max_new_tokens:
            row.finished = row.truncated = True
        else:
            row.add(ids, None, by_model=False)

    def _rollouts(self, prompt_ids, prompt_mask, rows: list[EpisodeRow]) -> Rollouts:
        N, W = len(rows), max(1, max(len(r.ids) for r in rows))
        completion = torch.full((N, W), self.tok.pad_token_id, dtype=torch.long)
        cmask, lmask, logp = torch.zeros(N, W), torch.zeros(N, W), torch.zeros(N, W)
        for i, r in enumerate(rows):
            n = len(r.ids)
            completion[i, :n] = torch.tensor(r.ids, dtype=torch.long)
            cmask[i, :n] = 1
            lmask[i, :n] = torch.tensor(r.by_model, dtype=torch.float)
            logp[i, :n] = torch.tensor(r.logps)  # 0 on injected tokens (EpisodeRow.add)
        return Rollouts(
            prompt_ids, prompt_mask, completion, cmask, logp,
            torch.tensor([r.truncated for r in rows]),
            [self.tok.decode(r.ids, skip_special_tokens=True) for r in rows],
            loss_mask=lmask,
            episode={k: torch.tensor([float(r.counts[k]) for r in rows]) for k in COUNTERS},
        )  # fmt: skip


def episode_stats(roll: Rollouts) -> dict[str, float]:
    """The step's episode metrics: means per episode, and the injected share of its tokens."""
    c = roll.episode
    out = {f"episode/{k}": float(c[k].mean()) for k in COUNTERS if k not in ("answered", "injected_tokens")}
    out["episode/answer_rate"] = float(c["answered"].mean())
    out["episode/injected_frac"] = float(c["injected_tokens"].sum() / roll.lengths.sum().clamp(min=1))
    return out

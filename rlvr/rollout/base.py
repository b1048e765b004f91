"""What every rollout engine returns (`Rollouts`) and the helpers they share: prompt encoding,
completion masks, decoding, and joining or selecting rows of rollouts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Rollouts:
    """N = prompts × G completions, prompt left-padded, completion right-padded."""

    prompt_ids: torch.Tensor  # [N, P] long
    prompt_mask: torch.Tensor  # [N, P] long
    completion_ids: torch.Tensor  # [N, T] long
    completion_mask: torch.Tensor  # [N, T] float: generated tokens up to and including EOS
    sampling_logp: torch.Tensor  # [N, T] float: log-prob under the sampling distribution
    truncated: torch.Tensor  # [N] bool: no EOS within the budget
    texts: list[str]  # decoded completions (special tokens removed)
    # [N, T] float: the tokens the update trains on and its statistics count, where they differ
    # from completion_mask: a search episode's injected passages are in the completion (attended
    # to) but not the model's own (zero here). None: completion_mask.
    loss_mask: torch.Tensor | None = None
    # per-row counters of a search episode ({"turns": [N] float, ...}; rlvr/rollout/episode.py),
    # None for single-turn rollouts
    episode: dict[str, torch.Tensor] | None = None

    @property
    def lengths(self) -> torch.Tensor:
        """[N] completion widths, injected tokens included: what the update attends over."""
        return self.completion_mask.sum(-1)

    @property
    def model_lengths(self) -> torch.Tensor:
        """[N] the model's own tokens per completion (injected passages left out): the length
        every algorithm hook and the length statistics see."""
        return self.model_mask.sum(-1)

    @property
    def model_mask(self) -> torch.Tensor:
        """The model's own tokens: loss_mask, or completion_mask when there is none."""
        return self.completion_mask if self.loss_mask is None else self.loss_mask


@dataclass
class Turn:
    """One row's continuation of its context (RolloutEngine.extend): the sampled tokens, up to
    and including EOS or a stop string's last token (a stop string may also end mid-list: the
    caller cuts), and their sampling log-probs."""

    ids: list[int]
    logps: list[float]


class RolloutEngine(Protocol):
    eos_ids: tuple[int, ...]  # the tokens that end a turn (stop_token_ids)

    def generate(self, prompts: list[str], n: int, seeds: list[int]) -> Rollouts:
        """Sample `n` completions for each prompt; completions of prompt i are rows i*n..i*n+n-1,
        row j drawn with row_seeds' (seeds[i], j) (native and vllm: whatever else is in the batch)."""

    def extend(self, contexts: list[list[int]], seeds: list[int], max_new_tokens: int,
               temperature: float, stop: tuple[str, ...] = ()) -> list[Turn]:
        """Continue each token-id context by up to max_new_tokens (temperature 0: greedy), row i
        drawn with seeds[i]; a row stops at EOS or once its text ends a `stop` string. The turn
        primitive of multi-turn episodes (rlvr/rollout/episode.py)."""

    def sync_weights(self) -> None:
        """Make the engine sample from the policy's current weights."""

    def sleep(self) -> None:
        """Free accelerator memory until the next call (vLLM's sleep mode); a no-op elsewhere."""

    def close(self) -> None:
        """Release what the engine holds, while the process group still exists."""


def stop_token_ids(tok, model=None) -> tuple[int, ...]:
    """The tokens that end a turn, for every engine: the tokenizer's EOS and every EOS id of the
    model's generation config (Qwen3 lists <|im_end|> and <|endoftext|>; vLLM stops on both)."""
    ids = [tok.eos_token_id]
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids += extra if isinstance(extra, (list, tuple)) else [extra]
    ids = tuple(dict.fromkeys(int(i) for i in ids if i is not None))
    if not ids:
        raise ValueError("the tokenizer has no eos_token and the model's generation config no eos_token_id")
    return ids


def row_seeds(seeds: list[int], n: int) -> list[int]:
    """The seed of row j of prompt i, (seeds[i], j) folded into one int."""
    return [(int(seed) * 1_000_003 + j) % 2**63 for seed in seeds for j in range(n)]


def seeded_uniforms(seeds: list[int], steps: int) -> torch.Tensor:
    """[len(seeds), steps] uniforms in [0, 1), row i from its own generator seeded by seeds[i],
    so a row's draw does not depend on the other rows of its batch (which rank of a
    data-parallel run samples it, or how the prompts are batched)."""
    out = torch.empty(len(seeds), steps)
    gen = torch.Generator()
    for i, seed in enumerate(seeds):
        gen.manual_seed(int(seed) % 2**63)
        out[i] = torch.rand(steps, generator=gen)
    return out


def row_uniforms(seeds: list[int], n: int, steps: int) -> torch.Tensor:
    """[len(seeds)·n, steps] uniforms: row j of prompt i seeded by (seeds[i], j)."""
    return seeded_uniforms(row_seeds(seeds, n), steps)


def left_pad(contexts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as left-padded ids and attention mask."""
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for i, c in enumerate(contexts):
        if c:
            ids[i, width - len(c) :] = torch.tensor(c, dtype=torch.long)
            mask[i, width - len(c) :] = 1
    return ids, mask


def turns_from(tokens: torch.Tensor, logps: torch.Tensor, lengths: torch.Tensor) -> list[Turn]:
    return [Turn(tokens[i, :n].tolist(), logps[i, :n].tolist()) for i, n in enumerate(lengths.tolist())]


def completion_mask_from_ids(ids: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask tokens up to and including the first of `eos_ids`; a row without one is truncated."""
    is_eos = torch.isin(ids, torch.tensor(list(eos_ids), dtype=ids.dtype, device=ids.device))
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).float(), ~is_eos.any(-1)


def encode_prompts(
    tok, prompts: list[str], max_prompt_len: int, n: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids, each prompt repeated `n` times (rows i*n..i*n+n-1 are prompt i);
    a prompt longer than the budget is an error, never cut silently."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    too_long = enc["attention_mask"].sum(-1) > max_prompt_len
    if too_long.any():
        i = int(too_long.nonzero()[0])
        raise ValueError(
            f"prompt {i} has {int(enc['attention_mask'][i].sum())} tokens > "
            f"rollout.max_prompt_len={max_prompt_len}; raise the budget or shorten the prompts"
        )
    return enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0)


def make_rollouts(tok, ids, mask, completion, sampling_logp, eos_ids: Sequence[int]) -> Rollouts:
    """Mask everything after each row's first EOS (any of eos_ids) and decode the completions."""
    cmask, truncated = completion_mask_from_ids(completion, eos_ids)
    sampling_logp = torch.where(cmask.bool(), sampling_logp, torch.zeros_like(sampling_logp))
    texts = tok.batch_decode(
        completion * cmask.long() + tok.pad_token_id * (1 - cmask.long()),
        skip_special_tokens=True,
    )
    return Rollouts(ids, mask, completion, cmask, sampling_logp, truncated, texts)


def cat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """Concatenate rollouts of different padded widths (prompts left-, completions right-padded)."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.completion_ids.shape[1] for p in parts)

    def left(x, w, v):
        return torch.nn.functional.pad(x, (w - x.shape[1], 0), value=v)

    def right(x, w, v):
        return torch.nn.functional.pad(x, (0, w - x.shape[1]), value=v)

    return Rollouts(
        torch.cat([left(p.prompt_ids, P, pad_id) for p in parts]),
        torch.cat([left(p.prompt_mask, P, 0) for p in parts]),
        torch.cat([right(p.completion_ids, T, pad_id) for p in parts]),
        torch.cat([right(p.completion_mask, T, 0) for p in parts]),
        torch.cat([right(p.sampling_logp, T, 0) for p in parts]),
        torch.cat([p.truncated for p in parts]),
        [t for p in parts for t in p.texts],
        None if all(p.loss_mask is None for p in parts) else torch.cat([right(p.model_mask, T, 0) for p in parts]),
        _cat_counters([p.episode for p in parts]),
    )


def _cat_counters(parts: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor] | None:
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise ValueError("cannot join search-episode rollouts with single-turn ones")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def select_rows(r: Rollouts, idx: torch.Tensor) -> Rollouts:
    i = idx.tolist()
    return Rollouts(
        r.prompt_ids[idx],
        r.prompt_mask[idx],
        r.completion_ids[idx],
        r.completion_mask[idx],
        r.sampling_logp[idx],
        r.truncated[idx],
        [r.texts[j] for j in i],
        None if r.loss_mask is None else r.loss_mask[idx],
        None if r.episode is None else {k: v[idx] for k, v in r.episode.items()},
    )

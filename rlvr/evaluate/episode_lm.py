"""lm-eval's model for search suites (rollout.episode.mode=search): each `generate_until`
request is one search episode, run by the engine training samples with (rlvr/rollout/episode.py:
the same turns, retriever, budgets and injected blocks), so an evaluated completion is scored by
the task exactly as a training completion is rewarded.

The request's context is the episode's prompt; its generation kwargs choose greedy
(do_sample false: temperature 0) or sampling at their temperature. The episode's own budgets
(rollout.max_new_tokens for the whole episode, episode.max_turn_tokens per turn) replace
max_gen_toks, and the turns end at the action tags, not at `until`. Only generation is
implemented: a search suite has no log-likelihood tasks.
"""

from __future__ import annotations

from lm_eval.api.model import LM

from rlvr.config import RunConfig
from rlvr.rollout import make_rollout_engine


class EpisodeLM(LM):
    def __init__(self, model, tok, cfg: RunConfig, engine: str):
        super().__init__()
        rollout = cfg.rollout.model_copy(update={
            "engine": engine, "top_p": cfg.eval.top_p,
            "max_new_tokens": cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
        })  # fmt: skip
        self.engine = make_rollout_engine(rollout, model, tok)
        self.batch_size, self.seed = cfg.eval.batch_size, cfg.seed

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Episodes in batches of eval.batch_size; request i's episode is seeded by (seed, i)."""
        out: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            by_kwargs: dict[float, list[int]] = {}
            for j, request in enumerate(chunk):
                kwargs = request.args[1]
                temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0
                by_kwargs.setdefault(temperature, []).append(j)
            texts: dict[int, str] = {}
            for temperature, rows in by_kwargs.items():
                roll = self.engine.episodes(
                    [chunk[j].args[0] for j in rows], 1,
                    [self.seed * 1_000_003 + start + j for j in rows], temperature,
                )  # fmt: skip
                texts |= dict(zip(rows, roll.texts, strict=True))
            out += [texts[j] for j in range(len(chunk))]
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("search suites are generation tasks: no log-likelihood requests")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("search suites are generation tasks: no log-likelihood requests")

"""Stability statistics: rollout summaries, the token taxonomy, and collapse detection."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rlvr.config import CollapseConfig


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> dict[str, float]:
    """Reward mean/std over completions and the fraction of groups whose rewards are all equal."""
    groups = group_ids.unique()
    zero_std = sum(
        bool((rewards[group_ids == g] == rewards[group_ids == g][0]).all()) for g in groups
    )
    return {
        "rollout/reward_mean": float(rewards.mean()),
        "rollout/reward_std": float(rewards.std(unbiased=False)),
        "rollout/frac_zero_std_groups": zero_std / max(len(groups), 1),
    }


def length_stats(lengths: torch.Tensor, truncated: torch.Tensor) -> dict[str, float]:
    return {
        "rollout/length_mean": float(lengths.float().mean()),
        "rollout/length_max": float(lengths.max()),
        "rollout/truncated_frac": float(truncated.float().mean()),
    }


TAXONOMY_BINS = ("pos_peak", "pos_valley", "neg_peak", "neg_valley")


def token_taxonomy(
    adv: torch.Tensor,
    mask: torch.Tensor,
    p_token: torch.Tensor,
    collision: torch.Tensor,
    ratio: torch.Tensor | None = None,
) -> dict[str, float]:
    """Split completion tokens by advantage sign × (peak: p ≥ Σp², valley: p < Σp²).

    Counts are fractions of tokens with non-zero advantage; gradient mass |A|·r·(1−p) (the size
    of the logit gradient on the sampled token) is a fraction of the total mass. `ratio`
    defaults to 1 (measured before the update, where the policy equals the old policy).
    """
    ratio = torch.ones_like(p_token) if ratio is None else ratio
    a = adv[:, None].expand_as(mask)
    live = (mask > 0) & (a != 0)
    peak = p_token >= collision
    mass = a.abs() * ratio * (1 - p_token)
    sel = {
        "pos_peak": live & (a > 0) & peak,
        "pos_valley": live & (a > 0) & ~peak,
        "neg_peak": live & (a < 0) & peak,
        "neg_valley": live & (a < 0) & ~peak,
    }
    n_live, m_live = live.sum().clamp(min=1), mass[live].sum().clamp(min=1e-12)
    out = {}
    for name, s in sel.items():
        out[f"taxonomy/{name}_frac"] = float(s.sum() / n_live)
        out[f"taxonomy/{name}_grad_mass"] = float(mass[s].sum() / m_live)
    out["taxonomy/zero_adv_frac"] = float(((mask > 0) & (a == 0)).sum() / mask.sum().clamp(min=1))
    return out


@dataclass
class CollapseDetector:
    """Marks a run collapsed when a condition holds for `patience` consecutive steps.

    Reference values are the means of the first `window` steps. Conditions: entropy below
    entropy_low × initial (collapse) or above entropy_high × initial (explosion), mean reward
    below reward_low × initial (only when the initial reward is > 0), or `max_nonfinite`
    consecutive updates skipped for non-finite loss/gradient.
    """

    cfg: CollapseConfig
    history: list[tuple[float, float]] = field(default_factory=list)
    streaks: dict[str, int] = field(default_factory=dict)
    nonfinite_streak: int = 0

    def state_dict(self) -> dict:
        return {
            "history": self.history,
            "streaks": self.streaks,
            "nonfinite_streak": self.nonfinite_streak,
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(x) for x in state["history"]]
        self.streaks = dict(state["streaks"])
        self.nonfinite_streak = int(state["nonfinite_streak"])

    def update(self, entropy: float, reward: float, skipped_nonfinite: bool) -> str | None:
        """Feed one step; returns the reason once the run has collapsed, else None."""
        self.nonfinite_streak = self.nonfinite_streak + 1 if skipped_nonfinite else 0
        if self.nonfinite_streak >= self.cfg.max_nonfinite:
            return f"non-finite loss or gradient on {self.nonfinite_streak} consecutive steps"
        if not (math.isfinite(entropy) and math.isfinite(reward)):
            return "non-finite entropy or reward"
        if len(self.history) < self.cfg.window:
            self.history.append((entropy, reward))
            return None
        ent0 = sum(h[0] for h in self.history) / len(self.history)
        rew0 = sum(h[1] for h in self.history) / len(self.history)
        conditions = {
            "entropy collapse": entropy < self.cfg.entropy_low * ent0,
            "entropy explosion": entropy > self.cfg.entropy_high * ent0,
            "reward collapse": rew0 > 0 and reward < self.cfg.reward_low * rew0,
        }
        for name, holds in conditions.items():
            self.streaks[name] = self.streaks.get(name, 0) + 1 if holds else 0
            if self.streaks[name] >= self.cfg.patience:
                return (
                    f"{name}: entropy {entropy:.3g} (initial {ent0:.3g}), reward {reward:.3g} "
                    f"(initial {rew0:.3g}) for {self.cfg.patience} steps"
                )
        return None

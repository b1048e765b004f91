"""`Algorithm`: the contract between the shared training loop and one RLVR algorithm.

An algorithm is a dataclass whose fields are its hyper-parameters, plus hooks that are pure
functions of tensors. The loop calls them in this order each step (B completions, T positions):

    algo.bind(group_size=G, max_new_tokens=L, max_prompt_len=P)        # once, before training
    rewards = algo.shape_rewards(rewards[B], lengths[B], truncated[B])  # -> [B]
    keep    = algo.filter_groups(rewards[B], group_ids[B])              # -> bool [B]
    adv     = algo.advantages(rewards[B], group_ids[B])                 # -> [B]
    # per mini-batch:
    z       = algo.loss_normalizer(adv[B], mask[B, T], group_ids[B])    # -> scalar tensor
    # per micro-batch (sum of micro-batch losses == mini-batch loss, same gradient):
    loss, stats = algo.policy_loss(logp, old_logp, adv, mask, group_ids, normalizer=z,
                                   ref_logp=ref_logp if algo.needs_reference else None)

A hook may draw at random with torch's global RNG (Clip-Cov's token selection): the loop runs
`loss_normalizer` under an RNG state seeded by (run seed, step, mini-batch) and each
`policy_loss` by that and the micro-batch's first row, restored afterwards, so a draw is the
same on every data-parallel rank and on one process, with no seeding in the algorithm.

Every hook has a neutral default here, so a subclass overrides only what makes it different.
The defaults alone are REINFORCE without baseline: A = R, loss = token-mean of -r·A.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from algorithms.contract import LossKeywords
from algorithms.core import (
    agg_loss,
    clipped_surrogate,
    default_normalizer,
    masked_log_ratio,
    policy_stats,
)


@dataclass(frozen=True)
class RolloutShape:
    """The rollout geometry the loop passes to `Algorithm.bind`."""

    group_size: int
    """G: completions sampled per prompt."""
    max_new_tokens: int
    """L: the generation budget (completion length cap)."""
    max_prompt_len: int
    """P: the prompt length cap."""

    @property
    def max_seq_len(self) -> int:
        """L_seq = P + L, the longest prompt + completion sequence."""
        return self.max_prompt_len + self.max_new_tokens


@dataclass
class Algorithm:
    """Base class of every registered algorithm. Subclasses are `@dataclass`es; fields = hparams.

    Class attributes read by the loop:
        name: the registry name (set by `@algorithms.register`).
        max_gen_rounds: extra generation rounds dynamic sampling may run to refill a batch
            whose groups `filter_groups` dropped (0: never regenerate). DAPO makes it an hparam.
        on_short_batch: "error" | "truncate": what the loop does when the batch is still short
            after `max_gen_rounds` rounds (raise, or train on the smaller batch and log it).
        needs_groups: the advantage is relative to the completion's group, so a group of one
            gives every completion a zero advantage; `bind` rejects group_size < 2.
        loss_keywords: which of normalizer= / ref_logp= `policy_loss` accepts (set by
            `@register` from its signature; see algorithms/contract.py).
        advantage_lengths: whether `advantages` takes `lengths=` (completion lengths [B]); the
            loop then passes them (set by `@register` from its signature).
        normalizer_logp: which of `logp=` (the mini-batch's per-token log-probs under the
            current weights, from a no-grad pass) and `old_logp=` `loss_normalizer` names (set
            by `@register`); the loop passes those.
    """

    name: ClassVar[str] = "algorithm"
    needs_groups: ClassVar[bool] = False
    loss_keywords: ClassVar[LossKeywords] = LossKeywords()
    advantage_lengths: ClassVar[bool] = False
    normalizer_logp: ClassVar[tuple[str, ...]] = ()
    max_gen_rounds = 0  # plain class attributes, not hparams, until a subclass declares them
    on_short_batch = "error"

    _shape: RolloutShape | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check hyper-parameter values; raise ValueError naming the bad one. Override + super()."""

    # ------------------------------------------------------------------ hyper-parameters

    @classmethod
    def hparam_defaults(cls) -> dict[str, Any]:
        """{name: default} of every hyper-parameter, in declaration order."""
        out = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = dataclasses.MISSING
        return out

    def hparams(self) -> dict[str, Any]:
        """{name: value} of this instance's hyper-parameters (for the resolved run config)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @property
    def needs_reference(self) -> bool:
        """True when the loss has a KL term to a reference policy (a `kl_coef` > 0)."""
        return float(getattr(self, "kl_coef", 0.0)) > 0.0

    # ------------------------------------------------------------------ rollout shape

    def bind(self, *, group_size: int, max_new_tokens: int, max_prompt_len: int) -> Algorithm:
        """Record the rollout shape (called once by the loop). Returns self."""
        for key, val in (("group_size", group_size), ("max_new_tokens", max_new_tokens)):
            if int(val) != val or val < 1:
                raise ValueError(f"{key} must be a positive integer, got {val!r}")
        if int(max_prompt_len) != max_prompt_len or max_prompt_len < 0:
            raise ValueError(f"max_prompt_len must be an integer >= 0, got {max_prompt_len!r}")
        if self.needs_groups and group_size < 2:
            raise ValueError(
                f"algorithm {self.name!r} compares completions within a group: "
                f"rollout.group_size={group_size} gives every completion a zero advantage, so the "
                "run would train nothing; set rollout.group_size >= 2"
            )
        self._shape = RolloutShape(int(group_size), int(max_new_tokens), int(max_prompt_len))
        return self

    @property
    def shape(self) -> RolloutShape:
        """The bound rollout shape; a clear error if `bind` was not called."""
        if self._shape is None:
            raise RuntimeError(
                f"algorithm {self.name!r} needs the rollout shape: call "
                "algo.bind(group_size=G, max_new_tokens=L, max_prompt_len=P) first"
            )
        return self._shape

    # ------------------------------------------------------------------ hooks

    def shape_rewards(
        self, rewards: torch.Tensor, lengths: torch.Tensor, truncated: torch.Tensor
    ) -> torch.Tensor:
        """rewards[B], completion lengths[B], truncated[B] bool -> shaped rewards[B]. Identity."""
        return rewards

    def filter_groups(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """rewards[B], group_ids[B] -> keep[B] bool (the loop refills dropped groups). All True."""
        return torch.ones(len(rewards), dtype=torch.bool, device=torch.as_tensor(rewards).device)

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """rewards[B], group_ids[B] -> one advantage per completion [B]. Default: A = R."""
        rewards = torch.as_tensor(rewards)
        return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())

    def loss_normalizer(
        self, adv: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor
    ) -> torch.Tensor:
        """The loss denominator over a WHOLE mini-batch (scalar tensor). Default: token count."""
        return default_normalizer(mask, "token-mean")

    def policy_loss(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        adv: torch.Tensor,
        mask: torch.Tensor,
        group_ids: torch.Tensor,
        *,
        normalizer: torch.Tensor | float | None = None,
        ref_logp: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss (normalised over the mini-batch) and detached stats.

        Args:
            logp, old_logp: [B, T] log-probs of the sampled tokens, current / behaviour policy.
            adv: [B]. mask: [B, T]. group_ids: [B].
            normalizer: `loss_normalizer` of the mini-batch this micro-batch belongs to;
                None = this call is the whole mini-batch.
            ref_logp: [B, T] reference-policy log-probs; required when `needs_reference`.
        Default: ℓ = -r·A (no clipping), token-mean.
        """
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        log_ratio = masked_log_ratio(logp, old_logp, mask)
        loss_mat, low, high = clipped_surrogate(log_ratio, adv, None, None)
        loss = agg_loss(loss_mat, mask, "token-mean", normalizer)
        return loss, policy_stats(log_ratio, mask, low, high)


def check_shapes(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
) -> None:
    """Raise ValueError unless logp/old_logp/mask/ref_logp are [B, T] and adv/group_ids are [B]."""
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    bt = tuple(logp.shape)
    named = {"old_logp": old_logp, "mask": mask, "ref_logp": ref_logp}
    for key, t in named.items():
        if t is not None and tuple(t.shape) != bt:
            raise ValueError(f"{key} must have logp's shape {bt}, got {tuple(t.shape)}")
    for key, t in {"adv": adv, "group_ids": group_ids}.items():
        if tuple(torch.as_tensor(t).shape) != bt[:1]:
            raise ValueError(f"{key} must be [B] = {bt[:1]}, got {tuple(torch.as_tensor(t).shape)}")

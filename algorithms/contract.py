"""The hook contract, checked when a class is registered: every hook a class overrides must be
callable the way the loop calls it, so a mismatch fails in one line before any model loads.

The loop's calls (B completions, T positions; see algorithms/base.py):

    bind(group_size=G, max_new_tokens=L, max_prompt_len=P)
    shape_rewards(rewards, lengths, truncated)
    filter_groups(rewards, group_ids)
    advantages(rewards, group_ids)
    loss_normalizer(adv, mask, group_ids)
    policy_loss(logp, old_logp, adv, mask, group_ids, normalizer=z, ref_logp=ref)
    validate()

`advantages` may also take `lengths=` (completion lengths [B]: the model's own tokens, a search
episode's injected passages left out, as in shape_rewards; e.g. OPO's length-weighted
baseline): the loop passes them when the signature accepts them (`advantage_lengths`).

`loss_normalizer` may name `logp` and `old_logp` keywords: the loop then scores the mini-batch
once more without gradient, with the weights the mini-batch is about to update, and passes those
per-token log-probs [B, T] as `logp` and the behaviour policy's as `old_logp` (Clip-Cov and
KL-Cov select tokens by a covariance of A and log π over the mini-batch). Its return may then be a dict: tensors in it whose first dimension is the
mini-batch's row count are cut to each micro-batch's rows, the rest passes unchanged, so a
per-token selection made over the whole mini-batch reaches every micro-batch intact.

`policy_loss` may leave out either keyword. Without `normalizer` it is a whole-mini-batch loss:
the loop then gives it each mini-batch as one micro-batch (train.micro_batch_size does not
apply) and says so once. Without `ref_logp` the algorithm cannot use a reference policy
(a `kl_coef` > 0 is an error at `algorithms.get`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

# hook -> (positional arguments the loop passes, keyword arguments it passes)
CALLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bind": ((), ("group_size", "max_new_tokens", "max_prompt_len")),
    "validate": ((), ()),
    "shape_rewards": (("rewards", "lengths", "truncated"), ()),
    "filter_groups": (("rewards", "group_ids"), ()),
    "advantages": (("rewards", "group_ids"), ()),
    "loss_normalizer": (("adv", "mask", "group_ids"), ()),
    "policy_loss": (("logp", "old_logp", "adv", "mask", "group_ids"), ()),
}
OPTIONAL_LOSS_KEYWORDS = ("normalizer", "ref_logp")
NORMALIZER_LOGP_KEYWORDS = ("logp", "old_logp")


class AlgorithmContractError(TypeError):
    """A hook whose signature does not fit the loop's call."""


@dataclass(frozen=True)
class LossKeywords:
    """Which optional keywords an algorithm's policy_loss accepts."""

    normalizer: bool = True
    ref_logp: bool = True


def expected(hook: str) -> str:
    args, kwargs = CALLS[hook]
    extra = ", *, normalizer=None, ref_logp=None" if hook == "policy_loss" else ""
    inner = ", ".join(["self", *args, *(("*",) + kwargs if kwargs else ())]) + extra
    return f"{hook}({inner})"


def _fits(fn: Callable, n_args: int, kwargs: tuple[str, ...]) -> str | None:
    """None when fn(self, *n_args placeholders, **kwargs) binds, else why not."""
    try:
        inspect.signature(fn).bind(object(), *([None] * n_args), **dict.fromkeys(kwargs))
    except TypeError as err:
        return str(err)
    return None


def check_hooks(cls: type, base: type) -> tuple[LossKeywords, bool, tuple[str, ...]]:
    """Check every hook `cls` overrides against the loop's call; returns what policy_loss takes,
    whether advantages takes lengths= and which of `logp` / `old_logp` loss_normalizer names.
    Raises AlgorithmContractError in one line naming the hook, the signature found and the one
    expected."""
    label = f"{cls.__module__}.{cls.__qualname__}"
    for hook, (args, kwargs) in CALLS.items():
        fn = getattr(cls, hook, None)
        if fn is getattr(base, hook):
            continue
        if isinstance(inspect.getattr_static(cls, hook), (staticmethod, classmethod)) or not callable(fn):
            raise AlgorithmContractError(
                f"{label}.{hook} must be a plain method; expected {expected(hook)}"
            )
        why = _fits(fn, len(args), kwargs)
        if why is not None:
            raise AlgorithmContractError(
                f"{label}.{hook}{inspect.signature(fn)} cannot be called as the loop calls it "
                f"({why}); expected {expected(hook)}"
            )
    loss = cls.policy_loss
    n = len(CALLS["policy_loss"][0])
    keywords = LossKeywords(**{kw: _fits(loss, n, (kw,)) is None for kw in OPTIONAL_LOSS_KEYWORDS})
    takes_lengths = _fits(cls.advantages, len(CALLS["advantages"][0]), ("lengths",)) is None
    # named explicitly (not through **kwargs): it costs the loop a no-grad pass per mini-batch
    named = inspect.signature(cls.loss_normalizer).parameters
    takes_logp = tuple(kw for kw in NORMALIZER_LOGP_KEYWORDS if kw in named)
    return keywords, takes_lengths, takes_logp

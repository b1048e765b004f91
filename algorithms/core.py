"""Pure tensor functions shared by every algorithm (the counterpart of verl's `core_algos`).

Shapes: B completions, T completion positions. `mask[B, T]` marks the completion tokens that
enter the loss (bool or 0/1). `group_ids[B]` are integer labels of the prompt each completion
answers; groups may be non-contiguous and of unequal size.

Nothing here reads a config, touches a model or calls `.item()`.
"""

from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0
"""|log r| is clamped to this before exp(), as in verl (exp(20) ~ 5e8); beyond it the gradient
is 0. Real updates never get there; it keeps a corrupted token from producing inf."""

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# ----------------------------------------------------------------------------- groups


def group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense group index per completion and the size of each group.

    Returns (inverse[B] long in [0, n_groups), counts[n_groups] long).
    """
    _, inverse, counts = torch.unique(
        torch.as_tensor(group_ids), return_inverse=True, return_counts=True
    )
    return inverse, counts


def _as_float(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def group_mean(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Mean of `values[B]` over each completion's group, broadcast back to [B]."""
    values = _as_float(values)
    inverse, counts = group_index(group_ids)
    inv = inverse.to(values.device)
    sums = torch.zeros(len(counts), dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, inv, values)
    return (sums / counts.to(values))[inv]


def group_std(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Unbiased (n - 1) standard deviation of `values[B]` over each group, broadcast to [B].

    A group of one has no spread to measure: its std is defined as 0 (torch.std would be NaN).
    """
    values = _as_float(values)
    inverse, counts = group_index(group_ids)
    inv = inverse.to(values.device)
    dev2 = (values - group_mean(values, group_ids)) ** 2
    ss = torch.zeros(len(counts), dtype=values.dtype, device=values.device)
    ss = ss.index_add(0, inv, dev2)
    var = ss / (counts - 1).clamp(min=1).to(values)
    return var.sqrt()[inv]


def group_all_equal(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """bool[B]: True where every value in the completion's group is the same (max == min).

    Exact comparison, not `std == 0`: np.std([0.1] * 3) is 1.4e-17, not 0.
    """
    values = _as_float(values)
    inverse, counts = group_index(group_ids)
    n = len(counts)
    inv = inverse.to(values.device)
    gmax = torch.full((n,), -torch.inf, dtype=values.dtype, device=values.device)
    gmin = torch.full((n,), torch.inf, dtype=values.dtype, device=values.device)
    gmax = gmax.scatter_reduce(0, inv, values, reduce="amax")
    gmin = gmin.scatter_reduce(0, inv, values, reduce="amin")
    return (gmax == gmin)[inv]


# ----------------------------------------------------------------------------- token losses


def masked_log_ratio(logp: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(p / q) = logp - other on mask tokens, exactly 0 elsewhere; clamped to ±20. Shape [B, T].

    Masking happens *before* any exp(), so padding holding -inf/NaN/garbage log-probs gives
    neither a NaN loss nor a NaN gradient (torch.where routes a zero gradient to them).
    The result is at least float32 (bf16 log-probs are upcast), so the whole loss is.
    """
    dtype = torch.promote_types(logp.dtype, torch.float32)
    logp, other = logp.to(dtype), other.to(dtype)
    diff = torch.where(mask.bool(), logp - other, torch.zeros_like(logp))
    return diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def clipped_surrogate(
    log_ratio: torch.Tensor,
    adv: torch.Tensor,
    clip_low: float | None,
    clip_high: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped per-token loss  ℓ = max(-r·A, -clip(r, 1 - clip_low, 1 + clip_high)·A).

    (= -min(r·A, clip(r)·A)). `None` leaves that side unclipped (WAPO: clip_low=None).

    Args:
        log_ratio: [B, T] log r = logp - old_logp (already masked, see `masked_log_ratio`).
        adv: [B] one advantage per completion, broadcast over tokens.
    Returns:
        loss_mat [B, T]; clipped_low [B, T] bool; clipped_high [B, T] bool.
        "Clipped" follows verl's `pg_clipfrac` (`pg_losses2 > pg_losses1`): the clipped branch
        is the one max() selects *and* it changes the value, so that token's gradient is 0.
        Low: r < 1 - clip_low with A < 0. High: r > 1 + clip_high with A > 0.
    """
    ratio = torch.exp(log_ratio)
    a = adv.to(ratio.dtype)[:, None]
    lo = None if clip_low is None else 1.0 - clip_low
    hi = None if clip_high is None else 1.0 + clip_high
    loss_unclipped = -a * ratio
    clipped_ratio = ratio if lo is None and hi is None else torch.clamp(ratio, lo, hi)
    loss_clipped = -a * clipped_ratio
    loss_mat = torch.maximum(loss_unclipped, loss_clipped)
    active = loss_clipped > loss_unclipped
    below = ratio < lo if lo is not None else torch.zeros_like(active)
    above = ratio > hi if hi is not None else torch.zeros_like(active)
    return loss_mat, active & below, active & above


def k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator  exp(z) - z - 1  (>= 0, elementwise).

    With z = logp - old_logp (tokens sampled from π_old) it estimates KL(π_old ‖ π_θ);
    with z = ref_logp - logp it is GRPO's per-token KL to the reference (verl `low_var_kl`
    without its ±10 clamp, TRL's `per_token_kl`).
    """
    return torch.expm1(log_ratio) - log_ratio


# ----------------------------------------------------------------------------- aggregation


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over mask tokens; 0 (not NaN) when the mask is empty."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1)


def default_normalizer(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The denominator `agg_loss` uses for `mode` when computed from this whole mini-batch.

    token-mean: Σ m (tokens). seq-mean-token-mean: number of sequences with at least one token.
    seq-mean-token-sum-norm has no data-derived default (it is a constant such as B·L).
    """
    m = mask.to(torch.get_default_dtype())
    if mode == "token-mean":
        return m.sum()
    if mode == "seq-mean-token-mean":
        return (m.sum(-1) > 0).to(m.dtype).sum()
    raise ValueError(f"agg mode {mode!r} has no default normalizer; pass one explicitly")


def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    normalizer: torch.Tensor | float,
) -> torch.Tensor:
    """Aggregate a per-token loss [B, T] into a scalar; the one helper every loss uses.

        loss = Σ_i w_i Σ_t ℓ[i, t]·m[i, t] / normalizer
        token-mean               w_i = 1         normalizer: Σ m over the mini-batch    (DAPO)
        seq-mean-token-mean      w_i = 1/|o_i|   normalizer: sequences in the mini-batch (GRPO)
        seq-mean-token-sum-norm  w_i = 1         normalizer: a constant, e.g. B·L     (Dr.GRPO)

    The mode names are verl's `agg_loss` modes. Unlike verl, the denominator is an argument:
    the loop computes it once per mini-batch and passes it to every micro-batch, so the sum of
    micro-batch losses (and gradients) equals the mini-batch's. w_i only needs sequence i, so it
    is local to any micro-batch. A zero normalizer (nothing to normalise: the numerator is 0
    too) is replaced by 1, so an all-masked batch gives exactly 0 and no NaN.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown agg mode {mode!r}; valid: {', '.join(AGG_MODES)}")
    m = mask.to(loss_mat.dtype)
    per_seq = (loss_mat * m).sum(-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / m.sum(-1).clamp(min=1)
    z = torch.as_tensor(normalizer, dtype=loss_mat.dtype, device=loss_mat.device)
    z = torch.where(z > 0, z, torch.ones_like(z))
    return per_seq.sum() / z


def policy_stats(
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    clipped_low: torch.Tensor,
    clipped_high: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The statistics every `policy_loss` returns, all detached, over this call's mask tokens.

    clipfrac_low / clipfrac_high: fraction of mask tokens clipped on that side (see
    `clipped_surrogate`); their sum is verl's `pg_clipfrac`.
    approx_kl: mean k3 = r - 1 - log r, an estimate of KL(π_old ‖ π_θ) that is >= 0 token by
    token (verl's `ppo_kl` is k1 = mean(old_logp - logp), which can be negative).
    tokens: number of mask tokens; weight micro-batch stats by it to combine them.
    """
    with torch.no_grad():
        m = mask.bool()
        return {
            "clipfrac_low": masked_mean(clipped_low.to(log_ratio.dtype), m),
            "clipfrac_high": masked_mean(clipped_high.to(log_ratio.dtype), m),
            "approx_kl": masked_mean(k3(log_ratio), m),
            "tokens": m.sum().to(log_ratio.dtype),
        }

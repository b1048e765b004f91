"""The update forward (train.forward=native): teacher-forced logits of sampled completions through
the native layers, with autograd. What rlvr/update/scoring.py calls for Llama/Qwen2 on CPU."""

from __future__ import annotations

import torch

from rlvr.native.layers import (
    Dims,
    decoder_layer,
    final_logits,
    fused_layer_weights,
    prefix_layers,
    rope_tables,
    unique_prompts,
)


def completion_logits(model, prompt_ids, prompt_mask, completion_ids) -> torch.Tensor:
    """Teacher-forced logits [N, T, V] predicting completion_ids after left-padded prompts: what
    the transformers forward over the concatenation gives (position ids following the padding),
    with autograd. Rows sharing a prompt share one pass over it; its keys, values and last hidden
    state are indexed into every row, so their gradients add up over the rows."""
    d = Dims.of(model.config)
    S = completion_ids.shape[1] - 1  # the last completion token predicts nothing scored here
    dev = prompt_ids.device
    layers = fused_layer_weights(model)
    unique_ids, unique_mask, row_of = unique_prompts(prompt_ids, prompt_mask)
    hidden, prefix_kv = prefix_layers(model, layers, unique_ids, unique_mask, d)
    # the last prompt position predicts the first completion token
    first = hidden[:, -1:].index_select(0, row_of)
    if S == 0:
        return final_logits(model, first)
    x = model.model.embed_tokens(completion_ids[:, :S]).float()
    positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(S, device=dev)
    cos, signed_sin = rope_tables(model, x, positions)
    key_mask = prompt_mask.to(torch.int64).contiguous()
    # index_select, not k[row_of]: its backward (index_add_) sums the rows' gradients in a fixed
    # order, while advanced indexing's accumulating index_put_ varies run to run on CPU
    for w, (k, v) in zip(layers, prefix_kv, strict=True):
        past = (k.index_select(0, row_of), v.index_select(0, row_of))
        x, _, _ = decoder_layer(x, w, cos, signed_sin, None, d, past=past, prompt_mask=key_mask)
    x = torch.cat([first, x], 1)
    return final_logits(model, x)

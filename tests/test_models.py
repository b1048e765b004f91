"""Tiny model families: build, save, reload as standard HF checkpoints, generate; tokenizer round-trip."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.models import (
    FAMILIES,
    TinySpec,
    build_tiny_model,
    load_model_and_tokenizer,
    save_checkpoint,
)

SUITE_TEXT = "Q: 94+45-88= 94+45=139 139-88=51 \\boxed{51}\nAnn lives in Oslo.\n\tOslo is in Norway. É 日本 {}"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for family in FAMILIES:
        model, tok = build_tiny_model(
            family, TinySpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
        )
        path = tmp_path_factory.mktemp(family)
        save_checkpoint(model, tok, path)
        out[family] = (model, path)
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_save_reload_generate(checkpoints, family):
    model, path = checkpoints[family]
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert reloaded.config.model_type == family
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    tok.padding_side = "left"
    enc = tok(["Q: 1+2=", "Q: 10+20-3="], return_tensors="pt", padding=True)
    out = reloaded.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 2 and enc.input_ids.shape[1] < out.shape[1] <= enc.input_ids.shape[1] + 5
    # the same logits before and after the round trip
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, reloaded(**enc).logits)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tokenizer_round_trips_suite_text(checkpoints, family):
    _, tok = load_model_and_tokenizer(checkpoints[family][1])
    ids = tok(SUITE_TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(SUITE_TEXT.encode("utf-8"))  # one token per byte
    assert tok.decode(ids) == SUITE_TEXT


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_tokenizer_round_trips_arbitrary_text(text):
    _, tok = build_tiny_model(
        "gpt2", TinySpec(hidden_size=8, num_layers=1, num_heads=1, intermediate_size=8)
    )
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_unknown_family_names_the_valid_ones():
    with pytest.raises(ValueError, match="qwen2"):
        build_tiny_model("mamba")


def test_missing_local_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_and_tokenizer(tmp_path / "nope")

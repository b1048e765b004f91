"""The engine registry (rlvr/engines.py): the one place an engine choice is made. `auto` picks as
it always did, a name no engine has fails in one line listing the names (when the config loads,
or, where the config lists modules that may register it, when the stage resolves it), and an
engine that cannot run a model or a use says why. Fast: nothing trains."""

from pathlib import Path

import pytest

import rlvr.train
from rlvr import engines
from rlvr.cli import main
from rlvr.config import ConfigError, load_config
from rlvr.extensions import import_modules
from rlvr.models import build_tiny_model, save_checkpoint

EXAMPLE = Path(__file__).resolve().parent / "ext_engine_example.py"
BUILT_IN = ["auto", "native", "hf", "vllm"]


def refuse():
    raise AssertionError("the model was loaded, though the choice does not depend on it")


@pytest.fixture(scope="module")
def models():
    return {family: build_tiny_model(family)[0] for family in ("qwen2", "llama", "gpt2")}


def test_auto_is_native_where_it_runs_the_model_else_hf(models):
    from peft import LoraConfig, get_peft_model

    def auto(model, use=engines.ROLLOUT):
        return engines.resolve("rollout.engine", "auto", lambda: model, use).name

    assert auto(models["qwen2"]) == auto(models["llama"]) == "native"
    assert auto(models["gpt2"]) == "hf"
    assert auto(models["qwen2"], engines.LM_EVAL) == auto(models["qwen2"], engines.EVAL_EPISODES) == "native"
    lora = get_peft_model(build_tiny_model("qwen2")[0], LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert auto(lora) == "hf"
    # a named engine that runs any model is chosen without looking at it
    assert engines.resolve("eval.backend", "hf", refuse, engines.LM_EVAL).name == "hf"


def test_an_engine_that_cannot_run_the_model_says_why(models):
    native = engines.get_engine("native")
    assert "model type 'gpt2' is not one of ['llama', 'qwen2']" in native.why_not_model(models["gpt2"])
    assert native.why_not_model(models["qwen2"]) is None
    for field in engines.CHOICE_FIELDS:
        with pytest.raises(engines.EngineError, match=r"^the native decoder cannot run this model: model type "
                           r"'gpt2' .*; use rollout.engine=hf / eval.backend=hf \(auto falls back to hf by itself\)$"):
            engines.resolve(field, "native", lambda: models["gpt2"])


def test_an_engine_that_cannot_serve_a_use_says_why_before_any_model_loads():
    # lm-eval's vLLM model is single-turn: search episodes evaluate on the loaded checkpoint
    with pytest.raises(engines.EngineError, match=r"^eval.backend=vllm cannot run search episodes in evaluation: "
                       r"vLLM samples the training loop's policy only.*; use eval.backend=auto\|native\|hf$"):
        engines.resolve("eval.backend", "vllm", refuse, engines.EVAL_EPISODES)
    # SFT samples its model in hand: such an engine gives way to auto there
    assert engines.choice_outside_training("rollout.engine", "vllm") == "auto"
    assert engines.choice_outside_training("rollout.engine", "native") == "native"


@pytest.mark.parametrize("field", engines.CHOICE_FIELDS)
def test_a_name_no_engine_has_fails_in_one_line_when_the_config_loads(field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{field}=nope"])
    message = str(err.value)
    assert message == (f"{field}='nope' names no engine; the engines: {engines.engine_names()} (one of "
                       "your own: register_engine(...) in a module listed in algorithm.modules)")
    assert all(name in message for name in BUILT_IN) and "\n" not in message


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rlvr.data import write_suite

    root = tmp_path_factory.mktemp("tiny")
    save_checkpoint(*build_tiny_model("qwen2"), root / "ckpt")
    write_suite("math", root / "data", seed=0, n_train=16, n_test=4)
    return root


@pytest.mark.parametrize("field", engines.CHOICE_FIELDS)
def test_with_modules_listed_the_stage_checks_the_name_once_they_are_imported(capsys, monkeypatch, tiny, field):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad engine name was reported")

    monkeypatch.setattr(rlvr.train, "load_model_and_tokenizer", no_model)
    modules = f"algorithm.modules=[{EXAMPLE}]"
    section, key = field.split(".")
    cfg = load_config(None, [f"{field}=nope", modules])  # loads: a listed module may register the name
    assert getattr(getattr(cfg, section), key) == "nope"
    argv = ["train", f"model.name_or_path={tiny / 'ckpt'}", f"data.train={tiny / 'data' / 'train.jsonl'}",
            f"output_dir={tiny / 'run'}", "logging.wandb=false", modules, f"{field}=nope"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"rlvr train: error: {field}='nope' names no engine; the engines: ['auto', 'native', 'hf', "
                   "'vllm', 'counting_example'] (one of your own: register_engine(...) in a module listed in "
                   "algorithm.modules)")


def test_an_engine_of_your_own_registers_once_under_a_new_name():
    (module,) = import_modules([str(EXAMPLE)])
    assert import_modules([str(EXAMPLE)]) == [module]  # the same file again: not re-run
    assert engines.get_engine("counting_example").sampler is module.sampler
    assert "counting_example" in engines.engine_names()
    with pytest.raises(ValueError, match="'hf' is already registered"):
        engines.register_engine(engines.Engine(name="hf", title="another", sampler=module.sampler))
    with pytest.raises(ValueError, match="not 'auto'"):
        engines.register_engine(engines.Engine(name="auto", title="another", sampler=module.sampler))

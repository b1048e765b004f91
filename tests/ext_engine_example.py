"""An engine of your own in one file, registered from outside rlvr: `counting_example` samples
with transformers generate, as rlvr's hf engine does (the same seeded draws), and counts what it
draws, so a test can tell it ran. A run config names it:

    algorithm: {modules: [tests/ext_engine_example.py]}
    rollout: {engine: counting_example}   # the training loop's rollouts
    eval: {backend: counting_example}     # lm-eval's model
"""

from lm_eval.models.huggingface import HFLM

from rlvr.engines import Engine, register_engine
from rlvr.rollout.hf import HFRolloutEngine

DRAWS = {"rollouts": 0, "lm_eval_batches": 0}  # completions sampled; lm-eval generate batches


class CountingSampler(HFRolloutEngine):
    def generate(self, prompts, n, seeds):
        DRAWS["rollouts"] += len(prompts) * n
        return super().generate(prompts, n, seeds)


class CountingHFLM(HFLM):
    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        DRAWS["lm_eval_batches"] += 1
        return super()._model_generate(context, max_length, stop, **generation_kwargs)


def sampler(model, tok, rollout_cfg, policy=None, **_):
    """The registry's contract: (model, tokenizer, rollout config, the trainer's policy or None)."""
    return CountingSampler(model, tok, rollout_cfg, autocast_bf16=bool(policy and policy.autocast))


def lm(cfg, checkpoint, load):
    """(run config, checkpoint dir, load() -> the checkpoint's model and tokenizer) -> lm-eval LM."""
    model, tok = load()
    return CountingHFLM(pretrained=model, tokenizer=tok, batch_size=cfg.eval.batch_size)


register_engine(Engine(name="counting_example", title="counted transformers generate", sampler=sampler, lm_eval=lm))

"""The hook contract is checked when a class registers (algorithms/contract.py): a hook that the
loop cannot call fails in one line naming it, before any model loads; a natural outside file
(not a dataclass, no normalizer= / ref_logp=) is accepted as a whole-mini-batch loss."""

from pathlib import Path

import pytest
import torch

import algorithms
from algorithms.contract import AlgorithmContractError

NATURAL = Path(__file__).resolve().parent / "natural_algo.py"


def test_natural_file_registers_with_class_attribute_hparams_and_a_whole_batch_loss():
    (module,) = algorithms.import_modules([str(NATURAL)])
    cls = algorithms.get_class("natural_reinforce")
    assert cls.loss_keywords.normalizer is False and cls.loss_keywords.ref_logp is False
    algo = algorithms.get("natural_reinforce", scale=2.0)  # a class attribute became an hparam
    assert algo.scale == 2.0 and cls.hparam_defaults() == {"scale": 1.0}
    # group 0: rewards 1, 0 (mean 0.5); group 1: 1, 1 (mean 1); scale 2 -> A = 1, -1, 0, 0
    adv = algo.advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]
    with pytest.raises(algorithms.HyperparameterError, match="no hyper-parameter 'clip'"):
        algorithms.get("natural_reinforce", clip=0.1)


def _define(name, body):
    namespace = {"algorithms": algorithms, "torch": torch}
    exec(f"@algorithms.register({name!r})\nclass C(algorithms.Algorithm):\n" + body, namespace)


@pytest.mark.parametrize(
    "body, hook, why",
    [
        ("    def advantages(self, rewards):\n        return rewards\n", "advantages", "too many positional arguments"),
        ("    def policy_loss(self, logp, old_logp, adv):\n        return logp.sum(), {}\n", "policy_loss", "too many positional arguments"),
        ("    def loss_normalizer(self, adv, mask, group_ids, extra):\n        return mask.sum()\n", "loss_normalizer", "missing a required argument: 'extra'"),
        ("    def bind(self, group_size):\n        return self\n", "bind", "unexpected keyword argument 'max_new_tokens'"),
        ("    @staticmethod\n    def advantages(rewards, group_ids):\n        return rewards\n", "advantages", "must be a plain method"),
    ],
)
def test_a_hook_the_loop_cannot_call_fails_at_registration_in_one_line(body, hook, why):
    name = f"bad_{hook}_{abs(hash(body)) % 10_000}"
    with pytest.raises(AlgorithmContractError) as err:
        _define(name, body)
    message = str(err.value)
    assert "\n" not in message and f".{hook}" in message and why in message
    assert f"expected {hook}(self" in message
    assert name not in algorithms.available()  # nothing half-registered


def test_a_keyword_only_extra_with_a_default_is_fine_and_kwargs_take_everything():
    _define("ok_kwargs", "    def policy_loss(self, logp, old_logp, adv, mask, group_ids, **kw):\n        return logp.sum(), {}\n")
    assert algorithms.get_class("ok_kwargs").loss_keywords.normalizer is True


def test_a_reference_policy_needs_ref_logp_in_policy_loss():
    _define("kl_without_ref", "    kl_coef = 0.1\n    def policy_loss(self, logp, old_logp, adv, mask, group_ids, *, normalizer=None):\n        return logp.sum(), {}\n")
    with pytest.raises(algorithms.HyperparameterError, match="takes no ref_logp"):
        algorithms.get("kl_without_ref")
    assert algorithms.get("kl_without_ref", kl_coef=0.0).needs_reference is False


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "wapo"])
def test_group_relative_algorithms_reject_groups_of_one(name):
    with pytest.raises(ValueError, match=r"rollout.group_size=1 gives every completion a zero advantage"):
        algorithms.get(name).bind(group_size=1, max_new_tokens=8, max_prompt_len=8)
    algorithms.get(name).bind(group_size=2, max_new_tokens=8, max_prompt_len=8)

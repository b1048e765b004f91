"""An algorithm defined outside the package, imported the way a run config names it
(`algorithm.modules: [path/to/file.py]` -> `algorithms.import_modules`), then used by name."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import algorithms

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "ext_algo_example.py"
README = HERE.parent / "algorithms" / "README.md"


def test_import_by_file_path_then_get_computes_a_loss():
    (module,) = algorithms.import_modules([str(EXAMPLE)])
    assert "rloo_example" in algorithms.available()
    algo = algorithms.get("rloo_example", clip_ratio=0.1)
    assert type(algo) is module.RLOOExample and algo.clip_ratio == 0.1

    # One group of four, rewards 1, 0, 0, 1: A = R - mean of the other three
    #   R = 1: 1 - 1/3 = 2/3;  R = 0: 0 - 2/3 = -2/3.  A lone completion: 0.
    gids = torch.tensor([7, 7, 7, 7])
    adv = algo.advantages(torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64), gids)
    torch.testing.assert_close(adv, torch.tensor([2, -2, -2, 2], dtype=torch.float64) / 3)
    lone = algo.advantages(torch.tensor([5.0]), torch.tensor([1]))
    assert lone.tolist() == [0.0]

    # r = 1 everywhere, lengths 2, 1, 1, 2 (6 tokens): ℓ = -A per token;
    # token-mean = (-4/3 + 2/3 + 2/3 - 4/3) / 6 = -2/9.
    logp = torch.zeros(4, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1]])
    loss, stats = algo.policy_loss(logp, logp.detach(), adv, mask, gids)
    assert loss.item() == pytest.approx(-2 / 9, abs=1e-12)
    assert stats["tokens"].item() == 6 and stats["clipfrac_high"].item() == 0.0
    loss.backward()
    # dloss/dlogp = -A·r / 6 on mask tokens: ∓(2/3)/6 = ∓1/9
    expected = torch.tensor([[-1, -1], [1, 0], [1, 0], [-1, -1]], dtype=torch.float64) / 9
    torch.testing.assert_close(logp.grad, expected)


def test_importing_the_same_file_again_runs_it_once(monkeypatch):
    first = algorithms.import_modules([str(EXAMPLE)])[0]
    again = algorithms.import_modules(str(EXAMPLE))[0]  # a single string is accepted too
    assert again is first
    # the same file by dotted name (its folder on sys.path) is recognised, not re-executed
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.delitem(sys.modules, "ext_algo_example", raising=False)
    assert algorithms.import_modules(["ext_algo_example"])[0] is first


def test_missing_file_or_module_is_a_clear_import_error():
    with pytest.raises(ImportError, match="nope_missing.py"):
        algorithms.import_modules(["configs/nope_missing.py"])
    with pytest.raises(ImportError, match="no_such_pkg_xyz"):
        algorithms.import_modules(["no_such_pkg_xyz.my_algo"])


def test_a_module_that_fails_reports_the_spec_and_the_cause(tmp_path):
    bad = tmp_path / "steals_a_name.py"
    bad.write_text(
        "import algorithms\n\n"
        "@algorithms.register('grpo')\n"
        "class Thief(algorithms.Algorithm):\n"
        "    pass\n"
    )
    with pytest.raises(ImportError, match=r"steals_a_name\.py.*already registered"):
        algorithms.import_modules([str(bad)])
    assert algorithms.get_class("grpo").__name__ == "GRPO"
    assert not any("steals_a_name" in name for name in sys.modules)


def test_readme_worked_example_is_this_file():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert EXAMPLE.read_text() in blocks

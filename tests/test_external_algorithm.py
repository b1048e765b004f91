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
    assert "median_baseline_example" in algorithms.available()
    algo = algorithms.get("median_baseline_example", clip_ratio=0.1)
    assert type(algo) is module.MedianBaselineExample and algo.clip_ratio == 0.1

    # Group 7 (four completions), rewards 1, 0, 0, 0.5: sorted 0, 0, 0.5, 1, an even group, so
    #   the median is the mean of the two middle ones, (0 + 0.5) / 2 = 0.25 (the mean is 0.375):
    #   A = 1 - 0.25 = 0.75, 0 - 0.25 = -0.25, -0.25, 0.5 - 0.25 = 0.25.
    # Group 3 (three, interleaved), rewards 2, 0, 5: median 2 -> A = 0, -2, 3.
    gids = torch.tensor([7, 7, 7, 7])
    adv = algo.advantages(torch.tensor([1.0, 0.0, 0.0, 0.5], dtype=torch.float64), gids)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, 0.25], dtype=torch.float64))
    odd = algo.advantages(torch.tensor([2.0, 9.0, 0.0, 9.0, 5.0]), torch.tensor([3, 4, 3, 4, 3]))
    assert odd.tolist() == [0.0, 0.0, -2.0, 0.0, 3.0]  # group 4 (9, 9) is all equal: 0
    lone = algo.advantages(torch.tensor([5.0]), torch.tensor([1]))
    assert lone.tolist() == [0.0]

    # r = 1 everywhere, lengths 2, 1, 1, 2 (6 tokens): ℓ = -A per token;
    # token-mean = (-0.75·2 + 0.25 + 0.25 - 0.25·2) / 6 = -1.5 / 6 = -0.25.
    logp = torch.zeros(4, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1]])
    loss, stats = algo.policy_loss(logp, logp.detach(), adv, mask, gids)
    assert loss.item() == pytest.approx(-0.25, abs=1e-12)
    assert stats["tokens"].item() == 6 and stats["clipfrac_high"].item() == 0.0
    loss.backward()
    # dloss/dlogp = -A·r / 6 on mask tokens: -0.75/6 = -0.125, 0.25/6 = 1/24, -0.25/6 = -1/24
    expected = torch.tensor([[-3, -3], [1, 0], [1, 0], [-1, -1]], dtype=torch.float64) / 24
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

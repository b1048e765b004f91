"""The algorithm registry: what the shared training loop asks for, by name.

    import algorithms
    algorithms.available()                     # sorted names
    algo = algorithms.get("dapo", **hparams)   # instance; defaults overridden by hparams
    @algorithms.register("my_algo")            # one file = one algorithm
    class MyAlgo(algorithms.Algorithm): ...
    algorithms.import_modules(["my_pkg.my_algo", "path/to/file.py"])  # external algorithms

See algorithms/README.md for the contract, the table of algorithms and a worked example.
"""

import importlib
import pkgutil

from algorithms import core
from algorithms.base import Algorithm, RolloutShape
from algorithms.core import agg_loss
from algorithms.registry import (
    HyperparameterError,
    UnknownAlgorithmError,
    available,
    get,
    get_class,
    import_modules,
    register,
)

# Built-in algorithms: every other module of this package is one algorithm, and importing it runs
# its @register, so adding one is adding its file.
_INFRASTRUCTURE = {"base", "contract", "core", "registry"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _INFRASTRUCTURE and not _module.startswith("_"):
        importlib.import_module(f"algorithms.{_module}")

__all__ = [
    "Algorithm",
    "HyperparameterError",
    "RolloutShape",
    "UnknownAlgorithmError",
    "agg_loss",
    "available",
    "core",
    "get",
    "get_class",
    "import_modules",
    "register",
]

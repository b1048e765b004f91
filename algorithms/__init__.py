"""The algorithm registry: what the shared training loop asks for, by name.

    import algorithms
    algorithms.available()                     # sorted names
    algo = algorithms.get("dapo", **hparams)   # instance; defaults overridden by hparams
    @algorithms.register("my_algo")            # one file = one algorithm
    class MyAlgo(algorithms.Algorithm): ...
    algorithms.import_modules(["my_pkg.my_algo", "path/to/file.py"])  # external algorithms

See algorithms/README.md for the contract, the table of algorithms and a worked example.
"""

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

# Built-in algorithms: importing the module runs its @register.
from algorithms import dapo, dr_grpo, grpo, wapo  # noqa: E402, F401  isort: skip

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

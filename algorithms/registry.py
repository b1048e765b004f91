"""The algorithm registry: `register`, `get`, `available`, `import_modules`.

Adding an algorithm = one file with an `@register("name")` class. A file outside this package
is named in the run config (`algorithm.modules`) and imported by `import_modules` before the
registry is read, so its `@register` runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from algorithms.base import Algorithm
from algorithms.contract import check_hooks

_REGISTRY: dict[str, type[Algorithm]] = {}

A = TypeVar("A", bound=type[Algorithm])


class UnknownAlgorithmError(KeyError, ValueError):
    """`get` of a name nobody registered. A KeyError and a ValueError, to catch as either."""

    def __str__(self) -> str:  # KeyError would print the message's repr
        return str(self.args[0]) if self.args else ""


class HyperparameterError(ValueError):
    """An unknown hyper-parameter name, or a bad value, passed to `get`."""


def available() -> list[str]:
    """Sorted names of every registered algorithm."""
    return sorted(_REGISTRY)


def register(name: str) -> Callable[[A], A]:
    """Class decorator: register an `Algorithm` subclass under `name`.

    Makes the class a dataclass if it is not one itself (its annotated class attributes, and its
    plain int/float/bool/str class attributes, become hyper-parameters), checks every hook it
    overrides against the loop's calls (algorithms/contract.py: one line naming the hook, the
    signature found and the one expected), sets `cls.name`, and rejects a name already taken by
    another class.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
        raise ValueError(f"algorithm name must be an identifier-like string, got {name!r}")

    def decorator(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
            raise TypeError(f"@register({name!r}) needs a subclass of algorithms.Algorithm")
        taken = _REGISTRY.get(name)
        if taken is not None and taken is not cls:
            raise ValueError(
                f"algorithm name {name!r} is already registered by "
                f"{taken.__module__}.{taken.__qualname__}; pick another name"
            )
        if "__dataclass_fields__" not in cls.__dict__:
            _declare_plain_hparams(cls)
            cls = dataclasses.dataclass(cls)
        cls.loss_keywords, cls.advantage_lengths, cls.normalizer_logp = check_hooks(cls, Algorithm)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _declare_plain_hparams(cls: type) -> None:
    """A class that is not a dataclass, with hyper-parameters as plain class attributes
    (`clip = 0.2`): annotate them, so the dataclass made of it takes them as fields. Names the
    base class defines (name, max_gen_rounds, on_short_batch, needs_groups, ...) stay attributes."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    for key, value in vars(cls).items():
        if key.startswith("_") or key in annotations or hasattr(Algorithm, key):
            continue
        if isinstance(value, bool | int | float | str):
            annotations[key] = type(value).__name__
    cls.__annotations__ = annotations


def get_class(name: str) -> type[Algorithm]:
    """The class registered under `name` (UnknownAlgorithmError listing `available()`)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}; available: {', '.join(available())}"
        ) from None


def get(name: str, **hparams: Any) -> Algorithm:
    """A new instance of algorithm `name` with its default hyper-parameters, overridden by
    `hparams`. An unknown name lists `available()`; an unknown hparam lists the valid ones."""
    cls = get_class(name)
    defaults = cls.hparam_defaults()
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "(none)"
        raise HyperparameterError(
            f"algorithm {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"valid (with defaults): {valid}"
        )
    try:
        algo = cls(**hparams)
    except (TypeError, ValueError) as err:
        raise HyperparameterError(f"algorithm {name!r}: {err}") from err
    if algo.needs_reference and not cls.loss_keywords.ref_logp:
        raise HyperparameterError(
            f"algorithm {name!r} needs a reference policy (kl_coef > 0) but its policy_loss takes "
            "no ref_logp= keyword; add `*, ref_logp=None` to policy_loss or set kl_coef=0"
        )
    return algo


# ----------------------------------------------------------------------------- external modules


def import_modules(specs: Iterable[str]) -> list[ModuleType]:
    """Import the modules a run config names so their `@register` runs; returns them.

    Each spec is a dotted module name (`my_pkg.my_algo`, found on sys.path) or a path to a .py
    file (`path/to/file.py`, relative to the working directory). Importing the same file twice,
    by either route, runs it once. Any failure raises ImportError naming the spec.
    """
    if isinstance(specs, str):
        specs = [specs]
    return [_import_one(str(spec)) for spec in specs]


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _import_one(spec: str) -> ModuleType:
    try:
        return _import_file(Path(spec)) if _is_path(spec) else _import_dotted(spec)
    except ImportError:
        raise
    except Exception as err:  # a module that fails while executing (e.g. a duplicate name)
        raise ImportError(
            f"importing algorithm module {spec!r} failed: {type(err).__name__}: {err}"
        ) from err


def _loaded_from(path: Path) -> ModuleType | None:
    """A module already imported from `path`, by any name."""
    for mod in list(sys.modules.values()):
        file = getattr(mod, "__file__", None)
        if file and Path(file).resolve() == path:
            return mod
    return None


def _import_file(path: Path) -> ModuleType:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ImportError(f"algorithm module file {str(path)!r} does not exist")
    mod = _loaded_from(path)
    if mod is not None:
        return mod
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", path.stem)
    mod_name = f"_rlvr_ext_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {str(path)!r} as a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return mod


def _import_dotted(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError) as err:
        raise ImportError(f"algorithm module {name!r} cannot be found: {err}") from err
    if found is None:
        raise ImportError(
            f"algorithm module {name!r} not found on sys.path; give a dotted name of an "
            "installed/importable module or a path to a .py file"
        )
    if found.origin and Path(found.origin).is_file():
        mod = _loaded_from(Path(found.origin).resolve())
        if mod is not None:  # already imported by file path: alias, do not run it twice
            sys.modules[name] = mod
            return mod
    return importlib.import_module(name)

"""The algorithm names a config may use, read from the source instead of imported.

Planning (rlvr/plan.py) rejects an algorithm label naming no registered algorithm,
and importing `algorithms` loads torch, which planning does without: this reads the
`@register("name")` calls of the modules `algorithms/__init__.py` imports (every module of the
package but `_INFRASTRUCTURE` and `_private` ones) and of a config's `modules:`.
tests/test_algorithm_names.py holds it equal to `algorithms.available()`.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "algorithms"


def register_calls(path: str | os.PathLike) -> set[str] | None:
    """The names a module's `register("name")` calls (decorators included) register; None when
    one names it with something else than a string literal (only running it would tell)."""
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call) and _is_register(node.func):
            arg = node.args[0] if len(node.args) == 1 and not node.keywords else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                return None
            names.add(arg.value)
    return names


def _is_register(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "register") or (
        isinstance(func, ast.Attribute) and func.attr == "register"
    )


def _infrastructure() -> set[str]:
    """algorithms/__init__.py's `_INFRASTRUCTURE`: the package's modules that are no algorithm."""
    for node in ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_INFRASTRUCTURE" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise RuntimeError("algorithms/__init__.py no longer defines _INFRASTRUCTURE: update rlvr/algorithm_names.py")


def builtin_names() -> set[str]:
    names, skip = set(), _infrastructure()
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem not in skip and not path.stem.startswith("_"):
            found = register_calls(path)
            if found is None:
                raise RuntimeError(f"{path}: register() with a name that is not a string literal; "
                                   "rlvr/algorithm_names.py reads built-in names from the source")
            names |= found
    return names


def module_file(spec: str) -> Path | None:
    """The file of an `algorithm.modules` spec (a .py path, or a dotted name looked up on sys.path
    without importing anything), as algorithms.registry.import_modules would load it; None if
    not found."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
        return path if path.is_file() else None
    parts = spec.split(".")
    for entry in [os.getcwd(), *sys.path]:
        base = Path(entry or ".").joinpath(*parts)
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
    return None


def registered_names(modules: list[str] | tuple[str, ...] = ()) -> set[str] | None:
    """Every name `algorithms.available()` would list once `modules` are imported; None when a
    module's names cannot be read without running it (not found, or a computed name)."""
    names = builtin_names()
    for spec in modules:
        path = module_file(str(spec))
        found = register_calls(path) if path is not None else None
        if found is None:
            return None
        names |= found
    return names

"""Your own algorithms, suites, engines and reports: the matrix's `modules:` list, loaded by name.

A module names itself by a dotted name (found on sys.path) or a .py path. Every stage imports the
whole list before it reads a registry (the run config's `algorithm.modules`). Planning imports only
the modules that register a suite or a report (`register_suite(...)`, `register_report(...)` in
their source): it needs their names and outputs, and those modules import no torch; the names of
algorithms are read from the source instead (rlvr/algorithm_names.py), so planning stays light.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from rlvr.algorithm_names import module_file

# the registering calls that make planning import a module (they change what the plan holds)
PLANNING_REGISTERS = ("register_suite", "register_report")


def import_modules(specs: list[str] | tuple[str, ...]) -> list[ModuleType]:
    """Import each spec once (by either route), so its registrations run; ImportError names it."""
    return [_import_one(str(spec)) for spec in specs]


def import_planning_modules(specs: list[str] | tuple[str, ...]) -> list[ModuleType]:
    """The modules of `specs` whose source registers a suite or a report, imported."""
    return import_modules([s for s in specs if _registers_for_planning(str(s))])


def _registers_for_planning(spec: str) -> bool:
    path = module_file(spec)
    if path is None:
        raise ImportError(f"modules: {spec!r} is neither a .py file nor a module on sys.path")
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in PLANNING_REGISTERS:
                return True
    return False


def _import_one(spec: str) -> ModuleType:
    path = module_file(spec)
    if path is None:
        raise ImportError(f"modules: {spec!r} is neither a .py file nor a module on sys.path")
    path = path.resolve()
    for mod in list(sys.modules.values()):  # already imported from this file, by any name
        if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == path:
            return mod
    if not (spec.endswith(".py") or "/" in spec or "\\" in spec):
        return importlib.import_module(spec)
    stem, digest = re.sub(r"\W", "_", path.stem), hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"_rlvr_ext_{stem}_{digest}"  # the name algorithms.import_modules gives the same file
    loader_spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = mod  # dataclasses look their module up while the file executes
    try:
        loader_spec.loader.exec_module(mod)
    except BaseException as err:
        sys.modules.pop(name, None)
        raise ImportError(f"importing module {spec!r} failed: {type(err).__name__}: {err}") from err
    return mod

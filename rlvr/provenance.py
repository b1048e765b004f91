"""Which code made a result: the git commit of this checkout, the one reader of it (a run
directory's provenance.json, rlvr/device.py; the header of every table, rlvr/report/header.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit(*, short: bool = False, dirty: bool = False) -> str | None:
    """HEAD of the checkout this package runs from, abbreviated with `short`; with `dirty`,
    "-dirty" appended when a tracked file has uncommitted changes. None outside a git checkout
    (an installed package) or without git."""
    try:
        head = _git("rev-parse", *(["--short"] if short else []), "HEAD")
        changed = dirty and _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if changed else "") if head else None


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()

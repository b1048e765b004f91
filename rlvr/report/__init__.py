"""The results side: every table and figure in results/, made from the runs tree alone.

    runs.py        the runs tree of one experiment, read back
    intervals.py   interval estimates (rliable's stratified bootstrap; Wilson for rates)
    plots.py       what every figure shares
    header.py      the provenance header every markdown report opens with
    leaderboard.py, stability.py, stress.py, scaling.py     one module per report
    aggregate.py   the driver: writes every report that applies (`rlvr aggregate`, the DAG's rule)

Every report is declared once, in REPORTS below: its name, the module whose
`write(runs, header, options)` builds its files, the files (each a path relative to the results
dir, with the category Snakemake's report page files it under), and when it applies. The
aggregate rule's outputs and `rlvr aggregate` both read REPORTS. `write` returns the files' contents
by the keys declared here, so a file's name is written in one place.

A table of your own is one module calling `register_report(Report(...))`
(tests/ext_report_example.py), named in the matrix's `modules:` (planning imports it, so the rule
lists its files; the rule passes it on as `rlvr aggregate --modules`). This module imports nothing
heavy: the Snakefile reads REPORTS while planning.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rlvr.report.intervals import REPS  # numpy only

if TYPE_CHECKING:  # annotations only: they import pandas
    from rlvr.report.header import Header
    from rlvr.report.runs import Run

SUITE = "{suite}"  # in an output's path or subcategory: one file per suite of the matrix


@dataclass(frozen=True)
class Options:
    """What an experiment asks of its reports: the matrix's `sweep:`, `curves:` and `baseline:`
    in the DAG, `rlvr aggregate`'s flags (and the runs it finds) by hand."""

    sweep: str | None = None  # the run-config field the algorithm labels vary (e.g. train.lr)
    curves: bool = False  # runs are evaluated at intermediate checkpoints (learning curves)
    baseline: str = "grpo"  # the algorithm probabilities of improvement are against
    reps: int = REPS  # bootstrap replications per interval


@dataclass(frozen=True)
class Output:
    """One file a report writes, relative to the results dir, and where Snakemake's report page
    shows it. A path holding "{suite}" is one file per suite."""

    path: str
    category: str
    subcategory: str | None = None

    @property
    def per_suite(self) -> bool:
        return SUITE in self.path

    def for_suite(self, suite: str) -> Output:
        """The file of one suite ("{suite}" in the subcategory too: the report page files each
        suite's figures apart)."""
        def fill(text: str | None) -> str | None:
            return text.replace(SUITE, suite) if text else text

        return Output(fill(self.path), self.category, fill(self.subcategory))


def _always(options: Options) -> bool:
    return True


@dataclass(frozen=True)
class Report:
    """A report: `module`'s `write(runs, header, options)` returns {key: text or PNG bytes} with
    the keys of `outputs` (a per-suite output's key is (key, suite)); it applies to an experiment
    when `applies(options)`, and may write fewer files than declared where the runs hold nothing
    for one (a suite without finished runs has no curves)."""

    name: str
    module: str  # dotted; a module registering its own report passes __name__
    outputs: Mapping[str, Output]
    applies: Callable[[Options], bool] = field(default=_always, compare=False)

    def files(self, suites: Iterable[str]) -> list[Output]:
        """Every file it may write for an experiment over `suites`."""
        suites = list(suites)
        return [f for out in self.outputs.values() for f in ([out.for_suite(s) for s in suites] if out.per_suite else [out])]

    def make(self, runs: list[Run], header: Header, options: Options) -> dict[str, str | bytes]:
        """{path relative to the results dir: content} of the files its `write` built."""
        built = importlib.import_module(self.module).write(runs, header, options)
        return {self._path(key): content for key, content in built.items()}

    def _path(self, key: str | tuple[str, str]) -> str:
        name, suite = key if isinstance(key, tuple) else (key, None)
        out = self.outputs.get(name)
        if out is None or out.per_suite != (suite is not None):
            declared = ", ".join(f"{k}{' (per suite)' if o.per_suite else ''}" for k, o in self.outputs.items())
            raise KeyError(f"report {self.name!r} wrote {key!r}, which it does not declare (outputs: {declared})")
        return out.for_suite(suite).path if out.per_suite else out.path


REPORTS: list[Report] = [
    Report("leaderboard", "rlvr.report.leaderboard", {
        "markdown": Output("leaderboard.md", "Leaderboard"),
        "csv": Output("leaderboard.csv", "Leaderboard"),
        "profile": Output("figures/performance_profile.png", "Leaderboard"),
    }),
    Report("stability", "rlvr.report.stability", {
        "markdown": Output("stability.md", "Stability"),
        "csv": Output("stability.csv", "Stability"),
        **{curve: Output(f"figures/{SUITE}_{curve}.png", "Training curves", SUITE)
           for curve in ("entropy", "reward", "grad_norm")},
    }),
    Report("stress", "rlvr.report.stress", {
        "markdown": Output("stress.md", "Stress"),
        "csv": Output("stress.csv", "Stress"),
        "runs_csv": Output("stress_runs.csv", "Stress"),
        **{kind: Output(f"figures/stress_{SUITE}_{kind}.png", "Stress", SUITE)
           for kind in ("collapse", "heldout", "steps", "entropy", "grad_norm", "taxonomy")},
    }, applies=lambda options: bool(options.sweep)),
    Report("scaling", "rlvr.report.scaling", {
        "markdown": Output("scaling.md", "Scaling"),
        "csv": Output("scaling.csv", "Scaling"),
        "figure": Output(f"figures/{SUITE}_scaling.png", "Scaling"),
    }, applies=lambda options: options.curves),
]


def register_report(report: Report) -> Report:
    """Add a report of your own to REPORTS (a module that re-registers its own report replaces
    it). A name taken by another module's report, a name the aggregate rule cannot use as an
    output name, or a file another report writes too is an error."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", report.name) or report.name == "manifest":
        raise ValueError(f"report name must be an identifier other than 'manifest', got {report.name!r}")
    others = [r for r in REPORTS if not (r.name == report.name and r.module == report.module)]
    for other in others:
        if other.name == report.name:
            raise ValueError(f"report name {report.name!r} is already registered by {other.module}; pick another name")
        shared = {o.path for o in other.outputs.values()} & {o.path for o in report.outputs.values()}
        if shared:
            raise ValueError(f"report {report.name!r} would write {sorted(shared)}, which report {other.name!r} writes")
    REPORTS[:] = [*others, report]
    return report


def planned_outputs(options: Options, suites: Iterable[str]) -> dict[str, list[Output]]:
    """{report name: its files} of every report that applies: the aggregate rule's outputs."""
    suites = list(suites)
    return {r.name: files for r in REPORTS if r.applies(options) and (files := r.files(suites))}

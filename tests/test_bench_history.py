"""`rlvr bench` rewrites its tables at the top of results/perf.md and keeps the measured history
below the marker (rlvr/bench.py: with_history)."""

from rlvr.bench import HISTORY_MARKER, with_history


def test_a_bench_run_replaces_its_tables_and_keeps_the_history(tmp_path):
    perf = tmp_path / "perf.md"
    assert with_history("# new\n", perf) == f"# new\n\n{HISTORY_MARKER}\n"  # a first run starts the history
    perf.write_text(f"# old tables\n| a | 1 |\n\n{HISTORY_MARKER}\n## Measured history\n- 2026-12-01: 10 min\n")
    assert with_history("# new\n", perf) == f"# new\n\n{HISTORY_MARKER}\n## Measured history\n- 2026-12-01: 10 min\n"

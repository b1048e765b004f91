"""A report defined outside `rlvr.report`: each suite × algorithm's finished runs and the mean reward
of their last step. The matrix's `modules: [tests/ext_report_example.py]` (or `rlvr aggregate
--modules tests/ext_report_example.py`) adds it to the aggregate's files. Planning imports this
file to list them, so it imports nothing heavy at the top."""

from rlvr.report import Output, Report, register_report


def write(runs, header, options):
    """{key of an output below: its text}."""
    from rlvr.report.runs import FINISHED, series

    last = {}  # (suite, algorithm) -> the last logged reward of each finished run
    for run in runs:
        reward = series(run.metrics, "rollout/reward_mean")
        if not run.is_base and run.state in FINISHED and len(reward):
            last.setdefault((run.suite, run.algorithm), []).append(float(reward.iloc[-1]))
    rows = [(suite, algo, len(v), sum(v) / len(v)) for (suite, algo), v in sorted(last.items())]
    table = ["| suite | algorithm | runs | last-step reward |", "|---|---|---|---|"]
    table += [f"| {s} | {a} | {n} | {mean:.3f} |" for s, a, n, mean in rows]
    return {
        "markdown": header.text("Last-step reward") + "\n\n" + "\n".join(table) + "\n",
        "csv": "suite,algorithm,runs,last_reward\n" + "".join(f"{s},{a},{n},{mean:.6g}\n" for s, a, n, mean in rows),
    }


register_report(Report("last_reward", __name__, {
    "markdown": Output("last_reward.md", "Last-step reward"),
    "csv": Output("last_reward.csv", "Last-step reward"),
}))

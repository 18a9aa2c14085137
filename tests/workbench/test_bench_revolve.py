"""``anode bench revolve`` (anode_workbench.bench.revolve_tradeoff): the measurement and the
report of one block, at a tiny size in this process.

References: direct autograd's gradient norm, and the Griewank–Walther count of recomputed
steps for binomial checkpointing (Griewank & Walther 2000, eq. (2)).
"""

import math

from anode_workbench.bench import revolve_tradeoff as bench


def test_benchmark_counts_evaluations_and_reports(tmp_path):
    tiny = dict(n_steps=6, channels=2, batch=1, size=4, repeats=1, method="midpoint")
    direct = bench.one_block(gradient="direct", **tiny)
    rev = bench.one_block(gradient="anode", schedule="revolve", schedule_options={"snapshots": 2}, **tiny)
    assert direct["function_evaluations"] == 6 * 2
    # n = 6 steps, s = 2 snapshots: r = 2 repetitions (beta(2, 2) = C(4, 2) = 6 >= n), so
    # r n - beta(3, 1) untaped forward steps, of which the forward pass takes n - 1 anyway
    recomputed = 2 * 6 - math.comb(3 + 1, 1) - (6 - 1)
    # two evaluations per forward, recomputed and rebuilt step, and one more per rebuilt step
    # when it is rebuilt stage by stage (chosen by memory)
    whole = (2 * 6 + recomputed) * 2
    assert rev["function_evaluations"] in (whole, whole + 6)
    assert rev["schedule"] == "revolve(2)"
    assert abs(rev["grad_norm"] - direct["grad_norm"]) <= 1e-5 * direct["grad_norm"]
    rows = [{"label": "direct", **direct}, {"label": "revolve(2)", **rev}]
    md = bench.table(rows)
    assert md.count("\n") == 3 and "| revolve(2) |" in md
    bench.plot(rows, tmp_path / "plot.png", "tiny")
    assert (tmp_path / "plot.png").stat().st_size > 1000

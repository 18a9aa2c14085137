"""The benchmark: the ``anode bench`` sweep end to end in quick mode, its pieces, and the
model training-step workload."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from anode_workbench.bench import suite, targets
from anode_workbench.bench.isolation import Isolated
from anode_workbench.bench.models import time_steps, train_step
from anode_workbench.bench.models_report import table as models_table
from anode_workbench.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# On CPU the peak is a difference of resident sizes, which the kernel sums approximately from
# per-CPU counters; the quick sizes' states (a few KiB) are below that resolution.
RESIDENT_NOISE = 2**20


def test_quick_sweep_writes_tables_and_plots_and_checks_exactness(tmp_path, monkeypatch, capsys):
    # A method that is exact by construction but differs from direct (other weights): the
    # comparison must call it out, so the "exact" column is not a constant.
    real = suite.available_methods

    def with_impostor(snapshots=(2, 4)):
        return real(snapshots) + [suite.Method("impostor", {"gradient": "direct", "seed": 1})]

    monkeypatch.setattr(suite, "available_methods", with_impostor)
    status = main(["bench", "--quick", "--out", str(tmp_path)])
    assert status == 1  # the impostor is not equal to direct

    for name in ("bench_memory_vs_nt.png", "bench_memory_vs_layers.png", "bench_time_ratio.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    with open(tmp_path / "bench_results.csv") as f:
        rows = list(csv.DictReader(f))
    md = (tmp_path / "bench_results.md").read_text()
    payload = json.loads((tmp_path / "bench_results.json").read_text())
    assert len(payload["rows"]) == len(rows)
    assert {(int(r["n_steps"]), int(r["layers"])) for r in rows} == {(1, 1), (2, 1), (2, 2)}

    methods = {r["method"] for r in rows}
    for expected in ("direct", "anode/store", "anode/recompute", "checkpoint"):
        assert expected in methods
    for r in rows:
        assert not r["error"], r
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {r['n_steps']} | {r['layers']} | "
                                                                   f"{r['method']} |"))
        exact_cell = line.split("|")[4].strip()
        if r["method"] == "impostor":
            assert r["equal"] == "False" and exact_cell == "NO"
            assert float(r["grad_rel_diff"]) > 1e-2
        elif r["exact_method"] == "True":
            assert r["equal"] == "True" and exact_cell == "yes", r
            assert float(r["grad_rel_diff"]) <= 1e-5
        else:
            assert exact_cell == "approx."
        assert float(r["peak_bytes"]) > -RESIDENT_NOISE and float(r["time_s"]) > 0
    if "torchdiffeq/odeint" in methods:
        # The same grid and arithmetic: torchdiffeq's fixed-grid Euler output equals ours.
        assert all(float(r["output_rel_diff"]) == 0.0 for r in rows if r["method"] == "torchdiffeq/odeint")
    assert "### Targets" in md and "### All measurements" in md
    # The quick sizes cannot show whether a target is met: nothing is judged.
    targets_md = md.split("### Targets")[1].split("###")[0]
    assert "**no**" not in targets_md and "| yes |" not in targets_md
    assert "n/a (quick sizes)" in targets_md
    assert "anode bench --quick" in payload["command"]
    if "torchdiffeq/odeint" not in methods:
        assert "torchdiffeq not installed (pip install anode[compare])" in capsys.readouterr().out


def test_configurations_cross_and_full():
    assert suite.configurations([1, 2, 4], [1, 2], "full") == [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)]
    cross = suite.configurations([1, 2, 4], [1, 2, 8], "cross", fixed_layers=2, fixed_steps=4)
    assert cross == [(1, 2), (2, 2), (4, 2), (4, 1), (4, 8)]
    with pytest.raises(ValueError, match="grid"):
        suite.configurations([1], [1], "diagonal")
    with pytest.raises(ValueError, match=">= 1"):
        suite.configurations([0, 1], [1], "full")


def _row(method, n_steps, layers, peak_states, seconds=1.0):
    return {"method": method, "n_steps": n_steps, "layers": layers, "state_bytes": 4,
            "peak_bytes": 4 * peak_states, "peak_states": peak_states, "time_s": seconds}


def test_growth_is_the_least_squares_slope():
    # peak = 3 + 1.0 * N_t + 2.0 * L (states): slopes 1 per step, 2 per block.
    rows = [_row("anode/recompute", n, 2, 3 + n + 4.0) for n in (1, 2, 4, 8)]
    rows += [_row("anode/recompute", 16, layers, 3 + 16 + 2.0 * layers) for layers in (1, 4, 8)]
    per_step, per_block = targets.growth(rows, "anode/recompute")
    assert per_step == pytest.approx(1.0) and per_block == pytest.approx(2.0)


def test_targets_compare_the_named_ratios():
    rows = [_row("direct", 16, 4, 100, 1.0), _row("anode/store", 16, 4, 30, 1.04),
            _row("anode/recompute", 16, 4, 24, 1.4), _row(suite.TDQ_ADJOINT, 16, 4, 20, 1.0),
            _row(suite.TDQ_ODEINT, 16, 4, 100, 0.95)]
    found = {t.name: t for t in targets.evaluate(rows)}
    mem = found["memory: anode/recompute / torchdiffeq odeint_adjoint"]
    assert mem.measured == pytest.approx(1.2) and mem.met
    assert found["memory: anode/recompute / direct"].measured == pytest.approx(0.24)
    assert found["time: anode/store / torchdiffeq odeint_adjoint"].met
    assert found["time: anode/recompute / torchdiffeq odeint_adjoint"].met is False
    assert found["time: direct / torchdiffeq odeint"].measured == pytest.approx(1 / 0.95)
    assert found["memory growth of anode/recompute with N_t (states per step)"].met is None


@pytest.mark.parametrize("isolation", ["fork", "spawn"])
def test_isolated_gives_each_call_a_fresh_process_and_reports_errors(isolation):
    with Isolated(preload=["os"], isolation=isolation, default_preload=False) as runner:
        pids = [runner.run("os:getpid") for _ in range(2)]
        assert pids[0] != pids[1] and os.getpid() not in pids
        with pytest.raises(RuntimeError, match="JSONDecodeError"):
            runner.run("json:loads", s="{")
        # a failing call does not stop the next
        assert runner.run("os:getpid") not in pids
        with pytest.raises(RuntimeError, match="killed by signal"):
            runner.run("os:abort")
    with pytest.raises(ValueError, match="isolation"):
        Isolated(isolation="thread")


def test_isolated_processes_run_with_the_named_allocator_settings():
    from anode_workbench.bench.measure import ALLOCATORS

    for name in ("fresh", "reuse"):
        with Isolated(preload=["os"], default_preload=False, allocator=name) as runner:
            for key, value in ALLOCATORS[name].items():
                assert runner.run("os:getenv", key=key) == value
    assert ALLOCATORS["reuse"]["MALLOC_TRIM_THRESHOLD_"] != ALLOCATORS["fresh"]["MALLOC_TRIM_THRESHOLD_"]
    with pytest.raises(ValueError, match="allocator"):
        Isolated(allocator="jemalloc")


def test_train_step_of_a_small_model_and_its_table(tmp_path):
    import anode.models

    res = train_step(model="sqnxt_ode_small", ode_options={"gradient": "direct"}, batch=2, size=8,
                     threads=1, save=str(tmp_path / "g.pt"))
    assert res["parameters"] == sum(p.numel() for p in anode.models.create("sqnxt_ode_small").parameters())
    assert res["peak_bytes"] >= 0
    # The saved warm-up gradient is that of an independent replica of the same step.
    torch.manual_seed(0)
    net = anode.models.create("sqnxt_ode_small", gradient="direct")
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(torch.load(tmp_path / "g.pt")["grad"], expected)

    times = time_steps(model="sqnxt_ode_small", methods={"direct": {"gradient": "direct"},
                                                         "bad": {"gradient": "nonsense"}},
                       batch=2, size=8, repeats=2, threads=1)
    assert times["direct"]["seconds"] > 0 and times["direct"]["cpu_seconds"] > 0
    assert "nonsense" in times["bad"]["error"]
    rows = [{"model": "sqnxt_ode_small", "method": "direct", "exact_method": True, "equal": True,
             "grad_rel_diff": 0.0, "mem_vs_direct": 1.0, "time_vs_direct": 1.0,
             "time_s": times["direct"]["seconds"], "images_per_s": 2 / times["direct"]["seconds"], **res}]
    assert "| `sqnxt_ode_small` |" in models_table(rows)


def test_models_and_revolve_subcommands_write_their_results(tmp_path, capsys):
    assert main(["bench", "models", "--quick", "--models", "resnet_small", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "models_results.json").read_text())
    assert payload["command"] == f"anode bench models --quick --models resnet_small --out {tmp_path}"
    assert [(r["model"], r["method"]) for r in payload["rows"]] == [("resnet_small", "plain")]
    assert "| `resnet_small` |" in (tmp_path / "models_results.md").read_text()

    assert main(["bench", "revolve", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "img" / "revolve_results.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["direct", "store", "recompute", "revolve(1)", "revolve(2)",
                                          "revolve(4)", "revolve(8)"]
    norms = [r["grad_norm"] for r in rows]
    assert max(norms) - min(norms) <= 1e-5 * max(norms)  # every schedule is exact
    assert (tmp_path / "img" / "revolve_tradeoff.png").read_bytes().startswith(PNG_MAGIC)
    assert "| revolve(2) |" in capsys.readouterr().out

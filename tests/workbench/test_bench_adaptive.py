"""``anode bench adaptive``: the quick run end to end, the workloads' gradients and the targets."""

from __future__ import annotations

import csv

import pytest
import torch

from anode_workbench.bench import adaptive
from anode_workbench.bench.adaptive_workloads import adaptive_step, build
from anode_workbench.cli import main


def test_quick_run_writes_tables_and_anode_equals_direct(tmp_path, capsys):
    status = main(["bench", "adaptive", "--quick", "--fields", "cnf", "--out", str(tmp_path)])
    assert status == 0
    with open(tmp_path / "adaptive_results.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {label for label, _, _ in adaptive.methods()}
    for label, row in rows.items():
        assert not row["error"], row
        assert int(row["function_evaluations"]) > 0 and float(row["time_s"]) > 0
        if label.startswith("anode/") or label == "direct":
            # the same accepted steps, replayed: equal to rounding
            assert row["equal"] == "True" and float(row["grad_rel_diff"]) <= 1e-5
            assert int(row["accepted_steps"]) > 0
        else:
            # torchdiffeq takes its own steps: close (tolerance-sized), never equal
            assert 0 < float(row["grad_rel_diff"]) < 0.1
    assert float(rows["torchdiffeq/odeint"]["grad_vs_odeint"]) == 0
    assert float(rows["torchdiffeq/odeint_adjoint"]["mem_vs_adjoint"]) == 1
    md = (tmp_path / "adaptive_results.md").read_text()
    assert (tmp_path / "adaptive_ratios.png").read_bytes().startswith(b"\x89PNG")
    assert "n/a (quick sizes)" in md and "Command: `anode bench adaptive --quick" in md
    assert "anode/recompute / torchdiffeq/odeint_adjoint" in capsys.readouterr().out


def test_bad_arguments_exit_2(tmp_path):
    assert main(["bench", "adaptive", "--fields", "nope", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("field", ["mlp", "cnf", "ffjord"])
def test_every_schedule_gives_the_direct_gradient(field):
    sizes = dict(batch=16, hidden=8, rtol=1e-4, atol=1e-6) | ({"dim": 3} if field == "mlp" else {})
    grads = {}
    for label, options, _ in adaptive.methods(snapshots=2, torchdiffeq=False):
        model, step, _ = build(field, **sizes, **options)
        out, stats = step()
        grads[label] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        assert stats.forward_steps > 2
    for label, g in grads.items():
        torch.testing.assert_close(g, grads["direct"], rtol=1e-5, atol=1e-6, msg=label)


def test_adaptive_step_reports_work(tmp_path):
    res = adaptive_step(field="mlp", batch=8, hidden=8, dim=2, gradient="anode", schedule="store",
                        save=str(tmp_path / "a.pt"), keep=str(tmp_path / "b.pt"))
    assert res["function_evaluations"] > 0 and res["accepted_steps"] > 0
    assert set(torch.load(tmp_path / "b.pt")) == {"output", "grad"}
    with pytest.raises(ValueError, match="memory only"):
        adaptive_step(field="mlp", measure="time")
    forward = adaptive_step(field="ffjord", batch=8, hidden=8, gradient="anode", schedule="recompute",
                            forward_only=True)
    # the forward alone: the warm-up differentiated, the measured call did not
    assert forward["function_evaluations"] > 0 and forward["peak_bytes"] >= 0


def test_targets_are_judged_from_the_recompute_row():
    rows = [{"field": "mlp", "method": "anode/recompute", "mem_vs_adjoint": 1.1, "mem_vs_odeint": 0.3,
             "time_vs_adjoint": 1.0}]
    met = [t.met for t in adaptive.evaluate(rows)]
    assert met == [True, False, True]
    assert all(t.met is None and t.unjudged for t in adaptive.evaluate(rows, quick=True))
    missing = adaptive.evaluate([{"field": "cnf", "method": "direct"}])
    assert all(t.measured is None for t in missing)
    rows = [{"field": "ffjord", "method": "anode/recompute", "mem_vs_adjoint": 1.05, "mem_vs_odeint": 0.1,
             "time_vs_adjoint": 1.0, "forward_vs_adjoint": 1.08}]
    assert [t.met for t in adaptive.evaluate(rows)] == [True, True, True, False, True]


def test_forward_ratios_come_from_forward_peaks():
    mib = 2**20
    rows = [{"field": "ffjord", "method": m, "peak_bytes": p * mib, "time_s": 1.0,
             "forward_peak_bytes": f * mib}
            for m, p, f in [("anode/recompute", 6, 3), ("torchdiffeq/odeint_adjoint", 8, 4),
                            ("torchdiffeq/odeint", 80, 40)]]
    adaptive._add_ratios(rows)
    assert rows[0]["forward_vs_adjoint"] == 0.75 and rows[0]["mem_vs_adjoint"] == 0.75
    row = {**rows[0], "exact_method": True, "equal": True, "function_evaluations": 1}
    table = adaptive.results_table([row])
    assert "| 6.0 | 0.75x | 0.07x | 3.0 | 0.75x |" in table


@pytest.mark.parametrize("solver", ["explicit_adams", "implicit_adams"])
def test_adams_solvers_give_the_direct_gradient_on_their_grid(solver):
    sizes = dict(batch=16, hidden=8, dim=3, rtol=1e-2, atol=1e-3, solver=solver, step_size=0.125, max_order=5)
    grads = {}
    for label, options, _ in adaptive.methods(snapshots=2, torchdiffeq=False):
        model, step, _ = build("mlp", **sizes, **options)
        _, stats = step()
        grads[label] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        assert stats.forward_steps == 8
    for label, g in grads.items():
        torch.testing.assert_close(g, grads["direct"], rtol=1e-5, atol=1e-6, msg=label)
    targets = adaptive.evaluate([{"field": "mlp", "method": "anode/recompute"}], solver=solver)
    assert all(t.unjudged == f"set for dopri5, not {solver}" for t in targets)
    with pytest.raises(ValueError, match="go with an Adams solver"):
        build("mlp", batch=4, hidden=4, dim=2, step_size=0.1)


def test_step_size_without_an_adams_solver_exits_2(tmp_path):
    assert main(["bench", "adaptive", "--step-size", "0.1", "--out", str(tmp_path)]) == 2

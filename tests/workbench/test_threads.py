"""The automatic number of threads of a CPU training run (anode_workbench.train.threads): decisions on a
simulated machine whose throughput follows the measurements on a 2-core machine, and the
wiring into ``anode train``."""

import json
import re
import time

import pytest
import torch

from anode_workbench.cli import main
from anode_workbench.train import TrainConfig, train
from anode_workbench.train import threads as T
from anode_workbench.train.threads import CpuLoad, ThreadGovernor, auto_threads

TINY = "resnet_ode_small"

# images/s of a resnet_ode_tiny training step (batch 128) on a 2-core machine, idle and with
# one competing single-threaded process (docs/training.md)
RATES = {(1, False): 255.0, (2, False): 460.0, (1, True): 250.0, (2, True): 33.0}


class Machine:
    """Two cores, this process's threads and `others` cores' worth of other work. Spinning
    threads take their share of the cores (the scheduler splits them evenly), so the
    other work gets less than it asks for while this process runs more threads than the
    cores it leaves free."""

    def __init__(self, others=0.0, cores=2, rates=RATES):
        self.t, self.busy, self.own = 0.0, 0.0, 0.0
        self.others, self.cores, self.rates, self.threads = others, cores, rates, 2
        self.set_calls = []

    def clock(self):
        return self.t

    def load(self):
        return self.busy, self.own

    def set_threads(self, n):
        self.threads = n
        self.set_calls.append(n)

    def advance(self, dt, own=0.0):
        share = min(1.0, self.cores / max(own + self.others, 1e-9))
        self.busy += (own + self.others) * share * dt
        self.own += own * share * dt
        self.t += dt

    def step(self, gov, images=128):
        dt = images / self.rates[(self.threads, self.others >= 0.5)]
        self.advance(dt, own=float(self.threads))
        gov.step(images)


def governor(machine, logs=None, **kw):
    return ThreadGovernor(2, cores=machine.cores, load=machine.load, clock=machine.clock,
                          set_threads=machine.set_threads, log=None if logs is None else logs.append, **kw)


def started(machine, logs=None, **kw):
    gov = governor(machine, logs, **kw)
    machine.advance(1.0, own=1.0)  # the run's setup: one thread reading data
    gov.start()
    return gov


def test_an_idle_machine_keeps_every_thread_and_tries_nothing():
    m, logs = Machine(others=0.05), []
    gov = started(m, logs)
    assert gov.threads == 2
    for _ in range(300):
        m.step(gov)
    assert m.set_calls == [2] and logs == [] and gov.switches == [(0, 2)]


def test_a_machine_busy_from_the_start_trains_with_the_free_core_only():
    m, logs = Machine(others=1.0), []
    gov = started(m, logs)
    assert gov.threads == 1
    assert "other processes used 1.0 of 2 cores" in gov.describe()
    for _ in range(100):
        m.step(gov)
    assert m.set_calls == [1] and logs == []


def test_other_work_that_comes_and_goes_is_followed_and_logged():
    m, logs = Machine(), []
    gov = started(m, logs)
    for _ in range(60):
        m.step(gov)
    assert gov.threads == 2
    m.others = 1.0
    start = m.t
    while gov.threads == 2 or gov._trial is not None:
        m.step(gov)
    # Noticed at the end of the window that saw the slowdown, kept after one trial window:
    # at most two 2-thread steps of the slow kind (3.9 s each) and a 3-s trial.
    assert m.t - start < 2 * 128 / 33 + 2 * T.WINDOW_S
    assert gov.threads == 1
    assert len(logs) == 1 and "continuing with 1" in logs[0] and "--threads 1" in logs[0], logs
    for _ in range(100):
        m.step(gov)
    assert gov.threads == 1 and len(logs) == 1  # no trials while the other work runs
    m.others = 0.0
    for _ in range(40):
        m.step(gov)
    assert gov.threads == 2 and "continuing with 2" in logs[-1]


def test_without_a_load_signal_a_collapse_of_the_throughput_is_tried_away():
    m, logs = Machine(), []
    gov = ThreadGovernor(2, cores=2, load=None, clock=m.clock, set_threads=m.set_threads, log=logs.append)
    m.advance(1.0)
    gov.start()
    assert gov.threads == 2 and "chosen automatically" == gov.describe()
    for _ in range(60):
        m.step(gov)
    m.others = 1.0
    for _ in range(20):
        m.step(gov)
    assert gov.threads == 1 and "continuing with 1" in logs[-1]


def test_a_trial_that_loses_is_undone_and_retried_ever_later():
    # The load says a core is taken but two threads still run faster (other work that
    # yields at once, say): the trials of one thread lose.
    rates = {(1, False): 255.0, (2, False): 460.0, (1, True): 200.0, (2, True): 400.0}
    m, logs = Machine(rates=rates), []
    gov = started(m, logs)
    m.others = 0.9
    trials, last = [], 2
    for _ in range(3000):
        m.step(gov)
        if gov.threads != last:
            last = gov.threads
            if last == 1:
                trials.append(m.t)
    assert gov.threads == 2 and logs == []
    gaps = [b - a for a, b in zip(trials, trials[1:])]
    assert len(trials) >= 4 and all(b > 1.5 * a for a, b in zip(gaps, gaps[1:4])), gaps
    assert gaps[0] >= T.RETRY_S


def test_a_collapse_with_no_better_setting_is_said_once():
    rates = {(1, False): 255.0, (2, False): 460.0, (1, True): 60.0, (2, True): 30.0}
    m, logs = Machine(rates=rates), []
    gov = started(m, logs)
    for _ in range(40):
        m.step(gov)
    m.others = 1.0
    for _ in range(40):
        m.step(gov)
    assert gov.threads == 1
    m.rates = {**rates, (1, True): 20.0}  # now even one thread is slowed down to a crawl
    for _ in range(60):
        m.step(gov)
    slowed = [line for line in logs if "slowed" in line]
    assert len(slowed) == 1, logs
    assert "fewer other jobs" in slowed[0] and "OMP_WAIT_POLICY" not in slowed[0]  # one thread already


def test_a_collapse_with_several_threads_names_the_passive_wait_policy():
    rates = {(1, False): 255.0, (2, False): 460.0, (1, True): 10.0, (2, True): 30.0}
    m, logs = Machine(rates=rates), []
    gov = started(m, logs)
    for _ in range(40):
        m.step(gov)
    m.rates = {**rates, (2, False): 100.0, (1, False): 50.0}  # slowed without a load signal
    for _ in range(120):
        m.step(gov)
    slowed = [line for line in logs if "slowed" in line]
    assert gov.threads == 2 and len(slowed) == 1, logs
    assert "OMP_WAIT_POLICY=PASSIVE" in slowed[0]


def test_windows_do_not_span_a_pause_and_the_first_step_after_one_is_not_measured():
    m = Machine()
    gov = started(m)
    m.step(gov)  # not measured: warm-up
    assert gov._window[2] == 0
    m.step(gov)
    assert gov._window[2] == 128
    gov.pause()
    m.advance(100.0, own=1.0)  # an evaluation; nothing of it counts
    m.step(gov)
    assert gov._window[2] == 0 and gov._window[0] == m.t


def test_a_governor_needs_two_threads_to_choose_from():
    with pytest.raises(ValueError, match="at least 2"):
        ThreadGovernor(1, cores=2, load=None, set_threads=lambda n: None)


def test_cpu_load_counts_this_process_as_busy():
    try:
        load = CpuLoad()
    except OSError:
        pytest.skip("no /proc/stat")
    busy0, own0 = load()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    busy1, own1 = load()
    assert own1 - own0 >= 0.3
    # What this process ran is part of the cores' busy time (to a clock tick per core).
    assert busy1 - busy0 >= own1 - own0 - 0.02 * len(load.cpus)


def test_omp_num_threads_or_a_single_thread_leave_nothing_to_choose(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert auto_threads() == (None, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert torch.get_num_threads() == 1  # the tests' setting (conftest)
    gov, why = auto_threads()
    assert gov is None and why in ("one core", "the process's setting")


def test_threads_accepts_auto_and_positive_integers():
    TrainConfig(threads="auto").check()
    TrainConfig(threads=3).check()
    for bad in ("many", 0, True, 1.5):
        with pytest.raises(ValueError, match="threads must be an integer >= 1 or 'auto'"):
            TrainConfig(threads=bad).check()
    with pytest.raises(SystemExit):
        main(["train", "--threads", "0"])


def test_anode_train_chooses_the_threads_and_a_run_follows_its_governor(data_root, tmp_path, monkeypatch,
                                                                       capsys):
    out = tmp_path / "cli"
    args = ["train", "--data-root", str(data_root), "--model", TINY, "--epochs", "1", "--batch-size", "16",
            "--subset", "32", "--test-subset", "10", "--device", "cpu", "--no-plots"]
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["threads"] == "auto"
    # the tests' one thread leaves nothing to choose
    assert re.search(r"1 thread\(s\) \((OMP_NUM_THREADS|the process's setting)\)", capsys.readouterr().err)

    # With two threads to choose from and a core taken by other work from the start, the
    # run trains with one, says why, and restores the process's setting afterwards.
    t0 = time.perf_counter()
    made = []

    def busy_load():  # one core's worth of other work besides this process
        return time.perf_counter() - t0 + time.process_time(), time.process_time()

    def fake_auto_threads(log=None):
        made.append(ThreadGovernor(2, cores=2, load=busy_load, log=log, window_s=0.0))
        return made[0], ""

    monkeypatch.setattr("anode_workbench.train.setup.auto_threads", fake_auto_threads)
    torch.set_num_threads(2)
    try:
        seen = []
        result = train(TrainConfig(data_root=str(data_root), model=TINY, epochs=1, batch_size=8, subset=32,
                                   test_subset=10, device="cpu", plots=False, threads="auto",
                                   out=str(tmp_path / "a")),
                       callbacks=[lambda model, epoch, d: seen.append(torch.get_num_threads())])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    err = capsys.readouterr().err
    assert "1 thread(s) (chosen automatically: other processes used 1.0 of 2 cores)" in err
    assert seen == [1] and result.metrics[0]["threads"] == 1
    assert made[0].switches == [(0, 1)] and made[0]._steps == 4  # every training step was counted


# The workbench (the `anode` command and what it runs) may set process-wide state for a run;
# the library (odeint, gradients, schedules, solvers, nn, models, dropin) never does.
WORKBENCH = ("train", "compare", "bench", "diagnostics", "data", "commands", "cli.py", "accel.py", "files.py")
PROCESS_WIDE = {
    "set_num_threads", "set_num_interop_threads", "set_default_dtype", "set_default_device",
    "set_default_tensor_type", "use_deterministic_algorithms", "set_flush_denormal",
    "set_float32_matmul_precision", "set_detect_anomaly", "putenv", "unsetenv", "setrecursionlimit",
    "filterwarnings", "simplefilter", "basicConfig", "signal",
}


def test_the_library_changes_no_process_wide_setting():
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "anode"
    found = []
    for path in sorted(src.rglob("*.py")):
        if path.relative_to(src).parts[0] in WORKBENCH:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(src)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                owner = ast.unparse(f.value) if isinstance(f, ast.Attribute) else ""
                if name in PROCESS_WIDE or (name == "manual_seed" and owner in ("torch", "torch.cuda")) or (
                    owner == "os.environ" and name in ("setdefault", "update", "pop", "clear")
                ):
                    found.append(f"{where} {ast.unparse(f)}")
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    text = ast.unparse(t)
                    if text.startswith(("torch.backends.", "os.environ", "torch._dynamo.config")):
                        found.append(f"{where} {text} = ...")
    assert not found, found

"""Runs that go wrong (issue 10): the exit status can be trusted.

* a run that blows up without going non-finite exits 1 with the reason (run health);
* a hopeless run (USA at beta = 600) is refused within seconds, a run whose step collapses
  stops with the reason (step budget);
* Ctrl-C exits 130 with the ``--restart`` command that continues the run;
* a rank-local exception under ``mpiexec`` ends the whole job promptly, said once;
* ``--out`` holding another case's run needs ``--overwrite``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from _helpers import MEANFIELD, MPIEXEC, launch
from meanfield.cli import main
from meanfield.pde.health import MASS_TOLERANCE, FloatingPointWatch, StepBudget, check_density, check_row
from meanfield.pde.timestepping import RunHealthError, StalledRunError

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "cases" / "circle_sa_clusters.toml"
USA = REPO / "cases" / "circle_usa_energy.toml"


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- the checks themselves -------------------------------------------------------------------
def test_check_density_bounds():
    areas = np.full(4, 0.25)
    rho = np.ones(4)
    check_density(0.0, rho, areas, 1.0)  # healthy
    check_density(0.0, rho * (1 + 0.5 * MASS_TOLERANCE), areas, 1.0)  # drift inside the bound
    with pytest.raises(RunHealthError, match="mass"):
        check_density(1.5, rho * (1 + 3 * MASS_TOLERANCE), areas, 1.0)
    low = rho.copy()
    low[2] = -1e-13  # round-off of an emptied cell
    check_density(0.0, low, areas, low @ areas)
    low[2] = -1e-9
    with pytest.raises(RunHealthError, match="negative density -1.000e-09 in cell 2"):
        check_density(0.0, low, areas, low @ areas)
    bad = rho.copy()
    bad[1] = np.inf
    with pytest.raises(RunHealthError, match="non-finite"):
        check_density(0.0, bad, areas, 1.0)
    with pytest.raises(RunHealthError, match="energy is nan"):
        check_row({"t": 1.0, "mass": 1.0, "energy": float("nan")})


class _State:
    def __init__(self, t, steps):
        self.t, self.steps = t, steps


def test_step_budget_predicts_and_ignores_one_short_landing_step():
    budget = StepBudget(t_end=10.0, max_steps=1000)
    for k in range(40):  # steady steps of 0.1: 100 steps in all
        budget.update(_State(0.1 * (k + 1), k + 1), 0.1)
    budget.update(_State(4.1 + 1e-9, 41), 1e-9)  # a step shortened to land on an output time
    with pytest.raises(StalledRunError, match="would take about"):
        for k in range(42, 42 + 20):  # the step collapses: 1e-3 for the 6 left -> ~6000 steps
            budget.update(_State(4.1 + 1e-3 * (k - 41), k), 1e-3)
    with pytest.raises(StalledRunError, match="no longer moves t"):
        StepBudget(10.0, 1000).update(_State(5.0, 3), 1e-17)


def test_floating_point_watch_records_instead_of_warning(recwarn):
    watch = FloatingPointWatch()
    with watch:
        np.exp(np.array([1000.0]))
        with pytest.raises(RunHealthError, match="floating-point overflow") as info:
            watch.check(2.0)
    assert not info.value.replicated  # one rank's share may overflow alone: the job is aborted
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]


# -- item 1: blow-ups exit 1 with the reason --------------------------------------------------
@pytest.mark.parametrize("modes", [None, "[{k=4,amplitude=0.01},{k=3,amplitude=0.005}]"])
def test_spectral_blowup_exits_1_with_reason(capsys, tmp_path, modes):
    """On main these ended with rc 0 (mass 5e210, min density -9e227) or a traceback."""
    extra = ["--set", f"initial.modes={modes}"] if modes else []
    rc, _, err = cli(capsys, "run", CLUSTERS, "--set", "solver.scheme=spectral", "--set", "domain.cells=128",
                     "--set", "solver.t_end=9", "--set", "output.plots=false", *extra, "--out", tmp_path / "o",
                     "--quiet")
    assert rc == 1
    line = one_line(err, "run failed", "negative density", "no longer resolves", "last_good.npz")
    t_fail = float(line.split("t=")[1].split(":")[0])
    assert 6.5 < t_fail < 8.5, line  # positive up to t ~ 7 (the min density, 0.0041 at t = 7.5 on 512 cells)
    good = np.load(tmp_path / "o" / "last_good.npz")
    assert float(good["t"]) < t_fail and np.all(good["density"] >= 0)
    assert not (tmp_path / "o" / "final.npz").exists()


# -- item 2: hopeless and stalling runs --------------------------------------------------------
def test_usa_beta_600_refused_within_seconds(tmp_path):
    """On main: steps of 1e-258, a 150-digit ETA, never ends."""
    start = time.perf_counter()
    proc = launch(1, "run", USA, "--set", "model.beta=600", "--out", tmp_path / "o", timeout=60)
    assert time.perf_counter() - start < 30
    assert proc.returncode == 2
    line = one_line(proc.stderr, "model.beta", "steps", "solver.max_steps", "model.shift = true")
    assert "e+2" in line  # about 1e260 steps
    assert "RuntimeWarning" not in proc.stdout and "overflow" not in proc.stdout
    assert not (tmp_path / "o" / "snapshots").exists()


def test_collapsing_step_stops_with_reason(capsys, tmp_path):
    """The first step predicts ~140 steps; the CFL step of the collapsed clusters needs far more."""
    rc, _, err = cli(capsys, "run", CLUSTERS, "--set", "domain.cells=256", "--set", "solver.max_steps=400",
                     "--set", "output.plots=false", "--out", tmp_path / "o", "--quiet")
    assert rc == 1
    one_line(err, "run failed", "solver.max_steps = 400", "CFL", "last_good.npz")


def test_hopeless_step_count_names_the_bound(capsys, tmp_path):
    rc, _, err = cli(capsys, "run", CLUSTERS, "--set", "solver.dt_max=1e-6", "--out", tmp_path / "o", "--quiet")
    assert rc == 2
    one_line(err, "solver.dt_max", "2e+07 steps", "solver.max_steps = 1000000")


# -- Ctrl-C -------------------------------------------------------------------------------------
def test_ctrl_c_exits_130_with_the_restart_command(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.Popen([MEANFIELD, "run", str(CLUSTERS), "--set", "domain.cells=4096", "--set", "output.plots=false",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "snapshots" / "00001.npz").exists():  # snapshot 1 complete
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    line = one_line(err, "interrupted at t = ", "is the last one kept", "continue with: meanfield run",
                    f"--restart {out}")
    command = line.split("continue with: ")[1].split()
    assert command[:2] == ["meanfield", "run"]
    # the printed command continues the run (shortened to t_end = 1 so the test stays quick)
    rc = subprocess.run([MEANFIELD, *command[1:], "--set", "solver.t_end=1.0", "--quiet"], capture_output=True,
                        text=True, timeout=120)
    assert rc.returncode == 0, rc.stderr
    assert float(np.load(out / "final.npz")["t"]) == 1.0


# -- --out holding another case's run ---------------------------------------------------------
def test_out_with_another_case_needs_overwrite(capsys, tmp_path):
    out = tmp_path / "o"
    fast = ["--set", "domain.cells=32", "--set", "solver.t_end=0.2", "--set", "output.plots=false", "--quiet"]
    assert cli(capsys, "run", CLUSTERS, *fast, "--out", out)[0] == 0
    assert cli(capsys, "run", CLUSTERS, *fast, "--out", out)[0] == 0  # the same case: replaced as before
    before = (out / "final.npz").read_bytes()
    rc, _, err = cli(capsys, "run", CLUSTERS, *fast, "--set", "model.beta=4", "--out", out)
    assert rc == 2
    one_line(err, "--out", "different case", "model.beta", "9.0 there, 4.0 here", "--overwrite")
    assert (out / "final.npz").read_bytes() == before  # untouched
    rc, _, err = cli(capsys, "run", CLUSTERS, *fast, "--set", "model.beta=4", "--out", out, "--overwrite")
    assert rc == 0, err
    assert "beta = 4.0" in (out / "case.toml").read_text()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    rc, _, err = cli(capsys, "run", CLUSTERS, *fast, "--out", other)
    assert rc == 2
    one_line(err, "--out", "not empty", "holds no meanfield run")
    assert sorted(p.name for p in other.iterdir()) == ["thesis.tex"]


# -- item 4: MPI -----------------------------------------------------------------------------
RANK_FUNCTION = """\
import os

def density(x):
    if os.environ.get("PMI_RANK") == "1":
        raise RuntimeError("only rank 1 fails")
    return 1.0 + 0.1 * x[:, 0]
"""


@pytest.mark.mpi
def test_mpi_exception_on_one_rank_in_setup_ends_job(tmp_path):
    """On main: rank 0 waited for ever (killed after 90 s)."""
    (tmp_path / "f.py").write_text(RANK_FUNCTION)
    case = tmp_path / "c.toml"
    case.write_text('[domain]\ncells = 64\n[initial]\nkind = "python"\nfunction = "f.py:density"\n'
                    '[solver]\nt_end = 0.5\n[output]\nplots = false\n')
    start = time.perf_counter()
    proc = launch(2, "run", case, "--out", tmp_path / "o", timeout=60)
    assert time.perf_counter() - start < 30  # the abort, not a hang into the 60 s timeout (about 3 s; more on a loaded machine)
    assert proc.returncode == 2
    one_line(proc.stderr, "initial.function", "only rank 1 fails", "rank 1")


RUN_PHASE = """\
import os, sys
import meanfield.diagnostics as diag
from meanfield.cli import main

real = diag.compute
calls = [0]

def compute(*args, **kwargs):
    calls[0] += 1
    if os.environ.get("PMI_RANK") == "1" and calls[0] == 3:
        raise ZeroDivisionError("diagnostics failed on rank 1 only")
    return real(*args, **kwargs)

diag.compute = compute
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.mpi
def test_mpi_exception_on_one_rank_during_run_aborts_job(tmp_path):
    """An exception outside any field evaluation, on one rank, at the third snapshot."""
    script = tmp_path / "runner.py"
    script.write_text(RUN_PHASE)
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    start = time.perf_counter()
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), "run", str(CLUSTERS), "--set",
                           "domain.cells=64", "--set", "output.plots=false", "--out", str(tmp_path / "o"), "--quiet"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert time.perf_counter() - start < 30  # (as above)
    assert proc.returncode != 0
    assert proc.stderr.count("diagnostics failed on rank 1 only") == 1, proc.stderr
    assert "run failed on rank 1: ZeroDivisionError" in proc.stderr


# -- item 3: huge problems are refused before they allocate ----------------------------------
@pytest.mark.parametrize("key, value, flag", [("domain.cells", "100000000", None),
                                              ("domain.mesh", "icosahedral:10", None),
                                              ("particles.n", "100000000", "--n")])
def test_huge_case_refused_before_allocating(tmp_path, key, value, flag):
    """On main: 18 GB RSS in 90 s with no output line (cells), a 309 MB cache and > 8 GB
    (icosahedral:10)."""
    case = REPO / "cases" / ("sphere_sa_clusters.toml" if key == "domain.mesh" else "circle_sa_clusters.toml")
    command = "particles" if key == "particles.n" else "run"
    args = [flag, value] if flag else ["--set", f"{key}={value}"]
    peak_file = tmp_path / "peak"
    # the CLI in a process that reports its own peak RSS (VmHWM: this process image only, unlike
    # getrusage's ru_maxrss, which execve inherits from the forking pytest worker)
    script = ("import sys; from meanfield.cli import main\n"
              "try:\n    rc = main(sys.argv[2:])\nfinally:\n"
              "    peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
              "    open(sys.argv[1], 'w').write(peak)\n"
              "sys.exit(rc)\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, str(peak_file), command, str(case), *args, "--out",
                           str(tmp_path / "o"), "--max-memory", "20"], capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - start < 30
    assert proc.returncode == 2
    line = one_line(proc.stderr, key, "of memory (estimate)", "more than the 20.0 GiB allowed by --max-memory",
                    "--max-memory inf")
    assert "estimate: " in proc.stdout  # the estimate is logged first
    assert int(peak_file.read_text()) < 1_000_000  # KiB: the process stayed under 1 GB
    assert not (tmp_path / "o").exists()
    del line


def test_memory_override_lets_a_case_run(capsys, tmp_path):
    fast = ["--set", "domain.cells=64", "--set", "solver.t_end=0.1", "--set", "output.plots=false", "--quiet"]
    rc, _, err = cli(capsys, "run", CLUSTERS, *fast, "--max-memory", "0.001", "--out", tmp_path / "o")
    assert rc == 2
    one_line(err, "domain.cells", "1 MiB allowed by --max-memory")
    assert cli(capsys, "run", CLUSTERS, *fast, "--max-memory", "inf", "--out", tmp_path / "o")[0] == 0


def test_run_of_an_older_version_is_the_same_case(capsys, tmp_path):
    """A case.toml written before model.shift / solver.max_steps existed lacks them: at
    their defaults the case is the same (restart and re-run accepted), otherwise not."""
    out = tmp_path / "o"
    fast = ["--set", "domain.cells=32", "--set", "solver.t_end=0.2", "--set", "output.every=0.1",
            "--set", "output.plots=false", "--quiet"]
    assert cli(capsys, "run", CLUSTERS, *fast, "--out", out)[0] == 0
    stored = out / "case.toml"
    lines = [ln for ln in stored.read_text().splitlines() if not ln.startswith(("shift =", "max_steps ="))]
    stored.write_text("\n".join(lines) + "\n")
    rc, _, err = cli(capsys, "run", CLUSTERS, *fast, "--set", "solver.t_end=0.3", "--restart", out)
    assert rc == 0, err
    rc, _, err = cli(capsys, "run", CLUSTERS, *fast, "--set", "solver.max_steps=5000", "--restart", out)
    assert rc == 2
    one_line(err, "solver.max_steps", "5000 here")  # (the restart wrote the full case.toml)

"""Checkpoint and restart (``--restart DIR``): a run stopped at any instant and continued
from its last complete snapshot ends with the files of the uninterrupted run, bitwise,
serial and under ``mpiexec -n 2``, in DIR or (``--out OTHER``) in another directory,
leaving DIR as it was; invalid restarts exit 2 with one line, touching nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from meanfield.cli import main
from meanfield.io.output import read_run

from _helpers import MEANFIELD, MPIEXEC, launch

needs_mpi = pytest.mark.skipif(MPIEXEC is None or MEANFIELD is None,
                               reason="mpiexec or the meanfield script is missing")

CIRCLE = """
[domain]
cells = {cells}
[model]
beta = 9.0
[initial]
kind = "modes"
modes = [{{k = 2, amplitude = 0.3}}, {{k = 3, amplitude = 0.2, phase = 1.0}}]
[solver]
t_end = {t_end}
dt_max = {dt_max}
[output]
every = {every}
plots = false
"""

SPHERE = """
[domain]
manifold = "sphere"
mesh = "icosahedral:2"
[model]
beta = 4.0
[initial]
kind = "vmf"
centers = [[1, 0, 0], [0, 1, 0]]
kappas = [3.0, 3.0]
[solver]
t_end = {t_end}
dt_max = {dt_max}
[output]
every = {every}
plots = false
"""


def write_case(tmp_path, manifold="circle", t_end=1.0, every=0.125, dt_max=0.02, cells=128, name="case.toml") -> Path:
    text = (CIRCLE if manifold == "circle" else SPHERE).format(t_end=t_end, every=every, dt_max=dt_max, cells=cells)
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str, *needles: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory (relative path -> bytes)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def fingerprint(run_dir: Path) -> dict[str, str]:
    """Every entry under a directory: files by their SHA-256 and size, folders as such."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        name = str(p.relative_to(run_dir))
        out[name] = "dir" if p.is_dir() else f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_size}"
    return out


def assert_same_run(a: Path, b: Path, ignore=()) -> None:
    fa, fb = files(a), files(b)
    for name in ignore:
        fa.pop(name, None), fb.pop(name, None)
    assert sorted(fa) == sorted(fb)
    different = [name for name in fa if fa[name] != fb[name]]
    assert not different, different


def damage(run_dir: Path, k: int) -> None:
    """What a killed run can leave, and worse: products after snapshot ``k`` of a finished
    run removed, snapshot ``k`` truncated (as if it had escaped the atomic write), the
    VTK file and csv row of ``k`` and the final state left over, temporary files."""
    for p in (run_dir / "snapshots").glob("*.npz"):
        if int(p.stem) > k:
            p.unlink()
    for p in (run_dir / "vtk").glob("*.vtp"):
        if int(p.stem) > k:
            p.unlink()
    snap = run_dir / "snapshots" / f"{k:05d}.npz"
    data = snap.read_bytes()
    snap.write_bytes(data[: len(data) // 2])
    (run_dir / "snapshots" / f".{k + 1:05d}.npz.abc123.tmp").write_bytes(data[:100])
    (run_dir / ".diagnostics.csv.def456.tmp").write_text("t,mass\n")
    if (run_dir / "vtk").is_dir():
        (run_dir / "vtk" / f".{k + 1:05d}.ghi789.vtp").write_text("<?xml")


# -- serial ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("manifold", ["circle", "sphere"])
def test_restart_after_sigkill_is_bitwise_identical(capsys, tmp_path, manifold):
    """A run killed (SIGKILL) midway and restarted ends with the uninterrupted run's files."""
    case = write_case(tmp_path, manifold, t_end=2.0, every=0.125, dt_max=0.005 if manifold == "circle" else 0.01,
                      cells=512)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(["run", str(case), "--out", str(full), "--quiet"]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "meanfield.cli", "run", str(case), "--out", str(killed), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "snapshots" / "00003.npz"
    deadline = time.monotonic() + 60
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed: make the case slower"
    assert not (killed / "final.npz").exists()
    stopped_at = read_run(killed, vtk=manifold == "sphere").index
    rc, out, err = cli(capsys, "run", case, "--restart", killed)
    assert rc == 0, err
    assert f"(snapshot {stopped_at} of 16" in out and "continuing" in out
    assert_same_run(full, killed)


@pytest.mark.parametrize("manifold, sets", [("circle", ()), ("sphere", ()),
                                            ("circle", ("solver.backend=\"spectral\"",)),
                                            ("circle", ("solver.scheme=\"spectral\"",)),
                                            ("sphere", ("solver.backend=\"spectral\"",))],
                         ids=["circle", "sphere", "circle-spectral-field", "circle-spectral-scheme",
                              "sphere-spectral-field"])
def test_restart_from_damaged_directory_is_bitwise_identical(capsys, tmp_path, manifold, sets):
    case = write_case(tmp_path, manifold, t_end=1.0, every=0.125)
    sets = [arg for item in sets for arg in ("--set", item)]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["run", str(case), "--out", str(full), "--quiet", *sets]) == 0
    shutil.copytree(full, part)
    damage(part, 5)  # snapshot 5 truncated: the last complete one is 4 (t = 0.5)
    (part / "notes.txt").write_text("mine")
    before = (part / "snapshots" / "00004.npz").read_bytes()
    rc, out, err = cli(capsys, "run", case, "--restart", part, *sets)
    assert rc == 0, err
    assert "from t = 0.5 (snapshot 4 of 8" in out
    assert (part / "notes.txt").read_text() == "mine"  # nothing but the run's products is touched
    assert (part / "snapshots" / "00004.npz").read_bytes() == before
    assert_same_run(full, part, ignore=["notes.txt"])
    # restarting the finished run changes nothing
    rc, out, err = cli(capsys, "run", case, "--restart", part, "--out", part, *sets)
    assert rc == 0, err
    assert "(snapshot 8 of 8" in out
    assert_same_run(full, part, ignore=["notes.txt"])


def test_python_api_restart(tmp_path):
    from meanfield.io.case import load_case
    from meanfield.run import run_case

    case_path = write_case(tmp_path, "circle", t_end=1.0, every=0.25)
    case = load_case(case_path)
    full = run_case(case, out_dir=tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "part")
    damage(tmp_path / "part", 2)
    cont = run_case(case, restart=tmp_path / "part")
    assert cont.state.t == full.state.t and cont.state.steps == full.state.steps
    assert np.array_equal(cont.state.rho, full.state.rho)
    assert cont.rows == full.rows
    assert len(cont.snapshots) == len(full.snapshots)
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(cont.snapshots, full.snapshots))
    assert_same_run(tmp_path / "full", tmp_path / "part")


def test_particle_restart_is_bitwise_identical(capsys, tmp_path):
    case = write_case(tmp_path, "sphere", t_end=1.0, every=0.25)
    args = ("particles", case, "--n", 200, "--seed", 3, "--quiet")
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli(capsys, *args, "--out", full)[0] == 0
    shutil.copytree(full, part)
    damage(part, 3)
    rc, _, err = cli(capsys, *args, "--restart", part)
    assert rc == 0, err
    assert_same_run(full, part)
    # and into another directory, the stopped run only read
    damage(part, 2)
    before = fingerprint(part)
    rc, _, err = cli(capsys, *args, "--restart", part, "--out", tmp_path / "other")
    assert rc == 0, err
    assert_same_run(full, tmp_path / "other")
    assert fingerprint(part) == before


def test_extending_t_end_equals_the_longer_run(capsys, tmp_path):
    case = write_case(tmp_path, "sphere", t_end=0.5, every=0.25)
    short, longer = tmp_path / "short", tmp_path / "long"
    assert cli(capsys, "run", case, "--out", short, "--quiet")[0] == 0
    assert cli(capsys, "run", case, "--out", longer, "--set", "solver.t_end=1.0", "--quiet")[0] == 0
    rc, _, err = cli(capsys, "run", case, "--restart", short, "--set", "solver.t_end=1.0", "--quiet")
    assert rc == 0, err
    assert_same_run(longer, short)  # case.toml included: it now says t_end = 1.0


def test_extension_that_moves_the_output_times_is_refused(capsys, tmp_path):
    # 3 * 0.1 != 0.3: the run ended at t = 0.3, a run to 0.5 has its snapshot 3 at 3 * 0.1
    case = write_case(tmp_path, "circle", t_end=0.3, every=0.1, cells=32)
    out = tmp_path / "out"
    assert cli(capsys, "run", case, "--out", out, "--quiet")[0] == 0
    before = files(out)
    rc, _, err = cli(capsys, "run", case, "--restart", out, "--set", "solver.t_end=0.5")
    assert rc == 2
    one_line(err, "--set", "solver.t_end", "output times")
    rc, _, err = cli(capsys, "run", case, "--restart", out, "--set", "solver.t_end=0.2")
    assert rc == 2
    one_line(err, "--set", "solver.t_end", "before snapshot 3")
    assert files(out) == before


def test_invalid_restarts_exit_2_with_one_line_and_touch_nothing(capsys, tmp_path):
    case = write_case(tmp_path, "circle", t_end=0.5, every=0.25, cells=32)
    run = tmp_path / "run"
    assert cli(capsys, "run", case, "--out", run, "--quiet")[0] == 0
    before = files(run)
    empty = tmp_path / "empty"
    empty.mkdir()
    other = write_case(tmp_path, "circle", t_end=0.5, every=0.25, cells=64, name="other.toml")
    for args, needles in [
        (("--restart", empty), ("--restart", str(empty), "case.toml")),
        (("--restart", tmp_path / "missing"), ("--restart", "no such directory")),
        (("--restart", run, "--set", "model.beta=5"), ("--set", "model.beta", "differs")),
        (("--restart", run, "--out", run / "sub"), ("--out", str(run / "sub"), "inside --restart")),
        (("--restart", run, "--out", tmp_path), ("--out", str(tmp_path), "contains --restart")),
        (("--restart", run, "--out", tmp_path / "elsewhere", "--set", "model.beta=5"), ("--set", "model.beta")),
    ]:
        rc, out, err = cli(capsys, "run", case, *args)
        assert rc == 2, (args, err)
        one_line(err, *needles)
        assert "done" not in out
    rc, _, err = cli(capsys, "run", other, "--restart", run)
    assert rc == 2
    one_line(err, str(other), "domain.cells", "differs")
    # a PDE run is no particle run, even where its cells look like particles (n = cells)
    run32 = tmp_path / "run32"
    assert cli(capsys, "run", case, "--out", run32, "--set", "particles.n=32", "--quiet")[0] == 0
    rc, _, err = cli(capsys, "particles", case, "--restart", run32, "--n", 32)
    assert rc == 2
    one_line(err, "--restart", "PDE run")
    particles = tmp_path / "particles"
    assert cli(capsys, "particles", case, "--out", particles, "--quiet")[0] == 0
    rc, _, err = cli(capsys, "run", case, "--restart", particles)  # nor a particle run a PDE run
    assert rc == 2
    one_line(err, "--restart", "no density array")
    assert files(run) == before
    assert not (run / "sub").exists() and not (tmp_path / "elsewhere").exists()
    assert not list(empty.iterdir())
    # a directory whose snapshot 0 is damaged has nothing to continue from
    shutil.copytree(run, tmp_path / "broken")
    damage(tmp_path / "broken", 0)
    rc, _, err = cli(capsys, "run", case, "--restart", tmp_path / "broken")
    assert rc == 2
    one_line(err, "--restart", "no complete snapshot", "00000.npz")


# -- restart into another directory (--out OTHER) ---------------------------------------------------
def test_restart_into_another_directory_leaves_dir_unchanged(capsys, tmp_path):
    """``--restart DIR --out OTHER``: OTHER ends as the uninterrupted run's directory, byte for
    byte (the products of an earlier run there removed), and DIR is only read."""
    case = write_case(tmp_path, "sphere", t_end=1.0, every=0.125)
    full, part, other = tmp_path / "full", tmp_path / "part", tmp_path / "other"
    assert cli(capsys, "run", case, "--out", full, "--quiet")[0] == 0
    shutil.copytree(full, part)
    damage(part, 5)  # the last complete snapshot is 4; DIR holds leftovers a restart in place would remove
    (part / "notes.txt").write_text("mine")
    # OTHER holds an earlier, longer run (more snapshots, VTK files, last_good.npz) and a file of the user's
    assert cli(capsys, "run", case, "--out", other, "--set", "solver.t_end=1.5", "--quiet")[0] == 0
    (other / "last_good.npz").write_bytes(b"old")
    (other / "notes.txt").write_text("theirs")
    before = fingerprint(part)
    # OTHER holds another case's run (t_end 1.5): refused without --overwrite, nothing touched
    other_before = fingerprint(other)
    rc, out, err = cli(capsys, "run", case, "--restart", part, "--out", other)
    assert rc == 2
    one_line(err, "--out", "different case", "solver.t_end", "--overwrite")
    assert fingerprint(other) == other_before
    rc, out, err = cli(capsys, "run", case, "--restart", part, "--out", other, "--overwrite")
    assert rc == 0, err
    assert f"continuing the run in {part} from t = 0.5 (snapshot 4 of 8" in out
    assert f"writing into {other}" in out
    assert fingerprint(part) == before  # DIR untouched: same files, same bytes, nothing added or removed
    assert (other / "notes.txt").read_text() == "theirs"
    assert_same_run(full, other, ignore=["notes.txt"])
    # OTHER is a run directory like any other: restarting it in place changes nothing
    rc, out, err = cli(capsys, "run", case, "--restart", other, "--quiet")
    assert rc == 0, err
    assert_same_run(full, other, ignore=["notes.txt"])


def test_restart_out_spellings_and_unwritable_other(capsys, tmp_path):
    case = write_case(tmp_path, "circle", t_end=0.5, every=0.125, cells=32)
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli(capsys, "run", case, "--out", full, "--quiet")[0] == 0
    shutil.copytree(full, part)
    damage(part, 2)
    before = fingerprint(part)
    # OTHER unwritable: exit 2 with one line before anything runs, DIR untouched
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    rc, out, err = cli(capsys, "run", case, "--restart", part, "--out", blocker / "run")
    assert rc == 2
    one_line(err, "--out", str(blocker / "run"), "not writable")
    assert "done" not in out and "continuing" not in out
    assert fingerprint(part) == before and blocker.read_text() == "not a directory"
    # a PDE run is no particle run: refused, nothing touched
    rc, _, err = cli(capsys, "particles", case, "--restart", part, "--out", tmp_path / "p")
    assert rc == 2
    assert fingerprint(part) == before and not (tmp_path / "p" / "snapshots").exists()
    # DIR spelt otherwise (.., a symbolic link) is DIR: continued in place
    (tmp_path / "link").symlink_to(part, target_is_directory=True)
    for spelling in (tmp_path / "x" / ".." / "part", tmp_path / "link"):
        rc, out, err = cli(capsys, "run", case, "--restart", part, "--out", spelling)
        assert rc == 0, err
        assert "writing into" not in out
        assert_same_run(full, part)
    assert not (tmp_path / "x").exists()


def test_python_api_restart_into_another_directory(tmp_path):
    from meanfield.io.case import load_case
    from meanfield.run import run_case

    case = load_case(write_case(tmp_path, "circle", t_end=1.0, every=0.25))
    full = run_case(case, out_dir=tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "part")
    damage(tmp_path / "part", 2)
    before = fingerprint(tmp_path / "part")
    cont = run_case(case, out_dir=tmp_path / "other", restart=tmp_path / "part")
    assert cont.out_dir == tmp_path / "other"
    assert np.array_equal(cont.state.rho, full.state.rho) and cont.rows == full.rows
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(cont.snapshots, full.snapshots))
    assert fingerprint(tmp_path / "part") == before
    assert_same_run(tmp_path / "full", tmp_path / "other")


# -- under mpiexec -n 2 ----------------------------------------------------------------------------
@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("manifold", ["circle", "sphere"])
def test_restart_under_mpiexec_is_bitwise_identical(tmp_path, manifold):
    case = write_case(tmp_path, manifold, t_end=1.0, every=0.125)
    full, part = tmp_path / "full", tmp_path / "part"
    p = launch(2, "run", case, "--out", full, "--quiet")
    assert p.returncode == 0, p.stderr
    shutil.copytree(full, part)
    damage(part, 4)
    p = launch(2, "run", case, "--restart", part)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("from t = 0.375 (snapshot 3 of 8") == 1  # rank 0 alone logs
    assert_same_run(full, part)


@needs_mpi
@pytest.mark.mpi
def test_restart_into_another_directory_under_mpiexec(tmp_path):
    case = write_case(tmp_path, "sphere", t_end=1.0, every=0.125)
    full, part, other = tmp_path / "full", tmp_path / "part", tmp_path / "other"
    p = launch(2, "run", case, "--out", full, "--quiet")
    assert p.returncode == 0, p.stderr
    shutil.copytree(full, part)
    damage(part, 4)
    before = fingerprint(part)
    p = launch(2, "run", case, "--restart", part, "--out", other)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("from t = 0.375 (snapshot 3 of 8") == 1  # rank 0 alone logs
    assert fingerprint(part) == before
    assert_same_run(full, other)


@needs_mpi
@pytest.mark.mpi
def test_invalid_restart_under_mpiexec_every_rank_exits_2(tmp_path):
    case = write_case(tmp_path, "circle", t_end=0.5, every=0.25, cells=32)
    run, empty = tmp_path / "run", tmp_path / "empty"
    assert launch(1, "run", case, "--out", run, "--quiet").returncode == 0
    empty.mkdir()
    before = files(run)
    for args, needles in [(("--restart", run, "--set", "model.beta=5"), ("--set", "model.beta")),
                          (("--restart", empty), ("--restart", "case.toml"))]:
        p = launch(2, "run", case, *args, wrap=True, timeout=60)
        assert p.stdout.count("rank exit 2") == 2, (p.stdout, p.stderr)
        one_line(p.stderr, *needles)
    assert files(run) == before

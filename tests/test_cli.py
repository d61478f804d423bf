"""The command line's contract for bad input and failed runs (SPEC section 4).

Invalid input: exit status 2, exactly one line on stderr naming the file (or ``--set``),
the dotted key and the reason, no traceback, nothing run. A failure during the run: exit
status 1, one line, and ``last_good.npz`` written.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w

import meanfield.pde.solver
from meanfield.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "cases" / "circle_sa_clusters.toml"
FAST = ["--set", "domain.cells=32", "--set", "solver.t_end=0.2", "--set", "output.plots=false", "--quiet"]

#: A small, fast, valid case; tests patch it into invalid ones.
BASE = {
    "domain": {"cells": 32},
    "model": {"kind": "SA", "beta": 4.0},
    "initial": {"kind": "modes", "modes": [{"k": 2, "amplitude": 0.05, "phase": 0.0}]},
    "solver": {"t_end": 0.2},
    "output": {"every": 0.1, "plots": False},
}

DENSITIES = '''\
import numpy as np

def good(x):
    return 1.0 + 0.5 * x[:, 0]

def boom(x):
    raise RuntimeError("kaboom from the user function")

def two_lines(x):
    raise ValueError("first line\\nsecond line")

def log_zero(x):
    return np.log(0.0 * x[:, 0])  # RuntimeWarning, then -inf
'''


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for section, table in patch.items():
        if isinstance(table, dict) and isinstance(out.get(section), dict):
            out[section].update(table)
        else:
            out[section] = table
    return out


def write_case(path: Path, patch: dict | None = None, drop: tuple = ()) -> Path:
    data = _merge(BASE, patch or {})
    for dotted in drop:
        section, key = dotted.split(".")
        data[section].pop(key, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    """``meanfield ARGS`` in-process: (exit status, stdout, stderr)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str, *needles: str) -> str:
    """stderr is exactly one non-empty line, without a traceback, containing every needle."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.strip()
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


@pytest.fixture
def case(tmp_path) -> Path:
    return write_case(tmp_path / "case.toml")


@pytest.fixture
def no_advance(monkeypatch):
    """Record calls of Simulation.advance: invalid input must be rejected before any step."""
    calls = []
    monkeypatch.setattr(meanfield.pde.solver.Simulation, "advance", lambda self, *a, **k: calls.append(a))
    return calls


def test_base_case_runs(capsys, case, tmp_path):
    rc, _, err = cli(capsys, "run", case, "--out", tmp_path / "out", "--quiet")
    assert rc == 0, err
    assert err == ""
    assert (tmp_path / "out" / "final.npz").is_file()


# -- invalid values given with --set: the line names --set, the key and the reason -----------------
SET_ERRORS = [
    # (overrides, dotted key in the message, reason fragment)
    (["foo.bar=1"], "foo.bar", "unknown key"),
    (["model.bogus=1"], "model.bogus", "unknown key"),
    (["model.beta"], "model.beta", "KEY=VALUE"),
    (['model.beta="4"'], "model.beta", "must be a number"),
    (["model.beta=abc"], "model.beta", "must be a number"),
    (["domain.cells=64.0"], "domain.cells", "must be an integer"),
    (["model.beta=true"], "model.beta", "must be a number"),
    (["domain.cells=true"], "domain.cells", "must be an integer"),
    (["model.beta=-1"], "model.beta", ">= 0"),
    (["solver.cfl=1.5"], "solver.cfl", "<= 1"),
    (["solver.cfl=0"], "solver.cfl", "> 0"),
    (["domain.cells=2"], "domain.cells", ">= 3"),
    (["solver.t_end=0"], "solver.t_end", "> 0"),
    (["solver.t_end=-1"], "solver.t_end", "> 0"),
    (["solver.t_end=nan"], "solver.t_end", "finite"),
    (["model.kind=XY"], "model.kind", "must be one of"),
    (['model.kind="XY"'], "model.kind", "must be one of"),
    (["model.Q=[[1,0]]"], "model.Q", "2 x 2"),
    (["model.Q=[[1,0],[0,1],[0,0]]"], "model.Q", "2 x 2"),
    (["model.Q=[1,0]"], "model.Q", "2 x 2"),
    (['model.Q=[["1","0"],["0","1"]]'], "model.Q", "must be a number"),
    (["model.Q=[[true,0],[0,1]]"], "model.Q", "must be a number"),
    (["model.K=[[1,0],[0,nan]]"], "model.K", "finite"),
    # integers beyond the float range used to escape as OverflowError tracebacks
    (["model.beta=1" + "0" * 400], "model.beta", "finite"),
    (["model.V=[[1" + "0" * 400 + ",0],[0,1]]"], "model.V", "finite"),
    (["domain.cells=1" + "0" * 400], "domain.cells", "<="),
    (["initial.modes=[{k=1}]"], "initial.modes", "amplitude"),
    (["initial.modes=[{k=1, amplitude=2.0}]"], "initial.modes", "negative"),
    (["initial.kind=python", "initial.function=nofile.py:f"], "initial.function", "no such file"),
    (["=4"], "", "KEY=VALUE"),
    (["output.every=1e-9"], "output.every", "snapshots"),  # would build 2e8 output times
]


@pytest.mark.parametrize("overrides, key, reason", SET_ERRORS, ids=[" ".join(e[0])[:40] for e in SET_ERRORS])
def test_bad_set_value(capsys, case, tmp_path, no_advance, overrides, key, reason):
    args = [a for o in overrides for a in ("--set", o)]
    rc, _, err = cli(capsys, "run", case, *args, "--out", tmp_path / "out", "--quiet")
    assert rc == 2
    line = one_line(err, "--set", key, reason)
    assert str(case) not in line  # the value came from the command line, not the file
    assert not no_advance
    assert not (tmp_path / "out").exists()


# -- invalid entries of the case file: the line names the file, the key and the reason ----------------
FILE_ERRORS = [
    # (patch of BASE, dotted key in the message, reason fragment)
    ({"foo": {"x": 1}}, "foo", "unknown section"),
    ({"model": {"bogus": 1}}, "model.bogus", "unknown key"),
    ({"model": 3}, "model", "must be a table"),
    ({"model": {"beta": "4"}}, "model.beta", "must be a number"),
    ({"domain": {"cells": 64.0}}, "domain.cells", "must be an integer"),
    ({"model": {"beta": True}}, "model.beta", "must be a number"),
    ({"solver": {"cfl": False}}, "solver.cfl", "must be a number"),
    ({"model": {"beta": -0.5}}, "model.beta", ">= 0"),
    ({"solver": {"cfl": 1.01}}, "solver.cfl", "<= 1"),
    ({"domain": {"cells": 2}}, "domain.cells", ">= 3"),
    ({"solver": {"t_end": 0.0}}, "solver.t_end", "> 0"),
    ({"solver": {"t_end": -3.0}}, "solver.t_end", "> 0"),
    ({"model": {"kind": "XY"}}, "model.kind", "must be one of"),
    ({"model": {"Q": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]}}, "model.Q", "2 x 2"),
    ({"model": {"Q": [[1.0, 0.0], [0.0]]}}, "model.Q", "2 x 2"),
    ({"output": {"plots": 1}}, "output.plots", "true or false"),
    ({"initial": {"kind": "vmf"}}, "initial.centers", "centre"),
    ({"initial": {"kind": "vmf", "centers": [[1.0, 0.0], [0.0, 1.0]], "kappas": [4.0]}}, "initial.kappas",
     "one concentration per centre"),
    ({"initial": {"kind": "vmf", "centers": [[1.0, 0.0]], "kappas": [4.0, 2.0]}}, "initial.kappas",
     "one concentration per centre"),
    ({"initial": {"kind": "vmf", "centers": [[1.0, 0.0, 0.0]], "kappas": [4.0]}}, "initial.centers", "length 2"),
    ({"initial": {"kind": "modes", "modes": [{"k": 1, "amplitude": 1.5}, {"k": 3, "amplitude": 0.2}]}},
     "initial.modes", "negative"),
    ({"initial": {"kind": "modes", "modes": []}}, "initial.modes", "at least one mode"),
    ({"initial": {"kind": "python"}}, "initial.function", "needs initial.function"),
    ({"initial": {"kind": "python", "function": "nofile.py:f"}}, "initial.function", "no such file"),
    ({"initial": {"kind": "python", "function": "dens.py"}}, "initial.function", "file.py:name"),
    ({"initial": {"kind": "python", "function": "dens.py:nope"}}, "initial.function", "'nope'"),
    ({"initial": {"kind": "python", "function": "dens.py:boom"}}, "initial.function", "kaboom from the user function"),
    ({"initial": {"kind": "python", "function": "no_such_module_xyz:f"}}, "initial.function", "cannot import"),
    ({"solver": {"backend": "spectral"}, "domain": {"manifold": "sphere", "mesh": "icosahedral:1"},
      "model": {"beta": 200.0, "Q": [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]]},
      "initial": {"kind": "uniform", "modes": []}},
     "solver.backend", "coefficient matrix of more than 2 GB"),
    ({"domain": {"mesh": "icosahedral:x", "manifold": "sphere"}, "initial": {"kind": "uniform", "modes": []}}, "domain.mesh",
     "LEVEL"),
]


@pytest.mark.parametrize("patch, key, reason", FILE_ERRORS, ids=[f"{e[1]}-{e[2]}"[:50] for e in FILE_ERRORS])
def test_bad_case_file_entry(capsys, tmp_path, no_advance, patch, key, reason):
    (tmp_path / "dens.py").write_text(DENSITIES)
    path = write_case(tmp_path / "bad.toml", patch)
    rc, _, err = cli(capsys, "run", path, "--out", tmp_path / "out", "--quiet")
    assert rc == 2
    one_line(err, str(path), key, reason)
    assert not no_advance
    assert not (tmp_path / "out").exists()


def test_set_overrides_a_bad_file_value_and_vice_versa(capsys, tmp_path):
    # a bad value in the file is fixed by --set ...
    path = write_case(tmp_path / "bad.toml", {"model": {"beta": -1.0}})
    rc, _, err = cli(capsys, "run", path, "--set", "model.beta=2", "--out", tmp_path / "a", "--quiet")
    assert rc == 0, err
    # ... and the file's error is reported against the file when --set touches another key
    rc, _, err = cli(capsys, "run", path, "--set", "model.kind=USA", "--out", tmp_path / "b", "--quiet")
    assert rc == 2
    one_line(err, str(path), "model.beta", ">= 0")


def test_malformed_toml(capsys, tmp_path, no_advance):
    path = tmp_path / "broken.toml"
    path.write_text("[domain\ncells = 32\n")
    rc, _, err = cli(capsys, "run", path, "--out", tmp_path / "out", "--quiet")
    assert rc == 2
    one_line(err, str(path), "malformed TOML", "line 1")
    path.write_text("[domain]\ncells = 32\ncells = 64\n")  # duplicate key
    rc, _, err = cli(capsys, "run", path, "--out", tmp_path / "out", "--quiet")
    assert rc == 2
    one_line(err, str(path), "malformed TOML", "line 3")
    path.write_text("[model]\nbeta = 1" + "0" * 5000 + "\n")  # int() refuses > 4300 digits
    rc, _, err = cli(capsys, "run", path, "--out", tmp_path / "out", "--quiet")
    assert rc == 2
    one_line(err, str(path), "malformed TOML")
    assert not no_advance


def test_missing_case_file(capsys, tmp_path):
    path = tmp_path / "nowhere" / "case.toml"
    rc, _, err = cli(capsys, "run", path, "--out", tmp_path / "out", "--quiet")
    assert rc == 2
    one_line(err, str(path), "no such file")
    assert not (tmp_path / "out").exists()


def test_unreadable_case_file(capsys, tmp_path):
    folder = tmp_path / "a_directory.toml"
    folder.mkdir()
    rc, _, err = cli(capsys, "run", folder, "--out", tmp_path / "out", "--quiet")
    assert rc == 2
    one_line(err, str(folder), "cannot read")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    rc, _, err = cli(capsys, "run", binary, "--out", tmp_path / "out", "--quiet")
    assert rc == 2
    one_line(err, str(binary), "cannot read")


def test_command_line_syntax_errors(capsys, case):
    rc, _, err = cli(capsys)  # a bare `meanfield`: the usage (tests/test_cli_polish.py), status 2
    assert rc == 2 and err.startswith("usage: meanfield")
    rc, _, err = cli(capsys, "run", case, "--bogus-option")
    assert rc == 2
    one_line(err, "--bogus-option")
    rc, _, err = cli(capsys, "frobnicate", case)
    assert rc == 2
    one_line(err, "frobnicate")


def test_function_error_message_stays_on_one_line(capsys, tmp_path):
    (tmp_path / "dens.py").write_text(DENSITIES)
    path = write_case(tmp_path / "c.toml", {"initial": {"kind": "python", "function": "dens.py:two_lines"}})
    rc, _, err = cli(capsys, "run", path, "--out", tmp_path / "out", "--quiet")
    assert rc == 2
    one_line(err, str(path), "initial.function", "first line", "second line")


def test_function_set_on_command_line_names_set(capsys, tmp_path):
    (tmp_path / "dens.py").write_text(DENSITIES)
    path = write_case(tmp_path / "c.toml")
    rc, _, err = cli(capsys, "run", path, "--set", "initial.kind=python", "--set", "initial.function=dens.py:boom",
                     "--out", tmp_path / "out", "--quiet")
    assert rc == 2
    one_line(err, "--set", "initial.function", "kaboom")


def test_function_relative_to_case_file(capsys, tmp_path, monkeypatch):
    cases = tmp_path / "cases"
    path = write_case(cases / "c.toml", {"initial": {"kind": "python", "function": "dens.py:good"}})
    (cases / "dens.py").write_text(DENSITIES)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the case file, not to the working directory
    rc, _, err = cli(capsys, "run", Path("..") / "cases" / "c.toml", "--out", "out", "--quiet")
    assert rc == 0, err
    assert err == ""
    import tomllib

    resolved = tomllib.loads((elsewhere / "out" / "case.toml").read_text())
    assert resolved["initial"]["function"] == f"{(cases / 'dens.py').resolve()}:good"
    final = np.load(elsewhere / "out" / "final.npz")
    assert abs(final["masses"].sum() - 1.0) < 1e-13
    # the density 1 + x/2 was used: more mass on the right half (x > 0) at t = 0
    first = np.load(sorted((elsewhere / "out" / "snapshots").glob("*.npz"))[0])
    right = first["points"][:, 0] > 0
    assert first["masses"][right].sum() > 0.6


def test_output_directory_not_writable(capsys, case, tmp_path, no_advance):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = blocker / "run"
    rc, stdout, err = cli(capsys, "run", case, "--out", out)
    assert rc == 2
    one_line(err, "--out", str(out), "not writable")
    assert not no_advance  # rejected before the run started
    assert "done" not in stdout
    assert blocker.read_text() == "not a directory"


# -- failures during the run: exit status 1, one line, last_good.npz ----------------------------------
def test_usa_beta_that_must_overflow_is_invalid_input(capsys, case, tmp_path):
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "run", case, "--set", "model.kind=USA", "--set", "model.beta=680", "--out", out)
    assert rc == 2
    one_line(err, "--set", "model.beta", "overflows")
    assert not (out / "final.npz").exists()


def test_usa_overflow_fails_with_last_good(capsys, case, tmp_path):
    # beta is fine, but V = 1e306 I makes the sum overflow: detected in the run, exit 1
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "run", case, "--set", "model.kind=USA", "--set", "model.V=[[1e306,0],[0,1e306]]", "--set", "model.beta=30",
                     "--set", "output.plots=true", "--out", out, "--quiet")
    assert rc == 1
    line = one_line(err, "run failed", "overflow", "last_good.npz")
    assert str(out) in line
    lg = np.load(out / "last_good.npz")
    assert float(lg["t"]) == 0.0
    assert lg["t"].shape == ()
    assert lg["points"].shape == (32, 2)
    assert abs(lg["masses"].sum() - 1.0) < 1e-13
    assert np.all(np.isfinite(lg["masses"]))
    assert not (out / "final.npz").exists()
    assert not list(out.glob("*.png"))


class _NaNAfter:
    """A field backend that returns NaN after ``after`` calls: on every later call
    (``always``), or once, on the first later call from a time step (not the velocity
    output at the cell centres), the real field then seeing the NaN masses of the next
    Runge--Kutta stage (``once``)."""

    def __init__(self, inner, after, counter, mode):
        self.inner, self.after, self.counter, self.mode = inner, after, counter, mode
        self.poisoned = False
        self.name = "nan-after"
        self.model = inner.model

    def __call__(self, targets, sources, weights):
        self.counter[0] += 1
        if self.after is not None and self.counter[0] > self.after:
            if self.mode == "always" or (not self.poisoned and targets is not sources):
                self.poisoned = True
                return np.full((len(targets), targets.shape[1]), np.nan)
        return self.inner(targets, sources, weights)


def _patch_field(monkeypatch, after, mode="always"):
    counter = [0]
    original = meanfield.pde.solver.make_field
    monkeypatch.setattr(meanfield.pde.solver, "make_field",
                        lambda model, *args, **kwargs: _NaNAfter(original(model, "direct"), after, counter, mode))
    return counter


@pytest.mark.parametrize("fraction, mode", [(0.5, "always"), (0.8, "always"), (0.5, "once"), (0.65, "once")])
def test_nan_mid_run_fails_with_last_good(capsys, tmp_path, monkeypatch, fraction, mode):
    args = ["--set", "solver.t_end=0.5", "--set", "output.every=0.1", "--quiet"]
    path = write_case(tmp_path / "c.toml")
    # a clean run counts the field evaluations ...
    counter = _patch_field(monkeypatch, None)
    rc, _, err = cli(capsys, "run", path, *args, "--out", tmp_path / "clean")
    assert rc == 0, err
    total = counter[0]
    assert total > 10
    # ... then the field turns NaN part-way through
    _patch_field(monkeypatch, int(fraction * total), mode)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "run", path, *args, "--out", out)
    assert rc == 1
    one_line(err, "run failed", "last_good.npz")
    lg = np.load(out / "last_good.npz")
    t = float(lg["t"])
    assert 0.0 < t < 0.5
    assert np.all(np.isfinite(lg["masses"])) and abs(lg["masses"].sum() - 1.0) < 1e-13
    # the last good state is the last snapshot written before the failure
    snaps = sorted((out / "snapshots").glob("*.npz"))
    last = np.load(snaps[-1])
    assert float(last["t"]) == t
    np.testing.assert_array_equal(last["masses"], lg["masses"])
    # and it is the state the clean run had at that time
    clean = np.load(tmp_path / "clean" / "snapshots" / snaps[-1].name)
    np.testing.assert_array_equal(clean["masses"], lg["masses"])
    assert not (out / "final.npz").exists()


# -- the installed console script --------------------------------------------------------------------
def _script() -> str:
    found = shutil.which("meanfield", path=str(Path(sys.executable).parent)) or shutil.which("meanfield")
    if found is None:
        pytest.skip("the meanfield console script is not installed")
    return found


def _run_script(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="default")
    return subprocess.run([_script(), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def test_console_script_invalid_input(tmp_path):
    case = write_case(tmp_path / "c.toml")
    (tmp_path / "dens.py").write_text(DENSITIES)
    p = _run_script("run", case, "--set", "model.beta=-1", "--out", tmp_path / "out")
    assert p.returncode == 2
    one_line(p.stderr, "--set", "model.beta", ">= 0")
    p = _run_script("run", tmp_path / "missing.toml", "--out", tmp_path / "out")
    assert p.returncode == 2
    one_line(p.stderr, str(tmp_path / "missing.toml"), "no such file")
    # numpy's RuntimeWarning from the user's function must not add lines to stderr
    p = _run_script("run", case, "--set", "initial.kind=python", "--set", "initial.function=dens.py:log_zero",
                    "--out", tmp_path / "out")
    assert p.returncode == 2
    one_line(p.stderr, "--set", "initial.function", "not finite")
    assert not (tmp_path / "out").exists()


def test_console_script_run_failure_and_success(tmp_path):
    case = write_case(tmp_path / "c.toml")
    p = _run_script("run", case, "--set", "model.kind=USA", "--set", "model.V=[[1e306,0],[0,1e306]]", "--set", "model.beta=30",
                    "--out", tmp_path / "bad")
    assert p.returncode == 1
    one_line(p.stderr, "run failed", "last_good.npz")
    assert (tmp_path / "bad" / "last_good.npz").is_file()
    p = _run_script("run", EXAMPLE, *FAST, "--out", tmp_path / "good")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert (tmp_path / "good" / "final.npz").is_file()

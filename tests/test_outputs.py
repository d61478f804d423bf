"""The output directory's contract (SPEC section 4, docs/outputs.md), through the CLI."""

from __future__ import annotations

import csv
import math
import os
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest

from meanfield.io import output
from meanfield.io.case import SCHEMA
from meanfield.cli import main

CELLS = 64
#: A small clustering case (like cases/circle_sa_clusters.toml, which others may edit).
CASE_TEXT = """\
[domain]
manifold = "circle"
cells = 1024

[model]
kind = "SA"
beta = 9.0

[initial]
kind = "modes"
modes = [
  { k = 1, amplitude = 0.01, phase = 0.3 },
  { k = 4, amplitude = 0.01, phase = 0.7 },
  { k = 6, amplitude = 0.01, phase = 4.1 },
]

[solver]
t_end = 30.0

[output]
every = 1.0
"""
COLUMNS = ("t", "mass", "min_density", "energy", "order_parameter", "n_clusters")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def case_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("case") / "clusters.toml"
    path.write_text(CASE_TEXT)
    return path


def run_cli(out: Path, *sets: str, case: Path, extra=()) -> None:
    args = ["run", str(case), "--out", str(out), "--quiet", *extra]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0


def snapshot_files(out: Path) -> list[Path]:
    return sorted((out / "snapshots").glob("*.npz"))


def read_rows(out: Path) -> tuple[list[str], list[dict]]:
    with open(out / "diagnostics.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames), rows


def expected_times(t_end: float, every: float) -> list[float]:
    n = int(math.floor(t_end / every + 1e-9))
    times = [k * every for k in range(n + 1)]
    if t_end - times[-1] > 1e-9 * t_end:
        times.append(t_end)
    else:
        times[-1] = t_end
    return times


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, case_file) -> Path:
    """64 cells, t_end = 0.5, every = 0.2 (not a divisor of t_end), pictures on."""
    out = tmp_path_factory.mktemp("outputs") / "run"
    run_cli(out, f"domain.cells={CELLS}", "solver.t_end=0.5", "output.every=0.2", "output.plots=true", case=case_file)
    return out


@pytest.fixture(scope="module")
def even_dir(tmp_path_factory, case_file) -> Path:
    """t_end = 0.3 = 3 * 0.1 (in floating point 3 * 0.1 != 0.3), no pictures."""
    out = tmp_path_factory.mktemp("outputs") / "even"
    run_cli(out, "domain.cells=32", "solver.t_end=0.3", "output.every=0.1", "output.plots=false", case=case_file)
    return out


def test_case_toml_is_fully_resolved(run_dir):
    case = tomllib.loads((run_dir / "case.toml").read_text())
    # a PDE run reads neither [particles] nor [compare]: they are written only where the case
    # sets them (test_unread_sections_keep_what_the_case_sets)
    assert set(case) == set(SCHEMA) - {"particles", "compare"}
    for section, keys in SCHEMA.items():
        if section not in case:
            continue
        # every key, but those whose default is "not set" (model.heads, model.perceptron,
        # model.random_heads: absent means the model has none)
        # (the keys another manifold reads are left out: domain.mesh, domain.edge_points on the circle)
        expected = {k for k, spec in keys.items() if (spec.default is not None
                    or (section, k) in (("output", "every"), ("domain", "d")) or spec.check.__name__ == "matrix")
                    and not (section == "domain" and k in ("mesh", "edge_points"))}
        missing = expected - set(case[section])
        assert not missing, f"[{section}] lacks {sorted(missing)}"
        assert set(case[section]) == expected
    assert case["domain"]["cells"] == CELLS
    assert case["solver"]["t_end"] == 0.5
    assert case["output"]["every"] == 0.2
    assert case["model"]["beta"] == 9.0  # from the case file
    assert case["model"]["Q"] == [[1.0, 0.0], [0.0, 1.0]]  # defaults written out
    assert case["initial"]["modes"][1] == {"k": 4, "amplitude": 0.01, "phase": 0.7}


def test_rerun_of_case_toml_is_bitwise_identical(run_dir, tmp_path):
    again = tmp_path / "again"
    assert main(["run", str(run_dir / "case.toml"), "--out", str(again), "--quiet"]) == 0
    a, b = np.load(run_dir / "final.npz"), np.load(again / "final.npz")
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name
    assert (again / "case.toml").read_text() == (run_dir / "case.toml").read_text()
    assert (again / "diagnostics.csv").read_text() == (run_dir / "diagnostics.csv").read_text()


def test_default_every_is_written(tmp_path):
    out = tmp_path / "run"
    run_cli(out, "domain.cells=16", "solver.t_end=0.2", "output.plots=false",
            case=_write(tmp_path / "c.toml", "[solver]\nt_end = 0.2\n"))
    case = tomllib.loads((out / "case.toml").read_text())
    assert case["output"]["every"] == pytest.approx(0.2 / 20)
    assert len(snapshot_files(out)) == 21


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_diagnostics_csv(run_dir):
    header, rows = read_rows(run_dir)
    for column in COLUMNS:
        assert column in header
    snaps = snapshot_files(run_dir)
    assert len(rows) == len(snaps) == 4
    t = [float(r["t"]) for r in rows]
    assert t[0] == 0.0
    assert t[-1] == 0.5
    assert t == [float(np.load(p)["t"]) for p in snaps]
    for r in rows:
        assert abs(float(r["mass"]) - 1.0) < 1e-13
        assert float(r["min_density"]) > 0
        assert int(r["n_clusters"]) >= 0
        assert 0.0 <= float(r["order_parameter"]) <= 1.0
        assert math.isfinite(float(r["energy"]))


@pytest.mark.parametrize("which, t_end, every", [("run_dir", 0.5, 0.2), ("even_dir", 0.3, 0.1)])
def test_snapshot_times(request, which, t_end, every):
    out = request.getfixturevalue(which)
    snaps = snapshot_files(out)
    assert [p.name for p in snaps] == [f"{k:05d}.npz" for k in range(len(snaps))]
    times = [float(np.load(p)["t"]) for p in snaps]
    want = expected_times(t_end, every)
    assert len(times) == len(want)
    assert times[0] == 0.0 and times[-1] == t_end  # exactly
    np.testing.assert_allclose(times, want, rtol=0, atol=1e-12)
    assert all(b > a for a, b in zip(times, times[1:]))
    _, rows = read_rows(out)
    assert [float(r["t"]) for r in rows] == times


def test_snapshot_arrays(run_dir):
    for path in snapshot_files(run_dir) + [run_dir / "final.npz"]:
        z = np.load(path)
        for name in ("t", "points", "masses", "areas", "velocity"):
            assert name in z.files, f"{path.name} lacks {name}"
        assert z["t"].shape == ()
        assert z["points"].shape == (CELLS, 2)
        assert z["masses"].shape == (CELLS,)
        assert z["areas"].shape == (CELLS,)
        assert z["velocity"].shape == (CELLS, 2)
        assert abs(z["masses"].sum() - 1.0) <= 1e-13
        assert np.all(z["masses"] >= 0)
        np.testing.assert_allclose(np.linalg.norm(z["points"], axis=1), 1.0, rtol=0, atol=1e-14)
        assert np.all(z["areas"] > 0)
        assert abs(z["areas"].sum() - 2 * np.pi) < 1e-12
        v = z["velocity"]
        assert np.all(np.isfinite(v))
        # the stored velocity is the field of the stored masses at the stored points, computed
        # here from the definition (SA, beta = 9): softmax average of the sources, projected
        x, m = z["points"], z["masses"]
        logits = 9.0 * x @ x.T
        k = np.exp(logits - logits.max(axis=1, keepdims=True)) * m
        avg = (k @ x) / k.sum(axis=1, keepdims=True)
        exact = avg - np.einsum("ij,ij->i", avg, x)[:, None] * x
        np.testing.assert_allclose(v, exact, rtol=0, atol=1e-13 * max(1.0, np.abs(exact).max()))


def test_final_equals_last_snapshot(run_dir):
    final = np.load(run_dir / "final.npz")
    last = np.load(snapshot_files(run_dir)[-1])
    assert sorted(final.files) == sorted(last.files)
    for name in final.files:
        np.testing.assert_array_equal(final[name], last[name], err_msg=name)
    assert float(final["t"]) == 0.5


def test_no_leftover_temporary_files(run_dir, even_dir):
    for out in (run_dir, even_dir):
        hidden = [p for p in out.rglob("*") if p.name.startswith(".")]
        assert not hidden, hidden
        assert not (out / "last_good.npz").exists()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_pictures(run_dir):
    for name in ("density.png", "diagnostics.png"):
        path = run_dir / name
        assert path.is_file(), name
        assert path.stat().st_size > 10_000, name
        width, height = _png_size(path)
        assert width > 200 and height > 200
        assert path.read_bytes()[-8:-4] == b"IEND"


def test_no_pictures_when_disabled(even_dir):
    assert not list(even_dir.glob("*.png"))
    assert (even_dir / "final.npz").is_file()


def test_set_toml_values(tmp_path, case_file):
    base = ("domain.cells=32", "solver.t_end=0.05", "output.every=0.05", "output.plots=false", "model.beta=2")
    one, two = tmp_path / "v1", tmp_path / "v2"
    run_cli(one, *base, "model.kind=USA", case=case_file)  # bare string
    run_cli(two, *base, 'model.kind="USA"', "model.V=[[2, 0], [0, 2.0]]", "initial.modes=[{k = 3, amplitude = 0.1}]",
            case=case_file)
    c1 = tomllib.loads((one / "case.toml").read_text())
    c2 = tomllib.loads((two / "case.toml").read_text())
    assert c1["model"]["kind"] == c2["model"]["kind"] == "USA"
    assert c1["model"]["beta"] == 2.0
    assert c2["model"]["V"] == [[2.0, 0.0], [0.0, 2.0]]
    assert c2["initial"]["modes"] == [{"k": 3, "amplitude": 0.1, "phase": 0.0}]
    # and the values were used: the field is linear in V ...
    v1 = np.load(snapshot_files(one)[0])
    two_same_init = tmp_path / "v3"
    run_cli(two_same_init, *base, "model.kind=USA", "model.V=[[2, 0], [0, 2]]", case=case_file)
    v3 = np.load(snapshot_files(two_same_init)[0])
    np.testing.assert_allclose(v3["velocity"], 2 * v1["velocity"], rtol=1e-12, atol=1e-300)
    assert np.abs(v1["velocity"]).max() > 0
    # ... and the k = 3 mode is in the initial masses of the second run
    v2 = np.load(snapshot_files(two)[0])
    theta = np.arctan2(v2["points"][:, 1], v2["points"][:, 0])
    coef = v2["masses"] @ np.cos(3 * theta)
    assert coef == pytest.approx(0.05, rel=0.05)  # (1 + a cos 3θ)/2π integrates to a/2 against cos 3θ


def test_run_is_repeatable_into_the_same_directory(tmp_path, case_file):
    out = tmp_path / "twice"
    sets = ("domain.cells=16", "solver.t_end=0.1", "output.every=0.05", "output.plots=false")
    run_cli(out, *sets, case=case_file)
    first = np.load(out / "final.npz")["masses"].copy()
    run_cli(out, *sets, case=case_file)
    np.testing.assert_array_equal(np.load(out / "final.npz")["masses"], first)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


# -- atomic_write ---------------------------------------------------------------------------------------
def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_content(tmp_path):
    target = tmp_path / "file.txt"
    output.atomic_write(target, "old\n")
    output.atomic_write(target, "new ünïcode\n")
    assert target.read_text(encoding="utf-8") == "new ünïcode\n"
    output.atomic_write(target, b"\x00\x01bytes")
    assert target.read_bytes() == b"\x00\x01bytes"
    assert _listing(tmp_path) == ["file.txt"]


def test_atomic_write_fsync_failure_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "file.txt"
    target.write_text("old content")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        output.atomic_write(target, "new content that never lands")
    assert target.read_text() == "old content"
    assert _listing(tmp_path) == ["file.txt"]


def test_atomic_write_failure_while_writing_keeps_old_content(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old content")
    # a lone surrogate cannot be encoded: the write fails after the temporary file exists
    with pytest.raises(UnicodeEncodeError):
        output.atomic_write(target, "x" * 100_000 + "\ud800")
    assert target.read_text() == "old content"
    assert _listing(tmp_path) == ["file.txt"]
    with pytest.raises(TypeError):
        output.atomic_write(target, {"not": "bytes"})
    assert target.read_text() == "old content"
    assert _listing(tmp_path) == ["file.txt"]


def test_atomic_write_new_file_does_not_exist_after_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed (simulated)")))
    with pytest.raises(OSError, match="simulated"):
        output.atomic_write(tmp_path / "new.txt", "data")
    assert _listing(tmp_path) == []


def test_atomic_write_permissions_follow_umask(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    target = tmp_path / "file.txt"
    output.atomic_write(target, "x")
    # not the 0600 of a temporary file: what open() would have created
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_unread_sections_keep_what_the_case_sets(tmp_path, case_file):
    """``meanfield run`` with ``particles.n = 77``: its case.toml keeps [particles] n = 77
    only, and ``meanfield particles DIR/case.toml`` runs 77 tokens."""
    out = tmp_path / "pde"
    run_cli(out, "domain.cells=32", "solver.t_end=0.1", "output.plots=false", "particles.n=77", case=case_file)
    case = tomllib.loads((out / "case.toml").read_text())
    assert case["particles"] == {"n": 77} and "compare" not in case
    assert main(["particles", str(out / "case.toml"), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert tomllib.loads((tmp_path / "p" / "case.toml").read_text())["particles"]["n"] == 77

"""`meanfield particles` and `meanfield compare` through the command line."""

import csv
from pathlib import Path

import numpy as np
import pytest

from meanfield.cli import main

CIRCLE = """
[domain]
cells = 128
[model]
beta = 1.0
[initial]
kind = "modes"
modes = [{k = 1, amplitude = 0.5}, {k = 2, amplitude = 0.3, phase = 1.0}]
[solver]
t_end = 1.0
[output]
every = 0.25
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
t_end = 0.5
[output]
every = 0.25
"""


@pytest.fixture
def circle(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CIRCLE)
    return path


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def snapshots(out: Path):
    return [np.load(p) for p in sorted((out / "snapshots").glob("*.npz"))]


def test_particles_writes_the_contract_files(capsys, circle, tmp_path):
    out = tmp_path / "p"
    rc, _, err = run(capsys, "particles", circle, "--n", 300, "--seed", 7, "--out", out, "--quiet")
    assert rc == 0, err
    snaps = snapshots(out)
    assert [float(s["t"]) for s in snaps] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for s in snaps:
        assert s["points"].shape == (300, 2) and s["masses"].shape == (300,) and s["velocity"].shape == (300, 2)
        assert "areas" not in s.files
        assert np.allclose(np.linalg.norm(s["points"], axis=1), 1.0, atol=1e-14)
        assert abs(s["masses"].sum() - 1.0) < 1e-14
    rows = list(csv.DictReader((out / "diagnostics.csv").open()))
    assert {"t", "mass", "min_density", "energy", "order_parameter", "n_clusters"} <= set(rows[0])
    # SA with beta = 1 contracts: the order parameter grows
    assert float(rows[-1]["order_parameter"]) > float(rows[0]["order_parameter"]) + 0.05
    final = np.load(out / "final.npz")
    assert np.array_equal(final["points"], snaps[-1]["points"])
    # the resolved case repeats the run: same sample, same trajectory
    text = (out / "case.toml").read_text()
    assert "n = 300" in text and "seed = 7" in text
    rc, _, _ = run(capsys, "particles", out / "case.toml", "--out", tmp_path / "again", "--quiet")
    assert rc == 0
    assert np.array_equal(np.load(tmp_path / "again" / "final.npz")["points"], final["points"])


def test_particles_on_the_sphere_write_a_point_cloud_series(capsys, tmp_path):
    case = tmp_path / "s.toml"
    case.write_text(SPHERE)
    out = tmp_path / "s"
    rc, _, err = run(capsys, "particles", case, "--n", 200, "--out", out, "--quiet")
    assert rc == 0, err
    import pyvista as pv

    series = (out / "solution.pvd").read_text()
    assert series.count("<DataSet") == 3
    cloud = pv.read(out / "vtk" / "00002.vtp")
    assert cloud.n_points == 200 and {"weights", "velocity"} <= set(cloud.point_data.keys())
    assert np.allclose(cloud.points, np.load(out / "final.npz")["points"], atol=1e-6)
    assert (out / "particles.png").stat().st_size > 10_000


def test_fixed_points_and_euler(capsys, tmp_path):
    case = tmp_path / "pts.toml"
    case.write_text(CIRCLE.replace('kind = "modes"', 'kind = "points"\npoints = [[1, 0], [0, 1], [-1, 0.2]]')
                    .replace("[solver]", '[solver]\ndt = 0.05\nintegrator = "euler"'))
    out = tmp_path / "pts"
    rc, _, err = run(capsys, "particles", case, "--out", out, "--quiet")
    assert rc == 0, err
    first = snapshots(out)[0]
    assert np.allclose(first["points"][2], np.array([-1, 0.2]) / np.hypot(1, 0.2))
    rows = list(csv.DictReader((out / "diagnostics.csv").open()))
    assert [int(r["steps"]) for r in rows] == [0, 5, 10, 15, 20]  # fixed step 0.05


def test_compare_writes_distances_that_decay_with_n(capsys, circle, tmp_path):
    out = tmp_path / "cmp"
    rc, stdout, err = run(capsys, "compare", circle, "--particles", "64,1024", "--seeds", 3, "--out", out)
    assert rc == 0, err
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert list(rows[0]) == ["t", "n", "seed", "metric", "distance"]
    assert len(rows) == 5 * 2 * 3  # times x n x seeds
    assert {r["metric"] for r in rows} == {"w1"}
    d = {n: np.mean([float(r["distance"]) for r in rows if r["n"] == n]) for n in ("64", "1024")}
    # Monte Carlo rate n^(-1/2): a factor 16 in n is a factor ~4 in distance; with 3 seeds
    # accept exponents between -0.33 and -0.8 (16^0.33 = 2.5, 16^0.8 = 9.2)
    assert 2.5 < d["64"] / d["1024"] < 9.2
    assert "exponent" in stdout and (out / "pde" / "final.npz").is_file()
    assert (out / "compare.txt").read_text().count("\n") == 2 + 5


@pytest.mark.parametrize("args, flag, key", [
    (("particles", "--n", "0"), "--n", "particles.n"),
    (("particles", "--seed", "x"), "--seed", "particles.seed"),
    (("compare", "--particles", "10,abc"), "--particles", "compare.particles"),
    (("compare", "--metric", "w3"), "--metric", "compare.metric"),
    (("compare", "--seeds", "0"), "--seeds", "compare.seeds"),
])
def test_bad_flags_exit_2_naming_the_flag(capsys, circle, tmp_path, args, flag, key):
    rc, _, err = run(capsys, args[0], circle, *args[1:], "--out", tmp_path / "x")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and key in lines[0] and "Traceback" not in err
    assert not (tmp_path / "x").exists()

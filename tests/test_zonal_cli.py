"""The zonal PDE and any dimension from case files: ``domain.manifold = "zonal"``,
``domain.d``, Gegenbauer ``initial.modes``, what a zonal run writes, and the refusals."""

import csv

import numpy as np
import pytest

from _helpers import MEANFIELD, launch

pytestmark = pytest.mark.skipif(MEANFIELD is None, reason="the meanfield script is not installed")

CASE = """
[domain]
manifold = "zonal"
d = 5
cells = 96
[model]
kind = "SA"
beta = 4.0
[initial]
kind = "modes"
modes = [{l = 2, amplitude = 0.05}]
[solver]
t_end = 1.0
[output]
every = 0.5
plots = false
"""


def write(tmp_path, text=CASE):
    path = tmp_path / "z.toml"
    path.write_text(text)
    return path


def test_a_zonal_run_writes_bands_on_one_meridian(tmp_path):
    out = tmp_path / "run"
    proc = launch(1, "run", write(tmp_path), "--out", out)
    assert proc.returncode == 0, proc.stderr
    z = np.load(out / "final.npz")
    assert z["points"].shape == (96, 5) and np.abs(z["points"][:, 2:]).max() == 0.0
    assert np.allclose(np.linalg.norm(z["points"], axis=1), 1.0, rtol=0, atol=1e-15)
    assert abs(z["masses"].sum() - 1.0) <= 1e-14 and z["masses"].min() >= 0
    assert abs(z["areas"].sum() - 8 * np.pi ** 2 / 3) <= 1e-12  # |S^4| = 8 pi^2 / 3
    # the initial density is 1 + 0.05 C_2^{3/2}(cos phi), up to the band averages
    z0 = np.load(out / "snapshots" / "00000.npz")
    phi = np.arccos(z0["points"][:, 0])
    from scipy.special import eval_gegenbauer
    want = (1 + 0.05 * eval_gegenbauer(2, 1.5, np.cos(phi))) / (8 * np.pi ** 2 / 3)
    assert np.abs(z0["density"] - want).max() < 2e-3 * want.max()
    with open(out / "diagnostics.csv") as fh:
        rows = list(csv.DictReader(fh))
    # a mode l = 2 is symmetric about the equator: the mean of x stays 0, no energy column value
    assert abs(float(rows[-1]["order_parameter"])) < 1e-12 and rows[-1]["energy"] == ""


@pytest.mark.parametrize("change, key", [
    (("d = 5", "d = 2"), "domain.d"),
    (("d = 5", "d = 1"), "domain.d"),
    (("manifold = \"zonal\"\nd = 5", "manifold = \"circle\"\nd = 3"), "domain.d"),
    (("{l = 2, amplitude = 0.05}", "{l = 2, m = 1, amplitude = 0.05}"), "initial.modes"),
    (("kind = \"SA\"", "kind = \"SA\"\nQ = [[1, 0, 0, 0, 0], [0, 2, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], "
                        "[0, 0, 0, 0, 1]]"), "model.Q"),
    (("kind = \"modes\"\nmodes = [{l = 2, amplitude = 0.05}]", "kind = \"vmf\"\ncenters = [[0, 1, 0, 0, 0]]\n"
                                                                "kappas = [2.0]"), "initial.centers"),
    (("kind = \"SA\"", "kind = \"SA\"\nmask = \"causal\""), "model.mask"),
])
def test_zonal_refusals_exit_2_naming_the_key(tmp_path, change, key):
    proc = launch(1, "run", write(tmp_path, CASE.replace(*change)))
    assert proc.returncode == 2 and key in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_sphere_mesh_needs_d_3(tmp_path):
    text = CASE.replace("manifold = \"zonal\"\nd = 5\ncells = 96", "manifold = \"sphere\"\nd = 4\nmesh = \"icosahedral:2\"")
    proc = launch(1, "run", write(tmp_path, text))
    assert proc.returncode == 2 and "domain.mesh" in proc.stderr, proc.stderr
    text = CASE.replace("manifold = \"zonal\"\nd = 5\ncells = 96", "manifold = \"sphere\"\nd = 4")
    proc = launch(1, "run", write(tmp_path, text))
    assert proc.returncode == 2 and "domain.d" in proc.stderr and "zonal" in proc.stderr, proc.stderr


PARTICLES = """
[domain]
manifold = "sphere"
d = 8
[model]
kind = "SA"
beta = 4.0
[initial]
kind = "modes"
modes = [{l = 1, amplitude = 0.1}]
[solver]
t_end = 2.0
[output]
every = 1.0
[particles]
n = 48
"""


def test_particles_on_s7_from_a_case_file(tmp_path):
    """``domain.d = 8``: tokens on S^7 sampled from 1 + 0.1 C_1^{(3)}(x_1) = 1 + 0.6 x_1, evolved
    by the same field; no mesh (the density columns stay empty), a 2-D projection and the
    Gram matrix as the picture."""
    path = tmp_path / "p.toml"
    path.write_text(PARTICLES)
    out = tmp_path / "run"
    proc = launch(1, "particles", path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    z = np.load(out / "final.npz")
    assert z["points"].shape == (48, 8)
    assert np.allclose(np.linalg.norm(z["points"], axis=1), 1.0, rtol=0, atol=1e-12)
    assert (out / "particles.png").is_file() and not (out / "solution.pvd").exists()
    with open(out / "diagnostics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["min_density"] == "" and float(rows[-1]["order_parameter"]) > float(rows[0]["order_parameter"])


def test_zonal_modes_are_sampled_exactly_in_any_d():
    """The density 1 + a C_1^{((d-2)/2)}(x_1) = 1 + a (d - 2) x_1 on S^{d-1} has E[x_1] =
    a (d - 2) E[x_1^2] = a (d - 2) / d; 40000 samples (SE ~ 0.0025)."""
    from meanfield.particles.sampling import sample

    for d, a in ((4, 0.3), (8, 0.1)):
        x, _ = sample({"kind": "modes", "modes": [{"l": 1, "amplitude": a}]}, d, 40000, 3)
        want = a * (d - 2) / d
        assert abs(x[:, 0].mean() - want) < 4 * np.sqrt(1.0 / d / 40000), (d, x[:, 0].mean(), want)


def test_a_run_made_before_domain_d_existed_still_restarts(tmp_path):
    """Runs written before ``domain.d`` lack it in their case.toml (it resolves to the manifold's
    own dimension) and list the keys another manifold reads (no longer written): they are the
    same case and restart."""
    path = tmp_path / "c.toml"
    path.write_text("[domain]\ncells = 64\n[model]\nbeta = 3.0\n[initial]\nkind = \"modes\"\n"
                    "modes = [{k = 2, amplitude = 0.1}]\n[solver]\nt_end = 0.5\n[output]\nevery = 0.25\nplots = false\n")
    out = tmp_path / "run"
    assert launch(1, "run", path, "--out", out).returncode == 0
    stored = (out / "case.toml").read_text()
    assert "d = 2" in stored and "mesh" not in stored  # (a circle run writes no sphere-only keys)
    # an older run: no domain.d, and the sphere-only keys it used to write
    (out / "case.toml").write_text(stored.replace("d = 2\n", "mesh = \"icosahedral:4\"\nedge_points = 1\n"))
    proc = launch(1, "run", path, "--restart", out, "--set", "solver.t_end=1.0")
    assert proc.returncode == 0, proc.stderr


def test_zonal_pde_against_particles_in_d4(tmp_path):
    """``meanfield compare`` of a zonal case on S^3: W1 of the polar-angle laws of the zonal PDE
    and of n tokens sampled from the same zonal density falls like n^(-1/2) (200, 800, 3200
    tokens, 3 seeds; measured exponents in the docstring of docs/zonal.md's CLI section)."""
    text = CASE.replace("d = 5\ncells = 96", "d = 4\ncells = 256").replace(
        "modes = [{l = 2, amplitude = 0.05}]", "modes = [{l = 1, amplitude = 0.3}, {l = 2, amplitude = 0.1}]").replace(
        "plots = false", "plots = false\n[compare]\nparticles = [200, 800, 3200]\nseeds = 3")
    out = tmp_path / "cmp"
    proc = launch(1, "compare", write(tmp_path, text), "--out", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with open(out / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    ns = np.array([200, 800, 3200])
    for t in (0.0, 1.0):
        means = [np.mean([float(r["distance"]) for r in rows if float(r["t"]) == t and int(r["n"]) == n]) for n in ns]
        slope = np.polyfit(np.log(ns), np.log(means), 1)[0]
        assert -0.65 < slope < -0.38, (t, means, slope)

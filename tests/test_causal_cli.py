"""The causal mean field from the command line: what a causal ``meanfield run`` writes, its
restart, its refusals, MPI ranks, and ``meanfield compare`` of causal particles against it
(the distance in every position band falls like n^(-1/2))."""

import csv

import numpy as np
import pytest

from _helpers import MEANFIELD, MPIEXEC, launch

pytestmark = pytest.mark.skipif(MEANFIELD is None, reason="the meanfield script is not installed")

CASE = """
[domain]
cells = 96
positions = 6
[model]
beta = 3.0
mask = "causal"
alibi = 2.0
[initial]
kind = "python"
function = "f.py:f"
[solver]
t_end = 1.0
[output]
every = 0.5
plots = false
"""

FUNCTION = """import numpy as np

def f(s, x):
    theta = np.arctan2(x[:, 1], x[:, 0])
    return 1.0 + 0.4 * np.cos(2.0 * (theta - np.pi * s))
"""


def write_case(tmp_path, text=CASE):
    (tmp_path / "f.py").write_text(FUNCTION)
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_a_causal_run_writes_bands_times_cells(tmp_path):
    case = write_case(tmp_path)
    out = tmp_path / "run"
    proc = launch(1, "run", case, "--out", out)
    assert proc.returncode == 0, proc.stderr
    z = np.load(out / "final.npz")
    P, N = 6, 96
    assert np.allclose(z["positions"], (np.arange(P) + 0.5) / P, rtol=0, atol=1e-15)
    assert z["masses"].shape == (P, N) and z["points"].shape == (N, 2) and z["areas"].shape == (N,)
    assert np.abs(z["masses"].sum(axis=1) - 1.0 / P).max() <= 1e-14  # every band keeps its mass
    assert z["masses"].min() >= 0
    assert z["velocity"].shape == (P, N, 2)
    assert z["band_order_parameter"].shape == (P,) and z["band_clusters"].shape == (P,)
    # the initial data follow f(s, x): band p's second Fourier mode has phase 2 pi s_p
    z0 = np.load(out / "snapshots" / "00000.npz")
    theta = np.arctan2(z0["points"][:, 1], z0["points"][:, 0])
    phase = np.angle((z0["masses"] * np.exp(2j * theta)).sum(axis=1))
    want = np.angle(np.exp(2j * np.pi * z0["positions"]))
    assert np.abs(np.angle(np.exp(1j * (phase - want)))).max() < 1e-3
    with open(out / "diagnostics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[-1]["energy"] == "" and abs(float(rows[-1]["mass"]) - 1.0) < 1e-14
    assert "causal mean field on 6 position bands" in proc.stdout + proc.stderr


def test_a_causal_run_restarts_bitwise(tmp_path):
    case = write_case(tmp_path)
    full, part = tmp_path / "full", tmp_path / "part"
    assert launch(1, "run", case, "--out", full, "--set", "solver.t_end=2.0").returncode == 0
    assert launch(1, "run", case, "--out", part).returncode == 0
    proc = launch(1, "run", case, "--restart", part, "--set", "solver.t_end=2.0")
    assert proc.returncode == 0, proc.stderr
    a, b = np.load(full / "final.npz"), np.load(part / "final.npz")
    assert np.array_equal(a["density"], b["density"]) and float(a["t"]) == float(b["t"]) == 2.0


@pytest.mark.parametrize("change, key", [
    (("positions = 6", ""), "domain.positions"),
    (("[solver]", "[solver]\nscheme = \"spectral\""), "solver.scheme"),
    (("kind = \"python\"\nfunction = \"f.py:f\"", "kind = \"points\"\npoints = [[1, 0], [0, 1]]"), "initial.kind"),
])
def test_causal_runs_refuse_what_they_cannot_do(tmp_path, change, key):
    case = write_case(tmp_path, CASE.replace(*change))
    proc = launch(1, "run", case)
    assert proc.returncode == 2 and key in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_an_initial_function_returning_the_wrong_shape_exits_2(tmp_path):
    case = write_case(tmp_path)
    (tmp_path / "f.py").write_text("import numpy as np\ndef f(s, x):\n    return np.ones((len(s), 2))\n")
    proc = launch(1, "run", case)
    assert proc.returncode == 2 and "initial.function" in proc.stderr and "shape" in proc.stderr, proc.stderr


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed")
def test_a_causal_run_is_independent_of_the_number_of_ranks(tmp_path):
    case = write_case(tmp_path)
    finals = []
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}"
        proc = launch(ranks, "run", case, "--out", out)
        assert proc.returncode == 0, proc.stderr
        finals.append(np.load(out / "final.npz")["density"])
    assert np.abs(finals[0] - finals[1]).max() <= 1e-12 * finals[0].max()


def test_causal_particles_approach_the_causal_mean_field_band_by_band(tmp_path):
    """``meanfield compare`` of a causal case: W1 between band p of the PDE and the tokens in
    band p, for n = 200, 800, 3200 tokens (4 seeds). The mean-field limit says ~ n^(-1/2) in
    every band (the sampling error of the n/P tokens of a band, carried by the flow). The
    first band converges more slowly at t = 1 (slope -0.33, also with 8 or 16 bands: it is
    the few-token prefixes of the first tokens, not the bands)."""
    text = CASE.replace("cells = 96", "cells = 512").replace("positions = 6", "positions = 4").replace(
        "plots = false", "plots = false\n[particles]\nn = 200\n[compare]\nparticles = [200, 800, 3200]\nseeds = 4")
    text = text.replace("[solver]", "[solver]\nintegrator = \"rk4\"\ndt = 0.05")
    case = write_case(tmp_path, text)
    out = tmp_path / "cmp"
    proc = launch(1, "compare", case, "--out", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with open(out / "compare_bands.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if float(r["t"]) == 1.0]
    ns = np.array([200, 800, 3200])
    for band in range(4):
        means = [np.mean([float(r["distance"]) for r in rows if int(r["band"]) == band and int(r["n"]) == n])
                 for n in ns]
        slope = np.polyfit(np.log(ns), np.log(means), 1)[0]
        # measured at t = 1: -0.33 (band 0), -0.45, -0.48, -0.57; at t = 0 all -0.47..-0.55
        if band == 0:  # the first tokens attend to few tokens: slower (docs/causal.md)
            assert -0.65 < slope < -0.25, (band, means, slope)
        else:
            assert -0.65 < slope < -0.40, (band, means, slope)

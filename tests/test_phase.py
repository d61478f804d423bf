"""Phase diagrams (meanfield.particles.phase): equiangular prompts stay equiangular and follow
the exact ODE (SA, USA) to RK4 accuracy; the crossing-time quadrature; the per-prompt random
ensembles against single prompts; the sweep's table, CSV and heat map; bad input."""

import csv

import numpy as np
import pytest

from meanfield.fields.attention import AttentionModel, DirectField
from meanfield.particles.batch import run_batch
from meanfield.particles.phase import (
    EnsembleField,
    draw_ensemble,
    equiangular_crossing_time,
    equiangular_points,
    equiangular_rate,
    equiangular_rho,
    phase_diagram,
    plot_phase,
)


def test_equiangular_points():
    x = equiangular_points(6, 9, -0.15, rng=1)
    G = x @ x.T
    off = ~np.eye(6, dtype=bool)
    assert np.abs(np.diag(G) - 1).max() < 1e-14 and np.abs(G[off] + 0.15).max() < 1e-14


@pytest.mark.parametrize("kind, beta", [("SA", 1.0), ("SA", 6.0), ("USA", 1.0), ("USA_shift", 3.0)])
def test_equiangular_prompts_follow_the_ode(kind, beta):
    """d >= n: the Gram matrix stays equiangular to round-off and rho(t) is the ODE's, the
    error of RK4 falling like dt^4."""
    n, d = 5, 7
    starts = [0.0, -0.2, 0.6]
    x0 = np.stack([equiangular_points(n, d, r, rng=i) for i, r in enumerate(starts)])
    model = AttentionModel(d, beta=beta, normalized=kind == "SA", shift=kind == "USA_shift")
    times = np.linspace(0.0, 3.0, 7)
    exact = np.stack([equiangular_rho(times, r, beta, n, kind) for r in starts], axis=1)
    off = ~np.eye(n, dtype=bool)
    errors = []
    for dt in (0.1, 0.05):
        res = run_batch(model, x0, times, dt=dt, keep_points=True)
        G = np.einsum("tbid,tbjd->tbij", res.points, res.points)[:, :, off]
        assert np.abs(G - G.mean(axis=-1, keepdims=True)).max() < 1e-13  # stays equiangular
        errors.append(np.abs(G.mean(axis=-1) - exact).max())
    assert errors[0] < 5e-6
    assert 12 < errors[0] / errors[1] < 20  # fourth order


def test_equiangular_rate_and_crossing():
    n = 8
    # the fixed points: one cluster and the simplex
    assert equiangular_rate(1.0, 2.0, n) == 0.0 and abs(equiangular_rate(-1 / (n - 1), 2.0, n)) < 1e-16
    # SA at beta = 0 is the consensus model: rho' = 2 (1 - rho)(1 + (n-1) rho) / n
    assert np.isclose(equiangular_rate(0.3, 0.0, n), 2 * 0.7 * (1 + 7 * 0.3) / n, rtol=1e-15)
    for kind in ("SA", "USA"):
        T = equiangular_crossing_time(3.0, n, 0.1, 0.999, kind)
        assert abs(equiangular_rho([0.0, T], 0.1, 3.0, n, kind)[-1] - 0.999) < 1e-9
    assert equiangular_crossing_time(3.0, n, 0.9995) == 0.0
    assert equiangular_crossing_time(3.0, n, -1 / (n - 1)) == np.inf
    # larger beta slows SA (metastability): the crossing time grows with beta
    Ts = [equiangular_crossing_time(b, 32) for b in (0.5, 3.0, 9.0)]
    assert Ts[0] < Ts[1] < Ts[2]


def test_ensemble_field_against_single_prompts():
    d, n, B = 4, 6, 5
    QK, V = draw_ensemble(d, B, "gaussian", "wishart", seed=3)
    QK2, V2 = draw_ensemble(d, [3, 4], "gaussian", "wishart", seed=3)  # prompt b's draws do not depend on B
    assert np.array_equal(QK2, QK[3:]) and np.array_equal(V2, V[3:])
    G, _ = draw_ensemble(d, 3, "goe", "minus_qk", seed=1)
    assert np.array_equal(G, np.swapaxes(G, 1, 2))
    x = np.random.default_rng(0).standard_normal((B, n, d))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    w = np.full(n, 1.0 / n)
    for normalized in (True, False):
        f = EnsembleField(1.3, QK, V, normalized=normalized)
        want = np.stack([DirectField(f.model_of(b))(x[b], x[b], w) for b in range(B)])
        assert np.abs(f.batch(x, w) - want).max() < 1e-13
    # an error-controlled batch run with per-prompt steps and subsets of the ensemble
    f = EnsembleField(1.3, QK, V)
    res = run_batch(f, x, [0.0, 1.0], integrator="dopri5", rank=True)
    assert "energy" not in res.per_prompt and res.per_prompt["gram_rank"].shape == (2, B)
    sub = run_batch(f.subset([2]), x[2:3], [0.0, 1.0], integrator="dopri5")
    assert np.abs(sub.x[0] - res.x[2]).max() < 1e-13


def test_phase_diagram_table_csv_plot(tmp_path):
    times = np.linspace(0.0, 8.0, 9)
    r = phase_diagram([0.5, 2.0, 6.0], times, n=6, d=8, prompts=16, seed=1, dt=0.2)
    assert r.merged.shape == (3, 9) and np.all(r.merged[:, 0] == 0.0)
    assert np.all(np.diff(r.merged, axis=1) >= -0.05)  # merging only grows (up to sampling)
    assert r.merged[0, -1] == 1.0  # small beta: one cluster by t = 8 (equiangular T = 4.1)
    assert r.crossing is not None and r.crossing[0] < r.crossing[-1]
    assert "T_equiangular" in r.table()
    path = r.write_csv(tmp_path / "phase.csv")
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 27 and {"beta", "t", "merged_fraction", "equiangular_rho"} <= set(rows[0])
    png = plot_phase([r, r], tmp_path / "phase.png")
    assert png.stat().st_size > 10_000
    e = phase_diagram([1.0], times[:3], n=6, d=8, prompts=4, ensemble=("goe", "identity"), rank=True, dt=0.2)
    assert e.crossing is None and e.rank.shape == (1, 3) and "goe" in e.ensemble


def test_bad_input():
    with pytest.raises(ValueError, match="d >= n"):
        equiangular_points(6, 4, 0.0)
    with pytest.raises(ValueError, match="rho"):
        equiangular_points(4, 4, -0.5)
    with pytest.raises(ValueError, match="kind"):
        equiangular_rate(0.0, 1.0, 4, kind="softmax")
    with pytest.raises(ValueError, match="qk"):
        draw_ensemble(3, 2, qk="wigner")
    with pytest.raises(ValueError, match="shape"):
        EnsembleField(1.0, np.zeros((2, 3, 3)), np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="beta"):
        phase_diagram([-1.0], [1.0], n=4, d=4, prompts=2)

"""energy() on degenerate models (issue 10 item 5): Q^T K = 0, tiny beta c, negative c, V = 0,
on the circle and the sphere, by the direct and the spectral sums."""

from __future__ import annotations

import numpy as np
import pytest

import meanfield as mf
from meanfield.fields.energy import ENERGY_SPECTRAL_MIN_POINTS


def _points(d, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[:, 0] += 1.0  # not uniform: a nonzero mean
    return x / np.linalg.norm(x, axis=1, keepdims=True), rng.random(n) / n


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("normalized", [False, True])
def test_zero_interaction_energy_is_zero_by_every_method(d, normalized):
    # Q = 0: the kernel is 1, E = 0. The spectral S^2 path used to crash (no _lam at b = 0).
    x, w = _points(d, 50)
    model = mf.AttentionModel(d=d, beta=2.0, Q=np.zeros((d, d)), normalized=normalized)
    for method in ("direct", "spectral", "auto"):
        assert mf.energy(model, x, w, method=method) == 0.0


def test_zero_interaction_energy_on_many_points():
    # what a Q = 0 run with >= ENERGY_SPECTRAL_MIN_POINTS particles (or a finer mesh) does at its first snapshot
    x, w = _points(3, ENERGY_SPECTRAL_MIN_POINTS)
    model = mf.AttentionModel(d=3, beta=5.0, Q=np.zeros((3, 3)), normalized=False)
    assert mf.energy(model, x, w) == 0.0
    assert mf.energy(model, x, w, method="spectral") == 0.0


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("c", [1e-60, 1e-9, 1e-3, 0.5, -1.0, -7.0, 5.0])
@pytest.mark.parametrize("shift", [False, True])
def test_spectral_energy_matches_direct_for_every_scale(d, c, shift):
    # tiny beta c: the spectral form subtracts the constant analytically (it used to return
    # round-off, even negative values, instead of ~c |m|^2 / 2)
    x, w = _points(d, 60, seed=1)
    model = mf.AttentionModel(d=d, beta=2.0, Q=c * np.eye(d), V=np.zeros((d, d)), normalized=False, shift=shift)
    direct = mf.energy(model, x, w, method="direct")
    spectral = mf.energy(model, x, w, method="spectral")
    assert np.isfinite(direct) and direct != 0.0
    assert spectral == pytest.approx(direct, rel=1e-12, abs=0.0)


def test_vanishing_beta_c_is_the_beta_zero_limit():
    x, w = _points(3, 30)
    m = w @ x
    model = mf.AttentionModel(d=3, beta=1e-200, Q=1e-200 * np.eye(3))  # beta Q^T K underflows to 0
    assert mf.energy(model, x, w, method="spectral") == pytest.approx(0.5 * 1e-200 * float(m @ m), rel=1e-12, abs=0.0)


def test_circle_rotation_kernel_tiny_and_negative():
    x, w = _points(2, 40, seed=3)
    for qk in ([[1e-12, -2e-12], [2e-12, 1e-12]], [[-1.0, -0.5], [0.5, -1.0]]):
        model = mf.AttentionModel(d=2, beta=3.0, K=qk)
        assert mf.energy(model, x, w, method="spectral") == pytest.approx(mf.energy(model, x, w, method="direct"),
                                                                          rel=1e-12, abs=0.0)


def test_shifted_keyword_gives_a_finite_energy_for_sa_at_large_beta():
    x, w = _points(3, 40, seed=5)
    sa = mf.AttentionModel(d=3, beta=2000.0)
    e = mf.energy(sa, x, w, shifted=True)
    G = x @ x.T
    naive = float(w @ (np.exp(2000.0 * (G - 1)) - np.exp(-2000.0)) @ w) / 4000.0
    assert e == pytest.approx(naive, rel=1e-12, abs=0.0)
    assert mf.energy(sa, x, w, shifted=True, method="spectral") == pytest.approx(e, rel=1e-11, abs=0.0)
    usa = mf.AttentionModel(d=3, beta=3.0, normalized=False, shift=True)
    assert mf.energy(usa, x, w, shifted=False) == pytest.approx(mf.energy(mf.AttentionModel(d=3, beta=3.0), x, w),
                                                                 rel=1e-14)

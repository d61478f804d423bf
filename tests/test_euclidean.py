"""Euclidean tokens (meanfield.particles.euclidean): the rescaled ODE against the original one,
the kernel against the explicit attention matrix, RK4's order, and the paper's limits: the
shrinking polytope for V = I (d = 2), the Boolean attention matrix in d = 1 (with its doubly
exponential rate), the hyperplanes of a simple top eigenvalue; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from meanfield.particles.euclidean import (
    EuclideanModel,
    EuclideanSystem,
    attention_matrix,
    evolve_euclidean,
    hull_measure,
    leaders,
    nearest_boolean,
    top_coordinate,
)


def _random_qkv(rng, d, scale=0.5):
    Q = np.eye(d) + scale * rng.standard_normal((d, d))
    K = np.eye(d) + scale * rng.standard_normal((d, d))
    V = np.eye(d) + scale * rng.standard_normal((d, d))
    return Q, K, V


@pytest.mark.parametrize("d", [1, 3])
def test_rescaled_ode_equals_unscaled(d):
    """Integrating dz/dt = V (P(t) z - z) gives e^{-tV} x(t) of dx/dt = P V x (general Q, K, V)."""
    rng = np.random.default_rng(10 + d)
    Q, K, V = _random_qkv(rng, d)
    x0 = rng.uniform(-1, 1, size=(7, d))
    times = np.linspace(0, 2.0, 9)
    kw = dict(Q=Q, K=K, V=V, beta=1.3, times=times, rtol=1e-12, atol=1e-13)
    tz = evolve_euclidean(x0, 2.0, frame="z", **kw)
    tx = evolve_euclidean(x0, 2.0, frame="x", **kw)
    scale = np.abs(tz.z).max()
    assert np.abs(tz.z - tx.z).max() <= 1e-9 * scale
    assert np.abs(tz.x - tx.x).max() <= 1e-9 * np.abs(tx.x).max()
    # the attention matrix is that of x: P(z, t) = P(x, 0-form)
    m = tz.model
    P_x = attention_matrix(tx.x[-1], m.interaction(0.0))
    assert np.abs(tz.attention(len(times) - 1) - P_x).max() <= 1e-8


@pytest.mark.parametrize("d", [1, 2, 4])
def test_field_matches_explicit_attention(d):
    """The DirectField sums (d = 1 embedded in R^2) equal V (P z - z) with P formed explicitly."""
    rng = np.random.default_rng(d)
    Q, K, V = _random_qkv(rng, d)
    system = EuclideanSystem(EuclideanModel(d, Q=Q, K=K, V=V, beta=0.7))
    z = rng.standard_normal((9, d))
    for t in (0.0, 0.8):
        P = system.attention(z, t)
        assert np.allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-14)
        ref = (P @ z - z) @ V.T
        assert np.abs(system.velocity_z(z, t) - ref).max() <= 1e-13 * max(1.0, np.abs(ref).max())
    assert np.abs(system.velocity_x(z) - P_x_ref(z, Q, K, V, 0.7)).max() <= 1e-13 * np.abs(z).max() * 10


def P_x_ref(x, Q, K, V, beta):
    """sum_j P_ij V x_j with P the naive (unshifted) softmax of beta <Q x_i, K x_j>."""
    e = np.exp(beta * (x @ Q.T) @ (x @ K.T).T)
    return (e / e.sum(axis=1, keepdims=True)) @ x @ V.T


def test_rk4_order_four():
    rng = np.random.default_rng(3)
    Q, K, V = _random_qkv(rng, 2, 0.3)
    x0 = rng.uniform(-1, 1, size=(6, 2))
    kw = dict(Q=Q, K=K, V=V, times=[0.0, 1.0])
    ref = evolve_euclidean(x0, 1.0, rtol=1e-13, atol=1e-14, integrator="dop853", **kw).z[-1]
    errs = [np.abs(evolve_euclidean(x0, 1.0, integrator="rk4", dt=h, **kw).z[-1] - ref).max() for h in (0.1, 0.05)]
    order = np.log2(errs[0] / errs[1])
    assert 3.8 < order < 4.3, (errs, order)


@pytest.fixture(scope="module")
def polytope_run():
    """V = Q = K = I, d = 2, 20 tokens uniform in [-1, 1]^2 (the authors' 'polytope' case,
    there in [-5, 5]^2), to t = 10."""
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, size=(20, 2))
    return evolve_euclidean(x0, 10.0, times=np.linspace(0, 10, 41))


def test_polytope_hull_non_increasing(polytope_run):
    """V = I: dz_i/dt = sum_j P_ij z_j - z_i points into conv{z_j}, so the hulls are nested."""
    z = polytope_run.z
    areas = np.array([hull_measure(zk) for zk in z])
    assert np.all(np.diff(areas) <= 1e-12)
    for k in range(len(z) - 1):
        eq = ConvexHull(z[k]).equations  # a . p + b <= 0 inside
        assert (z[k + 1] @ eq[:, :2].T + eq[:, 2]).max() <= 1e-10
    assert areas[-1] < 0.3 * areas[0]  # the polytope shrinks: its vertices move too


def test_polytope_tokens_reach_vertices_at_rate_one(polytope_run):
    """Every token converges to a vertex of the limit polytope (the final hull), like e^{-t}
    (rate 1 = the eigenvalue of V: in the hardmax regime z_i' = z_leader - z_i); the limit
    vertices are a few of the initial hull vertices (the leaders)."""
    tr = polytope_run
    zf = tr.z[-1]
    final = leaders(zf)
    dist = np.array([np.linalg.norm(z[:, None, :] - zf[None, final, :], axis=2).min(axis=1).max() for z in tr.z])
    assert dist[-1] < 2e-4
    late = tr.times >= 4.0
    # distance to the values at t = 10 flattens the last points; fit t in [4, 8]
    fit = late & (tr.times <= 8.0)
    slope = np.polyfit(tr.times[fit], np.log(dist[fit]), 1)[0]
    assert -1.05 < slope < -0.95, slope
    # clusters (tokens within 1e-2 of each other at t = 10): far fewer than n, and every
    # cluster is a vertex of the limit polytope K = conv(clusters) -- none on an edge or inside
    labels = np.full(len(zf), -1)
    for i in range(len(zf)):
        if labels[i] < 0:
            labels[(labels < 0) & (np.linalg.norm(zf - zf[i], axis=1) < 1e-2)] = labels.max() + 1
    centres = np.array([zf[labels == c].mean(axis=0) for c in range(labels.max() + 1)])
    assert 3 <= len(centres) <= len(zf) // 4
    assert len(leaders(centres)) == len(centres)
    # every cluster holds an initial hull vertex (a leader); the final hull's vertices are
    # initial hull vertices, but not all initial vertices survive as vertices
    initial = tr.leaders(0)
    assert all(np.any(np.isin(np.flatnonzero(labels == c), initial)) for c in range(len(centres)))
    assert set(final) <= set(initial)
    moved = np.linalg.norm(zf[initial] - tr.z[0][initial], axis=1)
    assert moved.max() > 0.5  # the initial vertices are not fixed points of z


@pytest.fixture(scope="module")
def line_run():
    """d = 1, V = Q = K = 1, beta = 4, 10 tokens uniform in [-1, 1], to t = 6."""
    rng = np.random.default_rng(2)
    rng.uniform(-1, 1, size=(10, 1))  # skipped: the second draw has five tokens of each sign
    x0 = rng.uniform(-1, 1, size=(10, 1))
    return evolve_euclidean(x0, 6.0, beta=4.0, times=np.linspace(0, 6, 25))


def test_line_attention_becomes_boolean_rank_two(line_run):
    tr = line_run
    out = [nearest_boolean(tr.attention(k)) for k in range(len(tr.times))]
    dist = np.array([o[1] for o in out])
    B, rank = out[-1][0], out[-1][2]
    assert dist[-1] < 1e-30 and rank == 2
    # the limit rows: a positive token attends to the largest, a negative one to the smallest
    z0 = tr.z[0][:, 0]
    zf = tr.z[-1][:, 0]
    top, bottom = np.argmax(zf), np.argmin(zf)
    assert np.all(B[zf > 0, top] == 1) and np.all(B[zf < 0, bottom] == 1) and np.all(B.sum(axis=1) == 1)
    assert np.all(np.sign(zf) == np.sign(z0))  # here every token keeps its sign
    # doubly exponential: dist ~ exp(-c e^{V t}), the slope of log(-log dist) tends to V = 1
    late = tr.times >= 3.0
    slope = np.polyfit(tr.times[late], np.log(-np.log(dist[late])), 1)[0]
    assert 0.97 < slope < 1.03, slope
    # two clusters, the max non-increasing and the min non-decreasing
    spread = [np.ptp(zk[:, 0][zf > 0]) for zk in (tr.z[-5], tr.z[-1])]  # t = 5 and 6
    assert spread[1] < 5e-3 and spread[1] / spread[0] == pytest.approx(np.exp(-1.0), rel=0.05)
    z = tr.z[:, :, 0]
    assert np.all(np.diff(z.max(axis=1)) <= 1e-13) and np.all(np.diff(z.min(axis=1)) >= -1e-13)


def test_simple_top_eigenvalue_hyperplanes():
    """V with positive entries (Perron--Frobenius, the authors' 'hyperplanes' case): the top
    spectral coordinates a_1(z_i) = <psi_1, z_i> cluster at <= 3 values while z itself grows."""
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, size=(20, 2))
    V = rng.random((2, 2))
    lam, phi, psi = top_coordinate(V)
    assert np.allclose(V @ phi, lam * phi) and np.isclose(psi @ phi, 1.0)
    tr = evolve_euclidean(x0, 8.0, V=V, times=[0.0, 4.0, 8.0], rtol=1e-9, atol=1e-11)
    a = tr.z[-1] @ psi
    levels = np.unique(np.round(a, 2))
    assert len(levels) <= 3
    spread = max(np.ptp(a[np.isclose(a, c, atol=0.01)]) for c in levels)
    assert spread < 1e-3
    assert np.abs(tr.z[-1]).max() > 3 * np.abs(tr.z[0]).max()  # the other coordinate is not bounded


def test_leaders_and_helpers():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, 0.2], [1.0, 1.0]])
    assert list(leaders(pts)) == [0, 1, 2, 4]
    assert hull_measure(pts) == pytest.approx(1.0)
    assert list(leaders(np.array([[0.3], [-2.0], [5.0], [1.0]]))) == [1, 2]
    assert hull_measure(np.array([[0.3], [-2.0], [5.0]])) == pytest.approx(7.0)
    B, dist, rank = nearest_boolean(np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert np.array_equal(B, np.eye(2)) and dist == pytest.approx(0.2) and rank == 2


def test_bad_input():
    x0 = np.zeros((4, 2)) + np.arange(8).reshape(4, 2) * [1.0, 0.5]
    with pytest.raises(ValueError, match="x0\\[:, None\\]"):
        evolve_euclidean(np.arange(3.0), 1.0)
    with pytest.raises(ValueError, match="2 x 2"):
        evolve_euclidean(x0, 1.0, V=np.eye(3))
    with pytest.raises(ValueError, match="beta"):
        evolve_euclidean(x0, 1.0, beta=-1.0)
    with pytest.raises(ValueError, match="non-finite"):
        evolve_euclidean(x0, 1.0, Q=[[np.nan, 0], [0, 1]])
    with pytest.raises(ValueError, match="t_end"):
        evolve_euclidean(x0, 0.0)
    with pytest.raises(ValueError, match="integrator"):
        evolve_euclidean(x0, 1.0, integrator="euler")
    with pytest.raises(ValueError, match="frame"):
        evolve_euclidean(x0, 1.0, frame="y")
    with pytest.raises(ValueError, match="times"):
        evolve_euclidean(x0, 1.0, times=[0.0, 2.0])
    with pytest.raises(ValueError, match="times"):
        evolve_euclidean(x0, 1.0, times=[0.5, 0.2])
    with pytest.raises(ValueError, match="rtol"):
        evolve_euclidean(x0, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match="overflow"):
        evolve_euclidean(x0, 400.0)
    with pytest.raises(ValueError, match="d must be"):
        EuclideanModel(0)
    with pytest.raises(ValueError, match="shape \\(n, 3\\)"):
        EuclideanSystem(EuclideanModel(3)).evolve(x0, 1.0)
    with pytest.raises(ValueError, match="at least 3"):
        leaders(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="span"):
        leaders(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(ValueError, match="simple"):
        top_coordinate(np.eye(2))
    with pytest.raises(ValueError, match="positive"):
        top_coordinate(-np.eye(1) * 2)

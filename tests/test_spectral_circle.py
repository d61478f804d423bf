"""The spectral (Fourier) circle backend against the exact direct sums."""

import math
import zlib

import numpy as np
import pytest
from scipy import special

import meanfield as mf
from meanfield.fields.attention import DirectField, FieldOverflowError
from meanfield.fields.spectral_circle import (
    SpectralCircleField,
    _ive_rows,
    bessel_truncation,
    direct_cost,
    kernel_parameters,
    spectral_cost,
)

J = np.array([[0.0, -1.0], [1.0, 0.0]])  # quarter turn
R = np.array([[1.0, 0.0], [0.0, -1.0]])  # reflection


def rotation(a):
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def circle_points(t):
    t = np.asarray(t, dtype=float)
    return np.column_stack([np.cos(t), np.sin(t)])


def random_points(rng, n):
    return circle_points(rng.uniform(0.0, 2.0 * np.pi, n))


# name -> (Q, K, V) factories; Q^T K = I, c I, c I + d J (rotation), c R (anticonformal), random.
MATRICES = {
    "identity": lambda rng: (None, None, None),
    "V=-0.7I": lambda rng: (None, None, -0.7 * np.eye(2)),
    "QtK=-1.5I": lambda rng: (-1.5 * np.eye(2), None, None),
    "QtK=cI+dJ": lambda rng: (0.8 * np.eye(2) + 0.6 * J, None, 1.3 * np.eye(2)),
    "QtK=reflection": lambda rng: (R @ (0.5 * np.eye(2) + 0.5 * J), None, None),
    # rotations: Q^T K is a rotation only up to rounding (r2 ~ 1e-16 beta, not 0)
    "Q,K=rotations": lambda rng: (rotation(0.3), rotation(1.1), None),
    "random": lambda rng: tuple(rng.normal(size=(2, 2)) for _ in range(3)),
}
CONSTANT_RHO = {"identity", "V=-0.7I", "QtK=-1.5I", "QtK=cI+dJ", "QtK=reflection", "Q,K=rotations"}


def test_kernel_parameters_split_the_logit():
    rng = np.random.default_rng(0)
    for _ in range(20):
        A = rng.normal(size=(2, 2)) * rng.uniform(0.1, 30.0)
        r1, a1, r2, a2 = kernel_parameters(A)
        t, s = rng.uniform(0, 2 * np.pi, 50), rng.uniform(0, 2 * np.pi, 50)
        logit = np.einsum("ij,jk,ik->i", circle_points(t), A, circle_points(s))
        split = r1 * np.cos(t - s - a1) + r2 * np.cos(t + s - a2)
        assert np.allclose(logit, split, rtol=0, atol=1e-13 * np.abs(A).max())
        sv = np.linalg.svd(A, compute_uv=False)
        assert r1 + r2 == pytest.approx(sv[0], rel=1e-13)
        assert abs(r1 - r2) == pytest.approx(sv[1], rel=1e-10, abs=1e-13 * sv[0])
    # rotation invariant <=> u = v = 0
    assert kernel_parameters(2.0 * np.eye(2) + 3.0 * J)[2] == 0.0
    assert kernel_parameters(R)[0] == 0.0


def test_bessel_truncation_is_the_smallest_order_meeting_the_tail_bound():
    for r in [0.0, 1e-3, 1.0, 9.0, 30.0, 200.0, 1500.0]:
        for delta in [1e-6, 1e-12, 1e-16]:
            L = bessel_truncation(r, delta)
            k = np.arange(L + 1, L + 4000)
            assert 2 * special.ive(k, r).sum() <= delta
            if L > 0:
                assert 2 * special.ive(np.arange(L, L + 4000), r).sum() > delta
    # the tail grows with r, so the truncation at ||A||_2 serves every smaller |A^T x|
    L = bessel_truncation(30.0, 1e-16)
    tails = [2 * special.ive(np.arange(L + 1, L + 500), r).sum() for r in np.linspace(0.1, 30.0, 60)]
    assert np.all(np.diff(tails) > 0)


def test_truncation_grows_like_sqrt_beta():
    # SA, default tolerance: L = 14, 29, 49, 119 at beta = 1, 9, 30, 200 (see the report)
    Ls = {beta: SpectralCircleField(mf.AttentionModel(d=2, beta=beta)).truncation for beta in [1, 9, 30, 200, 2000]}
    assert Ls[1] < Ls[9] < Ls[30] < Ls[200] < Ls[2000]
    for beta in [30, 200, 2000]:  # L ~ sqrt(2 beta log(1/delta)), log(1/1e-16) = 36.8
        assert 0.8 < Ls[beta] / math.sqrt(2 * beta * 36.8) < 1.2
    assert SpectralCircleField(mf.AttentionModel(d=2, beta=0.0)).truncation == 0


def test_per_target_bessel_factors_match_scipy():
    rho = np.concatenate([[0.0, 1e-300, 1e-10, 1e-3], np.linspace(0.01, 250.0, 500)])
    L = bessel_truncation(250.0, 1e-16)
    got = _ive_rows(rho, L, L + 10)
    ref = special.ive(np.arange(L + 1)[:, None], rho[None, :])
    assert np.abs(got - ref).max() < 1e-15
    assert np.abs(got - ref).sum(axis=0).max() < 5e-15  # sum_n ive_n = 1: the relevant norm


@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 9.0, 30.0])
@pytest.mark.parametrize("matrices", list(MATRICES))
def test_agrees_with_direct(matrices, beta, normalized):
    rng = np.random.default_rng(zlib.crc32(f"{matrices}{beta}{normalized}".encode()))
    Q, K, V = MATRICES[matrices](rng)
    model = mf.AttentionModel(d=2, beta=beta, Q=Q, K=K, V=V, normalized=normalized)
    x, y = random_points(rng, 200), random_points(rng, 300)
    w = rng.random(300)
    w[::7] = 0.0  # empty cells
    f = SpectralCircleField(model)
    assert f.constant_rho == (matrices in CONSTANT_RHO or beta == 0.0)
    got = f(x, y, w)
    ref = DirectField(model)(x, y, w)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-12 * scale
    # the documented bound: tolerance * ||V|| (SA), tolerance * W e^{|A^T x|} ||V|| (USA)
    vnorm = np.linalg.norm(model.V, 2)
    if normalized:
        assert np.abs(got - ref).max() <= 1e-12 * vnorm
        assert f.last_fallback == 0  # a spread-out measure never needs the direct sums
    else:
        bound = w.sum() * np.exp(np.linalg.norm(x @ model.interaction, axis=1)) * vnorm
        assert np.all(np.linalg.norm(got - ref, axis=1) <= 1e-12 * bound)


MODES = ((0.3, 1, 1.0), (0.5, 3, 0.4))  # (amplitude, k, phase) of a positive density


def exact_circle_field(theta, beta, A, V, normalized):
    """The field of ``rho = (1 + sum a cos(k (phi - phi0))) / (2 pi)`` (:data:`MODES`) for a
    conformal ``Q^T K = A = r R(alpha)``, from ``e^{z cos u} = sum_n I_n(z) e^{inu}`` alone:
    with ``psi = theta - alpha``, ``Z = I_0 + sum a I_k cos(k (psi - phi0))`` and the
    numerator is V applied to ``I_1 e^{i psi} + sum a/2 (I_{k+1} e^{i((k+1) psi - k phi0)}
    + I_{k-1} e^{i(k phi0 - (k-1) psi)})`` (Bessel functions at ``beta r``), projected on the
    unit tangent ``(-sin theta, cos theta)``."""
    assert A[0, 0] == pytest.approx(A[1, 1], abs=1e-15) and A[0, 1] == pytest.approx(-A[1, 0], abs=1e-15)
    r, alpha = math.hypot(A[0, 0], A[1, 0]), math.atan2(A[1, 0], A[0, 0])
    z, psi = beta * r, theta - alpha
    iv = lambda n: special.iv(n, z)  # noqa: E731
    Z = iv(0) + sum(a * iv(k) * np.cos(k * (psi - p)) for a, k, p in MODES)
    M = iv(1) * np.exp(1j * psi) + sum(a / 2 * (iv(k + 1) * np.exp(1j * ((k + 1) * psi - k * p))
                                                + iv(k - 1) * np.exp(1j * (k * p - (k - 1) * psi))) for a, k, p in MODES)
    v = np.column_stack([M.real, M.imag]) @ np.asarray(V).T
    if normalized:
        v = v / Z[:, None]
    t = np.column_stack([-np.sin(theta), np.cos(theta)])
    return np.sum(v * t, axis=1, keepdims=True) * t


@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 9.0, 30.0])
@pytest.mark.parametrize("matrices", sorted(CONSTANT_RHO - {"QtK=reflection"}))
def test_matches_the_exact_field_of_a_smooth_density(matrices, beta, normalized):
    """Against an exact value computed without any backend: the density sampled at 256
    equispaced points (the trapezoidal rule, exact to round-off for these trigonometric
    integrands) and the closed form of :func:`exact_circle_field`. Measured: direct 2.6e-14,
    spectral 2.3e-14 of the largest value."""
    rng = np.random.default_rng(zlib.crc32(f"exact{matrices}{beta}".encode()))
    Q, K, V = MATRICES[matrices](rng)
    model = mf.AttentionModel(d=2, beta=beta, Q=Q, K=K, V=V, normalized=normalized)
    phi = 2 * np.pi * (np.arange(256) + 0.3) / 256
    w = (1 + sum(a * np.cos(k * (phi - p)) for a, k, p in MODES)) / 256
    theta = rng.uniform(0, 2 * np.pi, 200)
    ref = exact_circle_field(theta, beta, model.Q.T @ model.K, model.V, normalized)
    scale = np.abs(ref).max()
    assert scale > 1e-2
    assert np.abs(DirectField(model)(circle_points(theta), circle_points(phi), w) - ref).max() <= 1e-13 * scale
    assert np.abs(SpectralCircleField(model)(circle_points(theta), circle_points(phi), w) - ref).max() <= 1e-12 * scale


@pytest.mark.parametrize("matrices", ["identity", "QtK=cI+dJ", "random"])
def test_beta_200_sa_does_not_overflow(matrices):
    rng = np.random.default_rng(200)
    Q, K, V = MATRICES[matrices](rng)
    model = mf.AttentionModel(d=2, beta=200.0, Q=Q, K=K, V=V)
    x, y = random_points(rng, 300), random_points(rng, 400)
    w = rng.random(400)
    f = SpectralCircleField(model)
    got = f(x, y, w)
    ref = DirectField(model)(x, y, w)
    assert np.all(np.isfinite(got))
    assert np.abs(got - ref).max() <= 1e-12 * np.linalg.norm(model.V, 2)
    assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()


@pytest.mark.parametrize("matrices", ["identity", "random"])
def test_concentrated_measure_falls_back_to_direct_sums(matrices):
    # Two tight clusters at beta = 200: far from them Z(x) e^{-|A^T x|} / W is
    # exponentially small and the spectral quotient is pure round-off there.
    rng = np.random.default_rng(7)
    Q, K, V = MATRICES[matrices](rng)
    model = mf.AttentionModel(d=2, beta=200.0, Q=Q, K=K, V=V)
    s = np.concatenate([rng.normal(0.3, 0.05, 200), rng.normal(2.0, 0.02, 100)])
    y, w = circle_points(s), rng.random(300)
    x = random_points(rng, 500)
    ref = DirectField(model)(x, y, w)
    f = SpectralCircleField(model)
    got = f(x, y, w)
    assert 0 < f.last_fallback < len(x)
    assert np.abs(got - ref).max() <= 1e-12 * np.linalg.norm(model.V, 2)
    # without the fallback the same call is wrong by far more than the tolerance
    blind = SpectralCircleField(model)
    blind.z_min = 0.0
    with np.errstate(all="ignore"):
        bad = blind(x, y, w)
    assert not np.abs(bad - ref).max() <= 1e-6 * np.linalg.norm(model.V, 2)


def test_fallback_region_of_a_point_mass():
    # Isotropic beta = 9, one point mass at angle 0: Z_s(theta) = exp(-beta (1 - cos theta)),
    # so exactly the targets with beta (1 - cos theta) > log(1 / z_min) fall back.
    model = mf.AttentionModel(d=2, beta=9.0)
    theta = np.linspace(-np.pi, np.pi, 721)[:-1]
    x, y, w = circle_points(theta), circle_points([0.0]), np.ones(1)
    f = SpectralCircleField(model)
    got = f(x, y, w)
    assert np.abs(got - DirectField(model)(x, y, w)).max() <= 1e-12
    expect = 9.0 * (1 - np.cos(theta)) > math.log(1 / f.z_min)
    assert abs(f.last_fallback - expect.sum()) <= 2  # boundary targets may go either way
    assert f.z_min == pytest.approx(2.2e-3, rel=0.01)
    # a looser tolerance leaves nothing to fall back (z_min = 2.2e-9 < e^{-18})
    loose = SpectralCircleField(model, tolerance=1e-6)
    assert np.abs(loose(x, y, w) - DirectField(model)(x, y, w)).max() <= 1e-6
    assert loose.last_fallback == 0


def test_loose_tolerance_usa_uses_fewer_modes_and_meets_it():
    rng = np.random.default_rng(3)
    model = mf.AttentionModel(d=2, beta=30.0, normalized=False)
    tight, loose = SpectralCircleField(model), SpectralCircleField(model, tolerance=1e-6)
    assert loose.truncation < tight.truncation
    x, y, w = random_points(rng, 200), random_points(rng, 200), rng.random(200)
    ref = DirectField(model)(x, y, w)
    err = np.abs(loose(x, y, w) - ref).max()
    assert err <= 1e-6 * w.sum() * math.exp(30.0)
    assert err > 1e-13 * w.sum() * math.exp(30.0)  # it really is a looser truncation


def test_usa_overflow_is_an_error():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(FieldOverflowError, match="overflows"):
        SpectralCircleField(mf.AttentionModel(d=2, beta=800.0, normalized=False))(x, x, np.ones(2))
    # just below the limit USA still works and agrees
    rng = np.random.default_rng(5)
    model = mf.AttentionModel(d=2, beta=600.0, normalized=False)
    x, y, w = random_points(rng, 100), random_points(rng, 100), rng.random(100)
    ref = DirectField(model)(x, y, w)
    assert np.abs(SpectralCircleField(model)(x, y, w) - ref).max() <= 1e-12 * w.sum() * math.exp(600.0)


def test_degenerate_interaction_and_mesh_points():
    # rank-one A: targets with A^T x = 0 see a constant kernel (rho = 0)
    model = mf.AttentionModel(d=2, beta=5.0, Q=np.diag([1.0, 0.0]), V=np.array([[0.0, 1.0], [2.0, 0.5]]))
    mesh = mf.CircleMesh(64)
    x = np.vstack([[0.0, 1.0], [0.0, -1.0], mesh.centers])
    w = 1.0 + np.cos(3 * np.arctan2(mesh.centers[:, 1], mesh.centers[:, 0]))
    for normalized in [True, False]:
        m = mf.AttentionModel(d=2, beta=5.0, Q=model.Q, V=model.V, normalized=normalized)
        got = SpectralCircleField(m)(x, mesh.centers, w)
        ref = DirectField(m)(x, mesh.centers, w)
        assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()


def test_nearly_conformal_interaction_takes_the_general_path():
    # r2 = 9e-9 > tolerance / 40: |A^T x| really varies, per-target Bessel factors
    rng = np.random.default_rng(11)
    model = mf.AttentionModel(d=2, beta=9.0, Q=np.eye(2) + 1e-9 * R)
    f = SpectralCircleField(model)
    assert not f.constant_rho
    x, y, w = random_points(rng, 100), random_points(rng, 100), rng.random(100)
    ref = DirectField(model)(x, y, w)
    assert np.abs(f(x, y, w) - ref).max() <= 1e-12 * np.abs(ref).max()
    assert SpectralCircleField(model, tolerance=1e-6).constant_rho  # 9e-9 < 1e-6 / 40


def test_interface_and_input_checks():
    model = mf.AttentionModel(d=2, beta=9.0)
    f = SpectralCircleField(model)
    assert f.name == "spectral" and f.model is model
    assert "truncation=29" in repr(f) and "SA" in repr(f)
    assert f(np.empty((0, 2)), circle_points([0.0]), np.ones(1)).shape == (0, 2)
    usa = SpectralCircleField(mf.AttentionModel(d=2, beta=9.0, normalized=False))
    assert np.all(usa(circle_points([0.0, 1.0]), circle_points([2.0]), np.zeros(1)) == 0.0)
    with pytest.raises(ValueError, match="d = 2"):
        SpectralCircleField(mf.AttentionModel(d=3))
    with pytest.raises(ValueError, match="tolerance"):
        SpectralCircleField(model, tolerance=0.0)
    with pytest.raises(ValueError, match="nonnegative"):
        f(circle_points([0.0]), circle_points([0.0, 1.0]), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="positive total weight"):
        f(circle_points([0.0]), circle_points([0.0]), np.zeros(1))
    with pytest.raises(ValueError, match="targets"):
        f(np.ones((3, 3)), circle_points([0.0]), np.ones(1))
    with pytest.raises(ValueError, match="weights"):
        f(circle_points([0.0]), circle_points([0.0]), np.ones(2))


def test_cost_model_prefers_spectral_for_large_problems_only():
    iso = mf.AttentionModel(d=2, beta=9.0)
    gen = mf.AttentionModel(d=2, beta=9.0, Q=[[1.0, 0.3], [0.2, -0.5]])
    assert direct_cost(iso, 300, 500) == 300 * 500
    for model in [iso, gen]:
        assert spectral_cost(model, 16, 16) > direct_cost(model, 16, 16)
        assert spectral_cost(model, 2**13, 2**13) < direct_cost(model, 2**13, 2**13) / 10
        # linear in the number of points, growing with beta
        c1, c2 = spectral_cost(model, 2**14, 2**14), spectral_cost(model, 2**15, 2**15)
        assert 1.9 < c2 / c1 < 2.01
    assert spectral_cost(gen, 2**14, 2**14) > spectral_cost(iso, 2**14, 2**14)
    big = mf.AttentionModel(d=2, beta=200.0)
    assert spectral_cost(big, 2**14, 2**14) > spectral_cost(iso, 2**14, 2**14)

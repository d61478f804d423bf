"""The direct attention field against a naive double loop, its invariants and the rates."""

import math

import numpy as np
import pytest
from scipy import special

import meanfield as mf
from meanfield.fields.attention import DirectField, FieldOverflowError


def naive_field(model, x, y, w, project=True):
    """Literal transcription of X[mu](x) = P_x(sum_j w_j e^{beta<Qx,Ky_j>} V y_j / Z)
    (``project=False``: the average before ``P_x``)."""
    out = np.zeros_like(x)
    for i in range(len(x)):
        num = np.zeros(model.d)
        z = 0.0
        for j in range(len(y)):
            a = math.exp(model.beta * float((model.Q @ x[i]) @ (model.K @ y[j])))
            num += w[j] * a * (model.V @ y[j])
            z += w[j] * a
        v = num / z if model.normalized else num
        out[i] = v - (v @ x[i]) * x[i] if project else v
    return out


def sphere_points(rng, n, d):
    p = rng.normal(size=(n, d))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("normalized", [True, False])
@pytest.mark.parametrize("beta", [0.0, 1.0, 9.0])
def test_direct_matches_naive_for_random_qkv(d, normalized, beta):
    rng = np.random.default_rng(d * 100 + int(beta) + normalized)
    Q, K, V = (rng.normal(size=(d, d)) for _ in range(3))
    model = mf.AttentionModel(d=d, beta=beta, Q=Q, K=K, V=V, normalized=normalized)
    x, y = sphere_points(rng, 23, d), sphere_points(rng, 31, d)
    w = rng.random(31)
    # a tiny block size forces many blocks: blocking must not change the sums
    got = DirectField(model, block_elements=70)(x, y, w)
    ref = naive_field(model, x, y, w)
    assert np.max(np.abs(got - ref)) <= 1e-12 * max(1.0, np.abs(ref).max())
    # the average before P_x (the authors' Euler scheme steps with it): it has a normal part
    raw = DirectField(model, block_elements=70)(x, y, w, project=False)
    ref_raw = naive_field(model, x, y, w, project=False)
    assert np.max(np.abs(raw - ref_raw)) <= 1e-12 * max(1.0, np.abs(ref_raw).max())
    assert np.abs(np.einsum("ij,ij->i", ref_raw, x)).max() > 1e-3 * np.abs(ref_raw).max()


def tangent_frames(x, rng):
    """``(n, d - 1, d)``: an orthonormal basis of the tangent space at each point (QR of
    ``[x, random]``), made without any projection formula."""
    n, d = x.shape
    frames = np.empty((n, d - 1, d))
    for i in range(n):
        q, _ = np.linalg.qr(np.column_stack([x[i], rng.normal(size=(d, d - 1))]))
        frames[i] = q[:, 1:].T
    return frames


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
@pytest.mark.parametrize("beta, c, v", [(0.5, 1.0, 1.0), (9.0, 1.0, -1.3), (4.0, -0.5, 0.7)])
def test_isotropic_field_is_the_gradient_of_the_potential(d, normalized, beta, c, v):
    """For Q^T K = c I, V = v I the field is a gradient (SPEC section 2): USA
    ``X = v grad_S Phi / (beta c)``, SA ``X = v grad_S log Phi / (beta c)``, with the potential
    ``Phi(x) = sum_j w_j e^{beta c <x, y_j>}``. The derivative of Phi along the geodesic
    ``cos t x + sin t e`` through x in each tangent direction e is taken by the complex step
    (``Im f(ih) / h``, exact to round-off): only values of the scalar potential enter."""
    rng = np.random.default_rng(d + 10 * normalized + int(beta))
    x, y = sphere_points(rng, 25, d), sphere_points(rng, 40, d)
    w = rng.random(40)
    model = mf.AttentionModel(d=d, beta=beta, Q=c * np.eye(d), V=v * np.eye(d), normalized=normalized)
    h = 1e-30
    frames = tangent_frames(x, rng)
    want = np.zeros_like(x)
    for a in range(d - 1):
        e = frames[:, a, :]
        z = np.cosh(h) * x + 1j * np.sinh(h) * e  # the geodesic at t = ih
        phi = np.exp(beta * c * (z @ y.T)) @ w
        slope = (np.log(phi) if normalized else phi).imag / h
        want += (v / (beta * c)) * slope[:, None] * e
    got = DirectField(model)(x, y, w)
    assert np.max(np.abs(got - want)) <= 1e-13 * np.abs(want).max(), np.max(np.abs(got - want)) / np.abs(want).max()


def test_zero_weight_sources_are_ignored_and_large_beta_is_stable():
    # SA at beta = 1000 with all mass on one source: the row maximum must be taken over
    # sources that carry mass, else exp underflows to 0/0.
    mesh = mf.CircleMesh(64)
    w = np.zeros(64)
    w[10] = 1.0
    model = mf.AttentionModel(d=2, beta=1000.0)
    x = DirectField(model)(mesh.centers, mesh.centers, w)
    assert np.all(np.isfinite(x))
    # the field points every target towards the single source
    ref = mesh.centers[10] - (mesh.centers @ mesh.centers[10])[:, None] * mesh.centers
    assert np.max(np.abs(x - ref)) < 1e-14


def test_beta_zero_is_the_consensus_field():
    rng = np.random.default_rng(1)
    x, w = sphere_points(rng, 50, 3), rng.random(50)
    w /= w.sum()
    m = w @ x
    got = DirectField(mf.AttentionModel(d=3, beta=0.0))(x, x, w)
    assert np.allclose(got, m - (x @ m)[:, None] * x, atol=1e-15, rtol=0)


def test_usa_overflow_is_an_error_not_inf():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(FieldOverflowError, match="overflows"):
        DirectField(mf.AttentionModel(d=2, beta=800.0, normalized=False))(x, x, np.ones(2))


def test_bad_shapes_and_parameters_are_rejected():
    with pytest.raises(ValueError, match="beta"):
        mf.AttentionModel(d=2, beta=-1.0)
    with pytest.raises(ValueError, match="Q must be a 2 x 2"):
        mf.AttentionModel(d=2, Q=np.eye(3))
    f = DirectField(mf.AttentionModel(d=3))
    with pytest.raises(ValueError, match="targets"):
        f(np.ones((4, 2)), np.ones((4, 3)), np.ones(4))
    with pytest.raises(ValueError, match="weights"):
        f(np.ones((4, 3)), np.ones((4, 3)), np.ones(3))


@pytest.mark.parametrize("beta", [0.0, 0.5, 3.0])
def test_energy_against_double_sum(beta):
    rng = np.random.default_rng(7)
    x, w = sphere_points(rng, 40, 3), rng.random(40)
    model = mf.AttentionModel(d=3, beta=beta)
    g = x @ x.T
    ref = 0.5 * w @ g @ w if beta == 0 else (w @ np.expm1(beta * g) @ w) / (2 * beta)
    assert mf.energy(model, x, w, block_elements=100) == pytest.approx(ref, rel=1e-13)
    # continuity at beta -> 0
    if beta == 0:
        assert mf.energy(mf.AttentionModel(d=3, beta=1e-7), x, w) == pytest.approx(ref, rel=1e-6)


def test_growth_rate_formula_matches_the_spec():
    k = np.arange(1, 8)
    for beta in [0.3, 2.0, 9.0, 40.0]:
        usa = k**2 * special.iv(k, beta) / beta
        assert np.allclose(mf.growth_rate(k, beta, 2, normalized=False), usa, rtol=1e-12)
        assert np.allclose(mf.growth_rate(k, beta, 2, normalized=True), usa / special.iv(0, beta), rtol=1e-12)
        il = special.spherical_in(k, beta)
        assert np.allclose(mf.growth_rate(k, beta, 3, normalized=False), k * (k + 1) * il / beta, rtol=1e-12)
        assert np.allclose(mf.growth_rate(k, beta, 3, normalized=True),
                           k * (k + 1) * il / beta / special.spherical_in(0, beta), rtol=1e-12)
    # the beta -> 0 limit and large beta without overflow
    assert mf.growth_rate(1, 0.0, 2) == pytest.approx(mf.growth_rate(1, 1e-8, 2), rel=1e-7)
    assert mf.growth_rate(2, 0.0, 3) == 0.0
    assert np.isfinite(mf.growth_rate(np.arange(1, 50), 2000.0, 3)).all()
    # the fastest mode on S^1 at beta = 9 is k = 4
    assert np.argmax(mf.growth_rate(k, 9.0, 2)) + 1 == 4


def test_isotropy_detection():
    assert mf.AttentionModel(d=3, beta=2.0, Q=2 * np.eye(3), V=-np.eye(3)).isotropic() == (2.0, -1.0)
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    assert mf.AttentionModel(d=2, V=rot).isotropic() is None


@pytest.mark.parametrize("d, qk", [(2, np.eye(2)), (2, 1.3 * np.array([[0.6, -0.8], [0.8, 0.6]])), (3, 0.7 * np.eye(3)),
                                   (3, -np.eye(3))])
@pytest.mark.parametrize("beta", [0.5, 9.0, 30.0])
def test_spectral_energy_equals_the_double_sum(d, qk, beta):
    """The diagonalized (Fourier / Funk--Hecke) energy of a rotation-invariant kernel equals
    the blocked double sum (measured: <= 7e-14 relative)."""
    from meanfield.fields.energy import energy

    rng = np.random.default_rng(int(10 * beta) + d)
    x = rng.normal(size=(2000, d))
    x /= np.linalg.norm(x, axis=1)[:, None]
    w = rng.random(2000)
    w /= w.sum()
    model = mf.AttentionModel(d=d, beta=beta, Q=qk, K=np.eye(d), normalized=False)
    exact = energy(model, x, w, method="direct")
    assert abs(energy(model, x, w, method="spectral") - exact) <= 1e-12 * abs(exact)


def test_spectral_energy_refuses_anisotropic_kernels():
    from meanfield.fields.energy import energy

    model = mf.AttentionModel(d=3, beta=1.0, Q=np.diag([1.0, 2.0, 3.0]))
    x = np.eye(3)
    with pytest.raises(ValueError, match="spectral energy"):
        energy(model, x, np.ones(3), method="spectral")
    assert np.isfinite(energy(model, x, np.ones(3), method="auto"))

"""The spectral attention field on S^2 for general Q, K, V against the exact direct sums."""

import math

import numpy as np
import pytest

import meanfield as mf
from meanfield.fields.attention import DirectField
from meanfield.pde.solver import make_field
from meanfield.fields.spectral_sphere import SpectralSphereField, spectral_cost
from meanfield.fields.spectral_sphere_general import spectral_sphere_cost, spectral_sphere_field
from meanfield.fields.sphere_transforms import point_angles
from meanfield.fields.spectral_sphere_general import (MAX_COEFFICIENT_BYTES, GeneralSphereField, _Layout, _scale,
                                               general_cost, general_plan, real_harmonics)
from meanfield.geometry.sphere import icosahedral

from _helpers import exact_sphere_field, point_sets, rel_err, smooth_measure, sphere_points

TOL = 1e-12


def general_model(seed, beta, normalized=True, spread=0.4):
    """Random non-symmetric Q, K, V near the identity (singular values of Q^T K ~ 0.1..2)."""
    rng = np.random.default_rng(seed)
    Q, K, V = (np.eye(3) + s * rng.normal(size=(3, 3)) for s in (spread, spread, 0.5))
    return mf.AttentionModel(d=3, beta=beta, Q=Q, K=K, V=V, normalized=normalized)


@pytest.fixture(scope="module")
def mesh3():
    return icosahedral(3)


_FIELDS = {}


def field_for(seed, beta, normalized, tolerance=TOL):
    """Fields are built once per module (the construction is the expensive part)."""
    key = (seed, beta, normalized, tolerance)
    if key not in _FIELDS:
        _FIELDS[key] = GeneralSphereField(general_model(seed, beta, normalized), tolerance)
    return _FIELDS[key]


# -- agreement with the direct sums ------------------------------------------------------
@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 9.0, 30.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_direct_at_the_tolerance(mesh3, seed, beta, normalized):
    field = field_for(seed, beta, normalized)
    m = field.model
    assert m.isotropic() is None and field.name == "spectral"
    vnorm = np.linalg.norm(m.V, 2)
    for name, x, y, w in point_sets(mesh3):
        ref = DirectField(m)(x, y, w)
        got = field(x, y, w)
        assert rel_err(got, ref) <= TOL, (name, rel_err(got, ref), field)
        if normalized:  # the documented per-target guarantee: relative to ||V||_2
            assert np.abs(got - ref).max() <= TOL * vnorm


def rotation(vec):
    """The rotation by |vec| about vec (Rodrigues)."""
    vec = np.asarray(vec, dtype=float)
    a = np.linalg.norm(vec)
    k = np.array([[0, -vec[2], vec[1]], [vec[2], 0, -vec[0]], [-vec[1], vec[0], 0]]) / a
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
@pytest.mark.parametrize("c", [1.0, -0.7])
@pytest.mark.parametrize("beta", [0.0, 1.0, 9.0, 30.0])
def test_matches_the_exact_field_of_a_rotated_kernel(beta, c, normalized):
    """An exact value computed without any backend: ``Q^T K = c R`` (R a rotation, not
    symmetric: the order of Q and K matters) and a general V. Substituting ``z = R y``
    reduces the kernel to Funk--Hecke's, so for a density of spherical harmonics the
    field is ``V R^T grad H / (beta c)`` projected, ``H = i_0 + sum_l a_l i_l p_l(R^T x)``
    (:func:`_helpers.exact_sphere_field`). Direct sums: round-off (measured <= 1.5e-14);
    the expansion: its tolerance (measured <= 3.6e-14)."""
    R = rotation([0.3, -0.5, 0.7])
    O = rotation([1.1, 0.2, -0.4])
    V = np.array([[1.0, 0.3, -0.2], [0.1, 0.8, 0.4], [-0.3, 0.2, 1.2]])
    m = mf.AttentionModel(d=3, beta=beta, Q=0.5 * O, K=2.0 * c * O @ R, V=V, normalized=normalized)
    assert m.isotropic() is None
    x = sphere_points(np.random.default_rng(8), 300)
    y, w = smooth_measure()
    ref = exact_sphere_field(x, beta, c, R, V, normalized)
    assert np.abs(ref).max() > 1e-2
    assert rel_err(DirectField(m)(x, y, w), ref) <= 5e-13
    assert rel_err(GeneralSphereField(m, TOL)(x, y, w), ref) <= 2 * TOL
    # the transposed kernel (K^T Q = c R^T) is a different field: the test tells them apart
    if beta > 0:
        swapped = mf.AttentionModel(d=3, beta=beta, Q=m.K, K=m.Q, V=V, normalized=normalized)
        assert rel_err(DirectField(swapped)(x, y, w), ref) > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_sa_at_a_looser_tolerance_is_spectral_on_smooth_measures(mesh3, seed):
    """At 1e-9 a smooth measure needs (almost) no direct fallback, and the tolerance holds."""
    field = field_for(seed, 9.0, True, 1e-9)
    x, y = mesh3.edge_points[:, 0, :], mesh3.centers
    w = np.exp(2.0 * (y @ np.array([0.6, 0.0, 0.8]))) * mesh3.areas
    got = field(x, y, w)
    assert field.last_fallback_count <= 0.01 * len(x)
    ref = DirectField(field.model)(x, y, w)
    assert np.abs(got - ref).max() <= 1e-9 * np.linalg.norm(field.model.V, 2)
    assert rel_err(got, ref) <= 1e-9


def test_error_estimate_bounds_the_actual_error(mesh3):
    """The SA fallback rests on a per-target error estimate; it must not under-estimate."""
    x, y = mesh3.edge_points[:, 0, :], mesh3.centers
    rng = np.random.default_rng(5)
    centres = sphere_points(rng, 3)
    measures = {
        "random": rng.random(len(y)) * mesh3.areas,
        "vmf3": np.exp(3.0 * (y @ centres[0] - 1.0)) * mesh3.areas,
        "clusters": sum(np.exp(50.0 * (y @ c - 1.0)) for c in centres) * mesh3.areas,
        "point": np.where(np.arange(len(y)) == 7, 1.0, 0.0),
    }
    for seed, beta, tol in [(0, 1.0, 1e-12), (1, 9.0, 1e-12), (2, 30.0, 1e-12), (0, 9.0, 1e-9), (1, 30.0, 1e-9)]:
        field = field_for(seed, beta, True, tol)
        for name, w in measures.items():
            coeffs = field.coefficients(y, w)
            out, err = field._transform(x, coeffs, w.sum())
            out -= np.einsum("ij,ij->i", out, x)[:, None] * x
            actual = np.linalg.norm(out - DirectField(field.model)(x, y, w), axis=1) / field.v_norm
            ok = np.isfinite(err)
            assert np.all(actual[ok] <= err[ok]), (seed, beta, tol, name, (actual[ok] / err[ok]).max())


def test_isotropic_models_through_the_general_expansion(mesh3):
    """The general backend also handles isotropic kernels (constant scale) and V != v I."""
    x, y = mesh3.edge_points[:, 0, :], mesh3.centers
    w = np.random.default_rng(2).random(len(y)) * mesh3.areas
    for normalized in (True, False):
        iso = mf.AttentionModel(d=3, beta=9.0, normalized=normalized)
        general = GeneralSphereField(iso)
        assert general.scale == "constant" and general.lmax_x == general.lmax_y == SpectralSphereField(iso).lmax
        assert rel_err(general(x, y, w), SpectralSphereField(iso)(x, y, w)) <= TOL
        # Q^T K = c I with a general V: only the general backend applies
        m = mf.AttentionModel(d=3, beta=9.0, V=[[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, -1.0]],
                              normalized=normalized)
        assert isinstance(spectral_sphere_field(m), GeneralSphereField)
        assert rel_err(spectral_sphere_field(m)(x, y, w), DirectField(m)(x, y, w)) <= TOL


# -- the two-phase API (MPI) -------------------------------------------------------------
@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
@pytest.mark.parametrize("kind", ["general", "isotropic", "beta0"])
def test_coefficients_of_parts_sum_to_the_whole(mesh3, kind, normalized):
    x, y = mesh3.edge_points[:, 0, :], mesh3.centers
    rng = np.random.default_rng(4)
    w = rng.random(len(y)) * mesh3.areas
    if kind == "general":
        field = field_for(1, 9.0, normalized, 1e-9)
    elif kind == "isotropic":
        field = spectral_sphere_field(mf.AttentionModel(d=3, beta=9.0, normalized=normalized))
    else:
        field = spectral_sphere_field(general_model(0, 0.0, normalized))
    part = rng.random(len(y)) < 0.3
    c1, c2 = field.coefficients(y[part], w[part]), field.coefficients(y[~part], w[~part])
    whole = field.coefficients(y, w)
    assert c1.dtype == np.float64 and c1.shape == whole.shape
    assert np.abs(c1 + c2 - whole).max() <= 1e-14 * np.abs(whole).max()
    ref = field(x, y, w)
    count = field.last_fallback_count
    got = field.evaluate(x, c1 + c2, y, w)
    assert np.abs(got - ref).max() <= 1e-13 * np.abs(ref).max()
    assert abs(field.last_fallback_count - count) <= 0.01 * len(x)
    # a part without mass (an MPI rank with empty cells) contributes zeros, also for SA
    empty = field.coefficients(y[:5], 0.0 * w[:5])
    assert empty.shape == whole.shape and not np.any(empty)
    # the total weight comes from the coefficients: SA is homogeneous of degree 0
    if normalized:
        assert np.abs(field.evaluate(x, 2.0 * whole, y, 2.0 * w) - ref).max() <= 1e-12 * np.abs(ref).max()
    else:
        assert np.abs(field.evaluate(x, 2.0 * whole) - 2.0 * ref).max() <= 1e-13 * np.abs(ref).max()


def test_evaluate_checks_its_coefficients(mesh3):
    field = field_for(1, 9.0, True, 1e-9)
    x, y = mesh3.edge_points[:, 0, :], mesh3.centers
    with pytest.raises(ValueError, match="coefficients must have shape"):
        field.evaluate(x, np.zeros(7), y, mesh3.areas)
    with pytest.raises(ValueError, match="positive total weight"):
        field.evaluate(x, np.zeros(field.coefficient_shape), y, mesh3.areas)


# -- symmetry ------------------------------------------------------------------------------
@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
def test_rotating_the_problem_rotates_the_field(mesh3, normalized):
    """Q' = Q R^T, K' = K R^T, V' = R V R^T at R x, R y: X' (R x) = R X(x)."""
    rng = np.random.default_rng(8)
    R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R *= np.sign(np.linalg.det(R))
    m = general_model(2, 9.0, normalized)
    mr = mf.AttentionModel(d=3, beta=m.beta, Q=m.Q @ R.T, K=m.K @ R.T, V=R @ m.V @ R.T, normalized=normalized)
    x, y = mesh3.edge_points[:, 0, :], mesh3.centers
    w = rng.random(len(y)) * mesh3.areas
    tol = 1e-9 if normalized else TOL  # SA at 1e-9: (almost) all targets spectral on both sides
    f, fr = GeneralSphereField(m, tol), GeneralSphereField(mr, tol)
    np.testing.assert_allclose(fr.sigma, f.sigma, rtol=1e-13)
    X = f(x, y, w)
    Xr = fr(x @ R.T, y @ R.T, w)
    assert f.last_fallback_count + fr.last_fallback_count <= 0.02 * len(x)
    assert np.abs(Xr - X @ R.T).max() <= tol * np.abs(X).max()


# -- limits, cost, construction --------------------------------------------------------------
def test_large_beta_is_refused_cleanly_and_auto_uses_direct():
    rng = np.random.default_rng(3)
    m = mf.AttentionModel(d=3, beta=200.0, Q=np.diag([3.0, 1.0, 0.5]) + 0.3 * rng.normal(size=(3, 3)),
                          K=np.eye(3) + 0.3 * rng.normal(size=(3, 3)))
    with pytest.raises(ValueError, match="coefficient matrix .* above the limit"):
        GeneralSphereField(m)
    with pytest.raises(ValueError, match="use the direct backend"):
        make_field(m, "spectral")
    assert spectral_sphere_cost(m, 30720, 20480) == math.inf
    assert isinstance(make_field(m, "auto", n_targets=122880, n_sources=81920), DirectField)
    # a smaller limit refuses a moderate model too, with its actual size in the message
    small = general_model(0, 9.0)
    plan = general_plan(small)
    with pytest.raises(ValueError, match=rf"lmax_x = {plan['lmax_x']}, lmax_y = {plan['lmax_y']}"):
        GeneralSphereField(small, max_bytes=plan["bytes"] - 1)


def test_cost_estimate_and_backend_choice():
    m = general_model(1, 9.0)
    plan = general_plan(m)
    assert plan["scale"] == "quadratic" and plan["bytes"] < MAX_COEFFICIENT_BYTES
    assert spectral_cost(m, 10, 10) == math.inf  # the isotropic estimate does not apply ...
    assert spectral_sphere_cost(m, 10, 10) == general_cost(m, 10, 10) > 100  # ... the general one does
    n, k = 30720, 20480
    assert general_cost(m, n, k) < n * k / 50
    assert general_cost(m, 2 * n, k) > general_cost(m, n, k)
    assert general_cost(general_model(1, 30.0), n, k) > general_cost(m, n, k)
    assert general_cost(mf.AttentionModel(d=2, beta=1.0), n, k) == math.inf
    assert isinstance(make_field(m, "auto", n_targets=n, n_sources=k), GeneralSphereField)
    assert isinstance(make_field(m, "auto", n_targets=10, n_sources=10), DirectField)
    spec = make_field(m, "spectral", tolerance=1e-9)
    assert isinstance(spec, GeneralSphereField) and spec.name == "spectral" and spec.model is m
    assert spec.tolerance == 1e-9
    with pytest.raises(ValueError, match="tolerance"):
        GeneralSphereField(m, tolerance=1e-16)
    with pytest.raises(ValueError, match="d = 3"):
        GeneralSphereField(mf.AttentionModel(d=2, beta=1.0))


def test_degenerate_inputs(mesh3):
    rng = np.random.default_rng(7)
    x = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1e-17, 0.0, 1.0], [0.0, 1.0, 0.0]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = sphere_points(rng, 40)
    w = rng.random(40)
    w[::3] = 0.0
    for normalized in (True, False):
        field = field_for(0, 9.0, normalized)
        assert rel_err(field(x, y, w), DirectField(field.model)(x, y, w)) <= TOL
        assert field(x[:0], y, w).shape == (0, 3)
    assert np.all(field_for(0, 9.0, False)(x, y, 0 * w) == 0)
    with pytest.raises(ValueError, match="positive total weight"):
        field_for(0, 9.0, True)(x, y, 0 * w)
    with pytest.raises(ValueError, match="nonnegative"):
        field_for(0, 9.0, True).coefficients(y, -w)
    # rank-deficient Q^T K: sigma_3 = 0 (some targets have |A^T x| = 0)
    m = mf.AttentionModel(d=3, beta=9.0, Q=np.diag([1.0, 0.7, 0.0]), K=np.eye(3) + 0.2 * rng.normal(size=(3, 3)),
                          V=np.eye(3) + 0.3 * rng.normal(size=(3, 3)))
    f = GeneralSphereField(m)
    assert f.sigma[2] < 1e-15
    xs = np.concatenate([x, mesh3.edge_points[:200, 0, :]])
    assert rel_err(f(xs, y, w), DirectField(m)(xs, y, w)) <= TOL


@pytest.mark.parametrize("seed, beta, normalized", [(0, 9.0, True), (1, 30.0, True), (2, 9.0, False)])
def test_the_expansion_reproduces_the_scaled_kernel(seed, beta, normalized):
    """sum_pq C_pq Y_p(x') Y_q(y') = exp(x'.Sigma y' - s(x')) at random points: construction
    (Funk--Hecke in y, octant quadrature in x) and the two truncations."""
    field = field_for(seed, beta, normalized)
    rng = np.random.default_rng(seed)
    xp, yp = sphere_points(rng, 300), sphere_points(rng, 300)
    exact = np.exp(xp @ (field.sigma[:, None] * yp.T) - _scale(xp, field.sigma, field._a)[:, None])
    assert exact.max() <= 1.0
    hx = real_harmonics(xp, field.lmax_x)[field._lx.order]
    hy = real_harmonics(yp, field.lmax_y)[field._ly.order]
    lx, ly = field._lx, field._ly
    approx = sum(hx[lx.bounds[c] : lx.bounds[c + 1]].T @ block @ hy[ly.bounds[c] : ly.bounds[c + 1]]
                 for c, block in enumerate(field._blocks))
    assert np.abs(approx - exact).max() < 1e-13


def test_real_harmonics_follow_ducc0():
    """The explicit real harmonics (construction) and ducc0's transforms (each call) must use
    the same functions: Re/Im of ducc0's a_lm from a unit weight are the harmonics."""
    from ducc0.sht.experimental import adjoint_synthesis_general, synthesis_general

    rng = np.random.default_rng(9)
    p = np.concatenate([sphere_points(rng, 20), [[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]])
    L = 40
    lay = _Layout(L)
    H = real_harmonics(p, L)[lay.order]
    loc = point_angles(p)
    for j in (0, 5, 20, 21):
        alm = adjoint_synthesis_general(map=np.eye(len(p))[j : j + 1], spin=0, lmax=L, loc=loc, epsilon=1e-13,
                                        nthreads=1)
        assert np.abs(lay.to_real(alm)[:, 0] - H[:, j]).max() < 1e-12
    T = rng.normal(size=(lay.size, 1))
    f = synthesis_general(alm=lay.to_alm(T), spin=0, lmax=L, loc=loc, epsilon=1e-13, nthreads=1)[0]
    assert np.abs(f - H.T @ T[:, 0]).max() < 1e-11 * np.abs(T).sum() / L
    # orthonormal, and the eight reflection classes are what the blocks assume
    q = sphere_points(rng, 5)
    for refl in np.diag([-1.0, 1, 1]), np.diag([1.0, -1, 1]), np.diag([1.0, 1, -1]):
        Hr = real_harmonics(q @ refl, L)[lay.order]
        Hq = real_harmonics(q, L)[lay.order]
        for c in range(8):
            blk = slice(lay.bounds[c], lay.bounds[c + 1])
            ratio = Hr[blk] / np.where(np.abs(Hq[blk]) > 1e-8, Hq[blk], np.nan)
            ratio = ratio[np.isfinite(ratio)]
            assert ratio.size > 0 and np.all(np.abs(ratio - ratio[0]) < 1e-8) and abs(abs(ratio[0]) - 1) < 1e-8


# -- the SA split: clustered measures meet the tolerance with few direct sums --------------
def _clusters(mesh, kappas):
    y, areas = mesh.centers, mesh.areas
    centres = sphere_points(np.random.default_rng(8), 6)
    out = {}
    for kappa in kappas:
        w = np.exp(kappa * (y @ centres[0] - 1.0)) * areas
        out[f"vmf{kappa:g}"] = w / w.sum()
    w = sum(np.exp(100.0 * (y @ c - 1.0)) for c in centres) * areas
    out["six"] = w / w.sum()
    return out


@pytest.mark.parametrize("project", [True, False], ids=["tangent", "unprojected"])
@pytest.mark.parametrize("seed, beta, tol", [(0, 9.0, 1e-10), (1, 9.0, 1e-12), (2, 30.0, 1e-10)])
def test_sa_split_meets_the_tolerance_on_clustered_measures(mesh3, seed, beta, tol, project):
    """Every target within ``tolerance ||V||_2`` of the direct sums, whether transformed,
    split (heavy sources direct in the target scale, the light rest transformed) or sent to
    the direct fallback; a few also with the default constructor (``make_field``)."""
    field = field_for(seed, beta, True, tol)
    x, y = mesh3.edge_points[:, 0, :], mesh3.centers
    for name, w in _clusters(mesh3, (20.0, 200.0)).items():
        got = field(x, y, w, project=project)
        ref = DirectField(field.model)(x, y, w, project=project)
        assert np.abs(got - ref).max() <= tol * field.v_norm, (name, np.abs(got - ref).max() / field.v_norm)
        assert field.last_split_count + field.last_fallback_count <= len(x)


@pytest.mark.parametrize("seed", [0, 1])
def test_sa_split_on_level_4_needs_few_direct_sums_at_a_tolerance_of_1e_10(seed):
    """One finite-volume stage on level 4, SA beta = 9, single clusters: the transforms alone
    miss 1e-10 at 37-71% of the targets (measured); with the split at most 1% go to the
    direct sums, and the field stays within 1e-12 ||V||_2 of them."""
    mesh = icosahedral(4)
    field = field_for(seed, 9.0, True, 1e-10)
    x, y = mesh.edge_points[:, 0, :], mesh.centers
    split = 0
    for name, w in _clusters(mesh, (20.0, 200.0)).items():
        got = field(field.plan(x), field.plan(y), w)
        assert np.abs(got - DirectField(field.model)(x, y, w)).max() <= 1e-12 * field.v_norm, name
        assert field.last_fallback_count <= 0.01 * len(x), (name, field.last_fallback_count)
        split += field.last_split_count
    assert split > 0.3 * len(x)

"""The zonal PDE engine: polar bands of S^{d-1} (ZonalMesh), the attention field of rings reduced by
Bessel functions (ZonalField), against full-sphere quadratures, the icosahedral solver in d = 3,
and the Gegenbauer growth rates of SPEC section 2 in d = 4, 5, 8."""

import math

import numpy as np
import pytest
from scipy import special

from meanfield.dynamics.model import Terms, VelocityModel
from meanfield.dynamics.perceptron import Perceptron
from meanfield.fields.attention import AttentionModel, DirectField, FieldOverflowError, growth_rate
from meanfield.fields.zonal import ZonalField, axial_parameters, ring_functions, zonal_velocity
from meanfield.geometry.sphere import load_icosahedral
from meanfield.geometry.zonal import ZonalDiffusion, ZonalMesh, sphere_measure
from meanfield.pde.finite_volume import FiniteVolume
from meanfield.pde.solver import Simulation, State


def meridian(d, phi, axis=1):
    """Points at polar angles ``phi`` in the plane of ``e_1`` and ``e_axis``."""
    phi = np.asarray(phi, dtype=float)
    x = np.zeros(phi.shape + (d,))
    x[..., 0] = np.cos(phi)
    x[..., axis] = np.sin(phi)
    return x


def sphere_rule(k, n):
    """A product rule on S^{k-1}, k = 3 (Gauss--Legendre in cos theta x uniform longitudes):
    points ``(n * 2n, 3)`` and weights summing to 1, exact for polynomials of degree < 2n."""
    assert k == 3
    x, wx = np.polynomial.legendre.leggauss(n)
    lon = np.arange(2 * n) * math.pi / n
    ct = np.repeat(x, 2 * n)
    st = np.sqrt(1.0 - ct**2)
    lo = np.tile(lon, n)
    w = np.repeat(wx, 2 * n) / (4 * n)
    return np.stack([ct, st * np.cos(lo), st * np.sin(lo)], axis=1), w


def ring_samples(d, phis, masses, rule):
    """The rings at ``phis`` (uniform on the S^{d-2} of each, total mass ``masses``) as weighted points."""
    pts, w = rule
    ys, ws = [], []
    for p, m in zip(phis, masses):
        y = np.zeros((len(w), d))
        y[:, 0] = math.cos(p)
        y[:, 1:] = math.sin(p) * pts
        ys.append(y)
        ws.append(m * w)
    return np.concatenate(ys), np.concatenate(ws)


def rel_err(got, ref):
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-300))


# -- the mesh -----------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [3, 4, 5, 8])
@pytest.mark.parametrize("cells", [3, 17, 200])
def test_band_measures_sum_to_the_sphere(d, cells):
    mesh = ZonalMesh(d, cells)
    total = 2.0 * math.pi ** (d / 2) / math.gamma(d / 2)
    assert mesh.total_measure == pytest.approx(total, rel=1e-15)
    assert abs(mesh.areas.sum() / total - 1.0) < 4e-16 * max(1.0, math.sqrt(cells))
    mesh.validate()
    # each band against the exact integral (the incomplete beta function in cos phi)
    lo, hi = np.arange(cells) * mesh.h, (np.arange(cells) + 1) * mesh.h
    a = 0.5 * (d - 1)

    def cumulative(phi):  # |S^{d-2}| int_0^phi sin^{d-2}: by the regularized incomplete beta of sin^2
        s2 = np.sin(phi) ** 2
        half = 0.5 * total * special.betainc(a, 0.5, s2)
        return np.where(phi <= 0.5 * math.pi, half, total - half)

    exact = cumulative(hi) - cumulative(lo)
    # (the difference of cumulatives loses digits on small bands: an absolute tolerance)
    assert np.allclose(mesh.areas, exact, rtol=1e-13, atol=1e-14 * total)
    assert mesh.areas[0] == pytest.approx(mesh.areas[-1], rel=1e-12)
    assert mesh.areas[0] == pytest.approx(mesh.ring_measure * mesh.h ** (d - 1) / (d - 1), rel=mesh.h**2)


def test_mesh_geometry():
    d, n = 5, 12
    mesh = ZonalMesh(d, n)
    assert mesh.manifold == "zonal" and mesh.d == d and mesh.n_cells == n and mesh.n_edges == n - 1
    assert mesh.sfc_order() is None and mesh.max_degree == n
    assert np.allclose(np.linalg.norm(mesh.centers, axis=1), 1.0)
    assert np.allclose(mesh.polar_angle(mesh.centers), mesh.angles)
    # normals: unit, tangent, along increasing phi
    nrm = mesh.edge_normals[:, 0]
    pts = mesh.edge_points[:, 0]
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1) and np.allclose(np.sum(nrm * pts, axis=1), 0)
    assert np.allclose(mesh.polar_angle(pts + 1e-7 * nrm) - mesh.edge_angles, 1e-7, atol=1e-12)
    assert np.allclose(mesh.edge_weights[:, 0], sphere_measure(d - 1) * np.sin(mesh.edge_angles) ** (d - 2))
    # every edge has its left and right band, listed with the right signs (the end bands twice)
    for i in range(n):
        for e, s in zip(mesh.cell_edges[i], mesh.cell_edge_sign[i]):
            assert mesh.edge_cells[e, 0 if s > 0 else 1] == i
    # the centred gradient along e_phi, mirror at the poles: exact for a + c phi^2 at phi = h/2
    rho = 1.0 + 0.3 * mesh.angles**2
    g = np.einsum("ndk,nk->nd", mesh.grad_operator, rho[mesh.neighbors] - rho[:, None])
    slope = np.einsum("nd,nd->n", g, mesh.tangent_at(mesh.angles))
    assert slope[0] == pytest.approx(0.6 * mesh.angles[0], rel=1e-12)
    assert np.allclose(slope[1:-1], 0.6 * mesh.angles[1:-1], rtol=1e-12)
    # cell quadrature: weights sum to the areas, averages of a zonal polynomial exact
    pts, wts = mesh.cell_quadrature(6)
    assert np.allclose(wts.sum(axis=1), mesh.areas, rtol=1e-14)
    avg = mesh.cell_averages(lambda x: x[:, 0] ** 2, 6)
    assert np.dot(avg, mesh.areas) == pytest.approx(mesh.total_measure / d, rel=1e-11)


def test_gegenbauer_coefficient():
    mesh = ZonalMesh(6, 400)
    rho = mesh.cell_averages(lambda x: 2.0 + 0.25 * mesh.gegenbauer(3, mesh.polar_angle(x)) - mesh.gegenbauer(1, mesh.polar_angle(x)), 8)
    assert mesh.gegenbauer_coefficient(rho, 0) == pytest.approx(2.0, rel=1e-12)
    # (piecewise constant bands: O(h^2) off)
    assert mesh.gegenbauer_coefficient(rho, 3) == pytest.approx(0.25, rel=3 * (3 * mesh.h) ** 2)
    assert mesh.gegenbauer_coefficient(rho, 2) == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(mesh.mean(rho * mesh.areas)[1:], 0)


@pytest.mark.parametrize("bad", [(2, 10), (3, 2), (4.5, 10), (4, 7.5)])
def test_mesh_bad_input(bad):
    with pytest.raises(ValueError):
        ZonalMesh(*bad)


# -- the reduction --------------------------------------------------------------------------
@pytest.mark.parametrize("d", [3, 4, 5, 8, 33])
def test_ring_functions(d):
    nu = 0.5 * (d - 3)
    r = np.array([1e-9, 0.01, 0.5, 1.9, 2.1, 2 * math.sqrt(nu + 1) * (1 - 1e-12), 2 * math.sqrt(nu + 1) * (1 + 1e-12),
                  7.0, 60.0, 900.0])
    f0, f1 = ring_functions(d, r)
    ref0 = np.exp(special.gammaln(nu + 1) + nu * np.log(2 / r) + np.log(special.ive(nu, r)))
    ref1 = np.exp(special.gammaln(nu + 1) + nu * np.log(2 / r) + np.log(special.ive(nu + 1, r)))
    assert rel_err(f0, ref0) < 1e-13 and np.max(np.abs(f1 / ref1 - 1)) < 1e-12
    g0, g1 = ring_functions(d, -r)
    assert np.array_equal(g0, f0) and np.array_equal(g1, -f1)
    z0, z1 = ring_functions(d, np.zeros(1))
    assert z0[0] == 1.0 and z1[0] == 0.0


@pytest.mark.parametrize("beta", [0.0, 2.3, 40.0])
@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
def test_ring_field_against_the_sphere_integral_d4(beta, normalized):
    """d = 4: each ring is an S^2, sampled by an exact product rule; the zonal field at targets
    anywhere (poles included) matches the direct sums over the samples to round-off."""
    d = 4
    model = AttentionModel(d, beta, normalized=normalized)
    field = ZonalField(model)
    rng = np.random.default_rng(3)
    phis = np.array([0.2, 0.7, 1.9, 3.0])
    masses = np.array([0.1, 0.3, 0.4, 0.2])
    sources = meridian(d, phis)
    t_phi = np.r_[0.0, rng.uniform(0, math.pi, 6), math.pi]
    targets = meridian(d, t_phi, axis=2)
    targets[1:-1, 1:] = rng.normal(size=(6, d - 1))  # any direction in e_1^perp
    targets[1:-1, 1:] *= (np.sin(t_phi[1:-1]) / np.linalg.norm(targets[1:-1, 1:], axis=1))[:, None]
    ys, ws = ring_samples(d, phis, masses, sphere_rule(3, 48))
    direct = DirectField(model)
    for project in (True, False):
        got = field(targets, sources, masses, project=project)
        ref = direct(targets, ys, ws, project=project)
        scale = max(1.0, np.abs(direct(targets, ys, ws, project=False)).max())
        assert np.abs(got - ref).max() < 1e-12 * scale
    # tangent, along e_phi
    v = field(targets, sources, masses)
    assert np.abs(np.sum(v * targets, axis=1)).max() < 1e-14 * max(1, np.abs(v).max())
    # zero at the poles (the last target is 1e-16 off the pole: e^40 1e-16 there)
    assert np.abs(v[[0, -1]]).max() < 1e-14 * max(1.0, np.abs(v).max())


def test_axial_head_against_the_sphere_integral():
    """A head that is not isotropic but keeps zonal measures zonal: Q^T K = diag(a, c, c, c),
    V = diag(p, q, q, q), c < 0 (the kernel exponent of the rings negative)."""
    d = 4
    Q = np.diag([1.3, -0.8, -0.8, -0.8])
    V = np.diag([0.5, -1.2, -1.2, -1.2])
    for normalized in (True, False):
        model = AttentionModel(d, 1.7, Q=Q, V=V, normalized=normalized)
        assert axial_parameters(model) == pytest.approx((1.3, -0.8, 0.5, -1.2))
        phis = np.array([0.4, 1.2, 2.2])
        masses = np.array([0.5, 0.2, 0.3])
        targets = meridian(d, np.linspace(0.1, 3.0, 7), axis=3)
        ys, ws = ring_samples(d, phis, masses, sphere_rule(3, 40))
        for project in (True, False):
            got = ZonalField(model)(targets, meridian(d, phis), masses, project=project)
            ref = DirectField(model)(targets, ys, ws, project=project)
            assert rel_err(got, ref) < 1e-12


def test_bands_against_fine_rings():
    """Sources equal to the mesh's centres are whole bands: the band rule (4 points per band)
    against 40 rings per band (measured 4e-10, 2e-12, 7e-15 at 20, 40, 80 bands), and the point-ring field (each band at its centre) is O(h^2) off."""
    d = 5
    model = AttentionModel(d, 6.0)
    errs = []
    for cells in (20, 40, 80):
        mesh = ZonalMesh(d, cells)
        rho = mesh.cell_averages(lambda x: np.exp(2 * x[:, 0]), 8)
        m = rho * mesh.areas
        targets = mesh.edge_points[:, 0]
        band = ZonalField(model, mesh)(targets, mesh.centers, m)
        phi, wts = mesh.band_quadrature(40)
        fine = ZonalField(model)(targets, meridian(d, phi.ravel()), (wts * rho[:, None]).ravel())
        assert rel_err(band, fine) < 1e-9 * (20 / cells) ** 8  # 4 Gauss points: O(h^8)
        copy = ZonalField(model, mesh)(targets, mesh.centers.copy(), m)  # equal points are the bands
        point_ring = ZonalField(model)(targets, mesh.centers, m)  # without the mesh: one ring each
        assert np.array_equal(copy, band)
        errs.append(rel_err(point_ring, fine))
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(orders > 1.8), (errs, orders)


def test_sa_far_mass_does_not_underflow():
    """SA at a large beta with all mass in one band far from the target: the rows are rescaled."""
    d = 4
    mesh = ZonalMesh(d, 30)
    model = AttentionModel(d, 600.0)
    m = np.zeros(30)
    m[0] = 1.0
    v = ZonalField(model, mesh)(mesh.meridian(np.array([3.0])), mesh.centers, m)
    assert np.all(np.isfinite(v)) and np.abs(v).max() > 0


def test_usa_overflow_and_shift():
    d = 4
    mesh = ZonalMesh(d, 20)
    m = mesh.cell_averages(lambda x: np.exp(x[:, 0]), 4) * mesh.areas
    targets = mesh.edge_points[:, 0]
    with pytest.raises(FieldOverflowError):
        ZonalField(AttentionModel(d, 800.0, normalized=False), mesh)(targets, mesh.centers, m)
    shifted = ZonalField(AttentionModel(d, 800.0, normalized=False, shift=True), mesh)(targets, mesh.centers, m)
    assert np.all(np.isfinite(shifted))
    # shift = a rescaling by e^{-beta}
    a = ZonalField(AttentionModel(d, 3.0, normalized=False), mesh)(targets, mesh.centers, m)
    b = ZonalField(AttentionModel(d, 3.0, normalized=False, shift=True), mesh)(targets, mesh.centers, m)
    assert rel_err(b * math.exp(3.0), a) < 1e-14


def test_field_bad_input():
    with pytest.raises(ValueError, match="d >= 3"):
        ZonalField(AttentionModel(2, 1.0))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="zonal"):
        ZonalField(AttentionModel(4, 1.0, Q=rng.normal(size=(4, 4))))
    with pytest.raises(ValueError, match="ZonalMesh"):
        ZonalField(AttentionModel(4, 1.0), ZonalMesh(5, 10))
    mesh = ZonalMesh(4, 10)
    perceptron = Perceptron(np.eye(4, 2), np.eye(2, 4), np.zeros(2), "tanh")
    with pytest.raises(ValueError, match="perceptron"):
        zonal_velocity(VelocityModel(4, Terms(4, (AttentionModel(4, 1.0),), perceptron)), mesh)
    with pytest.raises(ValueError, match="R\\^5"):
        zonal_velocity(AttentionModel(4, 1.0), ZonalMesh(5, 10))
    with pytest.raises(ValueError, match="positive total weight"):
        ZonalField(AttentionModel(4, 1.0), mesh)(mesh.centers, mesh.centers, np.zeros(10))


# -- d = 3 against the icosahedral meshes -----------------------------------------------------
def zonal_density(x):
    return np.exp(1.5 * x[:, 0]) * (1 + 0.5 * x[:, 0] ** 2)


@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
def test_d3_field_against_icosahedral_direct(normalized):
    """The zonal field of the exact density (200 Gauss rings) against DirectField on the
    icosahedral meshes' cell masses: the mesh's error, order 2."""
    model = AttentionModel(3, 4.0, normalized=normalized)
    x, w = np.polynomial.legendre.leggauss(200)
    phi = 0.5 * math.pi * (x + 1)
    ring_mass = 0.5 * math.pi * w * 2 * math.pi * np.sin(phi) * zonal_density(meridian(3, phi))
    errs = []
    for level in (2, 3, 4):
        mesh = load_icosahedral(level)
        mass = mesh.cell_averages(zonal_density, 4) * mesh.areas
        ref = ZonalField(model)(mesh.centers, meridian(3, phi), ring_mass / mass.sum())
        got = DirectField(model)(mesh.centers, mesh.centers, mass / mass.sum())
        errs.append(rel_err(got, ref))
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert errs[-1] < 1e-3 and np.all(orders > 1.8), (errs, orders)


def legendre_moments(rho, pts, wts, ls=(1, 2, 3)):
    return np.array([np.dot(rho, np.sum(special.eval_legendre(l, pts[..., 0]) * wts, axis=1)) for l in ls])


def test_d3_pde_against_icosahedral_solver():
    """The zonal PDE (256 bands) and the icosahedral finite volumes (levels 2-4) from the same zonal
    density: the Legendre moments at t = 1 agree to the sphere mesh's accuracy, order 2."""
    model = AttentionModel(3, 3.0)
    zm = ZonalMesh(3, 256)
    st = State(0.0, zm.cell_averages(zonal_density, 8))
    st.rho /= np.dot(st.rho, zm.areas)
    Simulation(zm, model, field=zonal_velocity(model, zm)).advance(st, 1.0)
    ref = legendre_moments(st.rho, *zm.cell_quadrature(8))
    errs = []
    for level in (2, 3, 4):
        mesh = load_icosahedral(level)
        s = State(0.0, mesh.cell_averages(zonal_density, 4))
        s.rho /= np.dot(s.rho, mesh.areas)
        Simulation(mesh, model).advance(s, 1.0)
        errs.append(np.abs(legendre_moments(s.rho, *mesh.cell_quadrature(4)) - ref).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert errs[-1] < 1e-3 and np.all(orders > 1.8), (errs, orders)


# -- the linear rates ---------------------------------------------------------------------------
def measured_rate(d, cells, l, beta, normalized, eps=1e-6, sigma=0.0):
    """The growth rate of the Gegenbauer coefficient over ``[0, T]``, ``T = min(1, 3 / |rate|)``
    (``eps e^{rate T}`` stays linear)."""
    mesh = ZonalMesh(d, cells)
    model = AttentionModel(d, beta, normalized=normalized)
    T = min(1.0, 3.0 / abs(growth_rate(l, beta, d, normalized) - 0.5 * sigma**2 * l * (l + d - 2)))
    sim = Simulation(mesh, model, field=zonal_velocity(model, mesh), dt_max=0.05)
    if sigma:
        # the solver's Strang splitting with the zonal Laplacian (Simulation(noise=) builds the
        # sphere meshes' Diffusion, which does not know zonal meshes)
        sim.noise, sim.diffusion = sigma, ZonalDiffusion(mesh, 0.5 * sigma**2)
    st = State(0.0, mesh.cell_averages(lambda x: (1 + eps * mesh.gegenbauer(l, mesh.polar_angle(x))) / mesh.total_measure, 8))
    a0 = mesh.gegenbauer_coefficient(st.rho, l)
    sim.advance(st, T)
    return math.log(mesh.gegenbauer_coefficient(st.rho, l) / a0) / T


@pytest.mark.parametrize("d,l,beta", [(4, 2, 3.0), (5, 1, 1.0), (5, 3, 6.0), (8, 2, 4.0)])
@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
def test_gegenbauer_growth_rates(d, l, beta, normalized):
    """rho = (1 + eps C_l(cos phi)) / |S^{d-1}| under Simulation(ZonalMesh): the growth of the
    Gegenbauer coefficient against growth_rate(l, beta, d), second order in the cells."""
    exact = growth_rate(l, beta, d, normalized)
    errs = np.array([abs(measured_rate(d, n, l, beta, normalized) / exact - 1) for n in (16, 32, 64)])
    orders = np.log2(errs[:-1] / errs[1:])
    assert errs[-1] < 1e-2 and np.all(orders > 1.8), (errs, orders)


def test_mass_and_positivity_nonlinear():
    """A concentrating run (SA, beta = 5, two bumps) far from the linear regime: mass to round-off,
    densities >= 0, and USA's order parameter grows."""
    d = 6
    mesh = ZonalMesh(d, 60)
    for normalized in (True, False):
        model = AttentionModel(d, 5.0, normalized=normalized)
        sim = Simulation(mesh, model, field=zonal_velocity(model, mesh))
        rho = mesh.cell_averages(lambda x: np.exp(4 * x[:, 0]) + 0.5 * np.exp(-6 * x[:, 0]), 8)
        st = State(0.0, rho / np.dot(rho, mesh.areas))
        r0 = mesh.mean(st.rho * mesh.areas)[0]
        masses = []
        sim.advance(st, 3.0, callback=lambda s, dt: masses.append(np.dot(s.rho, mesh.areas)))
        assert np.abs(np.array(masses) - 1).max() < 1e-13
        assert st.rho.min() >= 0
        assert st.rho[:5].sum() > 10 * rho[:5].sum() / np.dot(rho, mesh.areas)  # mass flows to the pole
        if not normalized:
            assert abs(mesh.mean(st.rho * mesh.areas)[0]) > abs(r0)


def test_finite_volume_with_a_bare_backend():
    """FiniteVolume wraps the backend (its ``model``) as a one-head velocity: the same
    derivative as the zonal velocity, and no flux through the poles' neighbours' outer faces."""
    d = 4
    mesh = ZonalMesh(d, 24)
    model = AttentionModel(d, 2.0)
    rho = mesh.cell_averages(lambda x: np.exp(x[:, 0] - x[:, 0] ** 3), 8)
    a = FiniteVolume(mesh, ZonalField(model, mesh)).rhs(rho)
    b = FiniteVolume(mesh, zonal_velocity(model, mesh)).rhs(rho)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    assert abs(np.dot(a[0], mesh.areas)) < 1e-15 * np.abs(a[0] * mesh.areas).sum()


@pytest.mark.parametrize("d,l,beta,sigma", [(4, 2, 3.0, 0.6), (5, 1, 1.0, 0.3), (8, 2, 4.0, 0.5)])
@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
def test_gegenbauer_growth_rates_with_noise(d, l, beta, sigma, normalized):
    """With noise the rates lose (sigma^2 / 2) l (l + d - 2) (SPEC section 5); order 2."""
    exact = growth_rate(l, beta, d, normalized) - 0.5 * sigma**2 * l * (l + d - 2)
    errs = np.array([abs(measured_rate(d, n, l, beta, normalized, sigma=sigma) / exact - 1) for n in (16, 32, 64)])
    orders = np.log2(errs[:-1] / errs[1:])
    assert errs[-1] < 1e-2 and np.all(orders > 1.7), (errs, orders)


def test_zonal_diffusion():
    d = 5
    c = 0.3
    errs = []
    for cells in (20, 40, 80):
        mesh = ZonalMesh(d, cells)
        D = ZonalDiffusion(mesh, c)
        y = mesh.cell_averages(lambda x: mesh.gegenbauer(3, mesh.polar_angle(x)), 8)
        # Rayleigh quotient of the Gegenbauer mode against -c l (l + d - 2)
        q = np.dot(D.apply(y) * mesh.areas, y) / np.dot(y * mesh.areas, y)
        errs.append(abs(q / -D.rate(3) - 1))
        assert np.allclose(D.matrix @ y, D.apply(y), rtol=0, atol=1e-12 * np.abs(D.apply(y)).max())
        assert abs(np.dot(D.apply(y), mesh.areas)) < 1e-13 * np.abs(D.apply(y) * mesh.areas).sum()
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(orders > 1.9), (errs, orders)
    # a point mass in one band: mass kept and nonnegative at any step (the Euler fallback)
    mesh = ZonalMesh(d, 40)
    D = ZonalDiffusion(mesh, c)
    rho = np.zeros(40)
    rho[20] = 1.0 / mesh.areas[20]
    for dt in (1e-4, 1e-2, 1.0, 100.0):
        out = D.implicit_step(rho, dt)
        assert out.min() >= 0 and np.dot(out, mesh.areas) == pytest.approx(1.0, abs=1e-14)
    # a long step relaxes to the uniform density (implicit Euler damps the l = 1 mode by 1 / (1 + 1.2 dt))
    assert D.implicit_step(rho, 1e5) == pytest.approx(np.full(40, 1 / mesh.total_measure), rel=1e-3)
    with pytest.raises(ValueError):
        ZonalDiffusion(mesh, -1.0)

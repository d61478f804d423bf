"""The finite-volume solver on S^1: growth rates, orders of accuracy, invariants."""

import math

import numpy as np
import pytest

import meanfield as mf
from meanfield.pde.finite_volume import FiniteVolume

from _helpers import observed_orders, semi_discrete_rates


def perturbed(mesh, modes):
    case = mf.resolve_case({"initial": {"kind": "modes", "modes": modes}})
    return mf.project(mesh, case["initial"])


J = np.array([[0.0, -1.0], [1.0, 0.0]])  # quarter turn


def fv_pair(M, model):
    """Upwind and MUSCL finite volumes on M cells with one (direct) field."""
    mesh = mf.CircleMesh(M)
    field = mf.DirectField(model)
    return mesh, [FiniteVolume(mesh, field, scheme) for scheme in ("upwind", "muscl")]


@pytest.mark.parametrize("v", [1.0, -1.0], ids=["V=I", "V=-I"])
@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
@pytest.mark.parametrize("beta", [1.0, 4.0, 9.0, 25.0])
def test_semi_discrete_rates_are_sigma_times_sinc(beta, normalized, v):
    """At the uniform density the discrete rate of cos(k theta) is exactly
    ``sigma_k sin(kh/2) / (kh/2)``: the edge sums over the cell masses are the trapezoidal
    rule of a periodic analytic integrand (exact to round-off) applied to cell averages
    (one sinc factor), and the flux difference over h is the other. So the spatial error
    is ``-(kh)^2 / 24``, second order, with no time error in it. The velocity vanishes at
    the uniform state, so the face values enter only at second order in the perturbation:
    upwind and MUSCL have the same linear rates (the reconstruction is seen by the drift
    test below)."""
    model = mf.AttentionModel(d=2, beta=beta, normalized=normalized, V=v * np.eye(2))
    for M in (64, 128):
        mesh, fvs = fv_pair(M, model)
        for k in (1, 2, 4, 6):
            sigma = v * float(mf.growth_rate(k, beta, 2, normalized))
            x = k * mesh.h / 2
            exact = sigma * math.sin(x) / x
            for scheme, rate in zip(("upwind", "muscl"), semi_discrete_rates(fvs, np.cos(k * mesh.angles))):
                # measured <= 3.7e-7 (upwind), 1.4e-7 (MUSCL): the O(eps) of upwinding by the
                # sign of the perturbation velocity, and round-off at eps = 1e-6
                assert abs(rate / exact - 1) <= 1e-6, (scheme, M, k, rate, exact)
                assert abs(rate / sigma - 1) >= 1e-4  # it is the discrete rate (1.6e-4 .. 1.4e-2)


@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
@pytest.mark.parametrize("beta, k", [(1.0, 1), (9.0, 4)])
def test_rate_error_order_sees_the_reconstruction(beta, k, normalized):
    """V = I + J/2 adds a rigid rotation of the uniform state (speed I_1/(2 I_0) in SA) and
    a part of the perturbation velocity in phase with it: both only rotate the mode, so the
    growth rate of |rho_k| is still sigma_k. Now the transported perturbation is
    reconstructed at the faces: upwind's numerical diffusion costs ~c k^2 h / 2 of the rate
    (first order), MUSCL's limited slopes second order. Semi-discrete rates, no time error."""
    model = mf.AttentionModel(d=2, beta=beta, normalized=normalized, V=np.eye(2) + 0.5 * J)
    sigma = float(mf.growth_rate(k, beta, 2, normalized))
    errors = []
    for M in (64, 128, 256, 512):
        mesh, fvs = fv_pair(M, model)
        errors.append([rate / sigma - 1 for rate in semi_discrete_rates(fvs, np.cos(k * mesh.angles))])
    upwind, muscl = np.array(errors).T
    # measured: upwind 0.99..1.01; MUSCL 2.03..2.11 (beta 1), 2.41..2.91 (beta 9: Fromm's
    # h^3 dissipation still visible at 64 cells), tending to 2 (2.13 at 2048 cells)
    assert np.all((observed_orders(upwind) > 0.95) & (observed_orders(upwind) < 1.05)), upwind
    assert np.all((observed_orders(muscl) > 1.9) & (observed_orders(muscl) < 3.0)), muscl
    assert observed_orders(muscl)[-1] < 2.5
    assert np.all(np.abs(muscl) < np.abs(upwind) / 10), (upwind, muscl)  # measured: 15x .. 480x
    assert np.all(upwind < 0) and abs(upwind[-1]) > 3e-3  # numerical diffusion slows the growth


def measure_rate(M, beta, k, normalized, rate_cfl, V=None, eps=1e-5):
    """Fitted growth rate of |rho_k(t)| over a horizon where round-off in faster modes stays
    negligible, and the semi-discrete rate of the same finite volumes (MUSCL)."""
    mesh = mf.CircleMesh(M)
    model = mf.AttentionModel(d=2, beta=beta, normalized=normalized, V=V)
    sim = mf.Simulation(mesh, model, field=mf.DirectField(model), rate_cfl=rate_cfl)
    st = mf.State(0.0, (1 + eps * np.cos(k * mesh.angles)) / (2 * np.pi))
    sigma = float(mf.growth_rate(k, beta, 2, normalized)) * (1.0 if V is None else V[0][0])
    horizon = min(2.0 / abs(sigma), 12.0 / sim.rate)
    times = np.linspace(0.0, horizon, 7)
    amps = []
    for t in times:
        sim.advance(st, t)
        amps.append(abs(st.rho @ np.exp(1j * k * mesh.angles)))
    return np.polyfit(times, np.log(amps), 1)[0], semi_discrete_rates([sim.fv], np.cos(k * mesh.angles))[0], \
        sigma * rate_cfl / sim.rate


@pytest.mark.parametrize("normalized, beta, k, v", [(True, 9.0, 4, 1.0), (False, 1.0, 1, 1.0), (True, 4.0, 3, -1.0)],
                         ids=["SA-9-k4", "USA-1-k1", "SA-4-k3-V=-I"])
def test_time_error_of_the_rate_is_third_order_in_the_step(normalized, beta, k, v):
    """Against the semi-discrete rate (the spatial error taken out), the fitted rate of a
    run differs by SSP-RK3's ``-z^3 / 24`` per unit rate (``z = sigma dt``,
    ``dt = rate_cfl / sigma_max``): third order in the step, 4e-5 at the default
    rate_cfl = 0.1 -- larger than the spatial error of 1024 cells (2.5e-5 for k = 4)."""
    errs = []
    for rate_cfl in (0.2, 0.1, 0.05):
        rate, semi, z = measure_rate(128, beta, k, normalized, rate_cfl, V=v * np.eye(2))
        assert rate * semi > 0 and (rate < 0) == (v < 0)  # V = -I: the uniform state is stable
        errs.append(abs(rate / semi - 1))
        # measured 0.62 .. 0.96 of |z|^3 / 24 (the last, clipped step of each interval is shorter)
        assert 0.5 * abs(z) ** 3 / 24 <= errs[-1] <= 1.1 * abs(z) ** 3 / 24, (rate_cfl, errs[-1], abs(z) ** 3 / 24)
    assert np.all(observed_orders(errs) > 2.4), errs  # measured 2.56 .. 3.02
    assert errs[-1] < 6e-6


def solve(M, scheme, T=1.0, beta=1.0):
    mesh = mf.CircleMesh(M)
    sim = mf.Simulation(mesh, mf.AttentionModel(d=2, beta=beta), scheme=scheme)
    st = mf.State(0.0, perturbed(mesh, [{"k": 1, "amplitude": 0.5}, {"k": 2, "amplitude": 0.3, "phase": 1.0}]))
    sim.advance(st, T)
    return st.rho


@pytest.mark.parametrize("scheme, lo, hi", [("muscl", 1.8, 2.6), ("upwind", 0.85, 1.15)])
def test_observed_order_on_a_smooth_nonlinear_solution(scheme, lo, hi):
    # SA, beta = 1, t = 1: the density sharpens (max/min grows) but stays smooth.
    # Self-convergence: errors between successive refinements, restricted to the coarse cells.
    sols = [solve(M, scheme) for M in (128, 256, 512, 1024)]
    errs = np.array([np.abs(c - f.reshape(-1, 2).mean(axis=1)).sum() * 2 * np.pi / len(c)
                     for c, f in zip(sols[:-1], sols[1:])])
    orders = np.log2(errs[:-1] / errs[1:])
    assert np.all(orders >= lo) and np.all(orders <= hi), orders


@pytest.mark.parametrize("scheme", ["muscl", "upwind"])
@pytest.mark.parametrize("kind", ["SA", "USA"])
def test_mass_positivity_and_energy(scheme, kind):
    mesh = mf.CircleMesh(256)
    model = mf.AttentionModel(d=2, beta=4.0, normalized=kind == "SA")
    sim = mf.Simulation(mesh, model, scheme=scheme)
    st = mf.State(0.0, perturbed(mesh, [{"k": 2, "amplitude": 0.2}, {"k": 3, "amplitude": 0.1, "phase": 2.0}]))
    energies = [mf.energy(model, mesh.centers, st.rho * mesh.areas)]
    masses, mins = [], []

    def record(state, dt):
        m = state.rho * mesh.areas
        masses.append(math.fsum(m))
        mins.append(state.rho.min())
        energies.append(mf.energy(model, mesh.centers, m))
        # the CFL-chosen steps keep every stage nonnegative by themselves: no step was
        # rejected for positivity (a broken limiter is rejected tens of thousands of times
        # and crawls; nonnegative densities alone prove nothing, the solver clips round-off
        # and retries steps -- the limiter itself is tested in test_limiter.py)
        assert sim.rejected == 0, (state.t, sim.rejected)

    sim.advance(st, 8.0 if kind == "SA" else 0.6, record)
    assert st.steps > 50
    assert max(abs(m - 1) for m in masses) <= 1e-13
    assert min(mins) >= 0.0
    assert st.rho.max() > 20 * (1 / (2 * np.pi))  # clusters did form: the test is not trivial
    if kind == "USA":  # Wasserstein gradient ascent: E never decreases
        de = np.diff(energies)
        assert de.min() >= -1e-13 * energies[-1], de.min()


def test_beta_zero_consensus_reaches_one_cluster():
    mesh = mf.CircleMesh(256)
    sim = mf.Simulation(mesh, mf.AttentionModel(d=2, beta=0.0))
    case = mf.resolve_case({"initial": {"kind": "vmf", "centers": [[1, 0], [0, 1]], "kappas": [3, 3]}})
    st = mf.State(0.0, mf.project(mesh, case["initial"]))
    sim.advance(st, 12.0)
    m = st.rho * mesh.areas
    r = np.linalg.norm(m @ mesh.centers)
    assert r > 1 - 1e-3
    masses, centers = mf.find_clusters(mesh, st.rho)
    assert len(masses) == 1 and masses[0] > 0.999
    # the consensus point is the direction of the initial mean (pi/4 by symmetry)
    assert abs(math.atan2(centers[0, 1], centers[0, 0]) - math.pi / 4) < mesh.h


def test_steps_land_on_output_times_and_respect_dt_max():
    mesh = mf.CircleMesh(64)
    sim = mf.Simulation(mesh, mf.AttentionModel(d=2, beta=2.0), dt_max=0.013)
    st = mf.State(0.0, perturbed(mesh, [{"k": 1, "amplitude": 0.3}]))
    dts = []
    for t in (0.1, 0.3, 1.0 / 3.0):
        sim.advance(st, t, lambda s, dt: dts.append(dt))
        assert st.t == t
    assert max(dts) <= 0.013


def test_rate_bound_limits_the_step_near_uniform():
    # Near the uniform state the velocity is ~1e-8: the CFL bound alone would allow
    # a step of ~1e5. The interaction time scale must bound it.
    mesh = mf.CircleMesh(128)
    model = mf.AttentionModel(d=2, beta=9.0)
    sim = mf.Simulation(mesh, model)
    st = mf.State(0.0, (1 + 1e-8 * np.cos(4 * mesh.angles)) / (2 * np.pi))
    dt = sim.step(st)
    sigma_max = max(mf.growth_rate(np.arange(1, 65), 9.0, 2))
    assert dt == pytest.approx(0.1 / sigma_max, rel=1e-12)


def test_cluster_detection():
    mesh = mf.CircleMesh(360)
    rho = np.full(360, 1e-6)
    for ang, mass in [(0.5, 0.5), (2.5, 0.3), (4.5, 0.2 - 360e-6 * mesh.h)]:
        rho[int(ang / mesh.h)] += mass / mesh.h
    masses, centers = mf.find_clusters(mesh, rho)
    assert len(masses) == 3
    assert np.allclose(masses, [0.5, 0.3, 0.2], atol=1e-5)
    assert np.allclose(np.arctan2(centers[:, 1], centers[:, 0]) % (2 * np.pi), [0.5, 2.5, 4.5], atol=mesh.h)
    # a small ripple on the uniform density is not a cluster
    assert len(mf.find_clusters(mesh, perturbed(mesh, [{"k": 4, "amplitude": 0.5}]))[0]) == 0

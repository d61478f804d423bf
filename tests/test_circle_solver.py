"""The finite-volume solver on S^1: growth rates, orders of accuracy, invariants."""

import math

import numpy as np
import pytest

import meanfield as mf


def perturbed(mesh, modes):
    case = mf.resolve_case({"initial": {"kind": "modes", "modes": modes}})
    return mf.project(mesh, case["initial"])


def measure_rate(M, beta, k, normalized, V=None, scheme="muscl", eps=1e-5):
    """Fit log |rho_k(t)| over a horizon where round-off in faster modes stays negligible."""
    mesh = mf.CircleMesh(M)
    model = mf.AttentionModel(d=2, beta=beta, normalized=normalized, V=V)
    sim = mf.Simulation(mesh, model, scheme=scheme)
    st = mf.State(0.0, (1 + eps * np.cos(k * mesh.angles)) / (2 * np.pi))
    sigma = float(mf.growth_rate(k, beta, 2, normalized)) * (1.0 if V is None else V[0][0])
    horizon = min(2.0 / abs(sigma), 12.0 / sim.rate)
    times = np.linspace(0.0, horizon, 7)
    amps = []
    for t in times:
        sim.advance(st, t)
        amps.append(abs(st.rho @ np.cos(k * mesh.angles)))
    return np.polyfit(times, np.log(amps), 1)[0], sigma


@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
@pytest.mark.parametrize("beta", [1.0, 4.0, 9.0, 25.0])
@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_linear_growth_rates(normalized, beta, k):
    rate, sigma = measure_rate(1024, beta, k, normalized)
    assert abs(rate / sigma - 1) <= 2e-3


@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
def test_negative_value_matrix_stabilizes_uniform(normalized):
    rate, sigma = measure_rate(1024, 4.0, 3, normalized, V=[[-1.0, 0.0], [0.0, -1.0]])
    assert sigma < 0
    assert abs(rate / sigma - 1) <= 2e-3


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

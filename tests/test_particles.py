"""The particle system: exact reductions, symmetry, orders of the integrators, invariants."""

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import meanfield as mf
from meanfield.particles.system import INTEGRATORS, ParticleState, ParticleSystem, evolve


def on_circle(angles):
    angles = np.asarray(angles, dtype=float)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def angle_ode(beta, w1, w2, normalized):
    """Two particles on S^1 at angles th1, th2 (phi = th2 - th1), Q = K = V = I.

    Particle 1 moves with P_{x1} of sum_j w_j e^{beta <x1, x_j>} x_j / Z: the x1 term is
    killed by P_{x1} and <x2, tangent at x1> = sin(phi), so
        th1' =  w2 e^{beta cos phi} sin(phi) / Z1,  Z1 = w1 e^beta + w2 e^{beta cos phi}
        th2' = -w1 e^{beta cos phi} sin(phi) / Z2,  Z2 = w2 e^beta + w1 e^{beta cos phi}
    (USA: Z = 1). Equal weights: phi' = -2 e^{beta cos phi} sin(phi) / (e^beta + e^{beta cos phi}).
    """

    def rhs(t, y):
        phi = y[1] - y[0]
        e = math.exp(beta * math.cos(phi))
        z1 = w1 * math.exp(beta) + w2 * e if normalized else 1.0
        z2 = w2 * math.exp(beta) + w1 * e if normalized else 1.0
        return [w2 * e * math.sin(phi) / z1, -w1 * e * math.sin(phi) / z2]

    return rhs


def test_two_particle_angle_difference_equal_weights():
    beta, phi0, T = 1.0, 2.5, 4.0
    phi_ode = solve_ivp(lambda t, y: [-2 * math.exp(beta * math.cos(y[0])) * math.sin(y[0])
                                      / (math.exp(beta) + math.exp(beta * math.cos(y[0])))],
                        [0, T], [phi0], rtol=1e-12, atol=1e-14, method="DOP853").y[0, -1]
    field = mf.DirectField(mf.AttentionModel(d=2, beta=beta))
    st = evolve(field, on_circle([0.3, 0.3 + phi0]), T, dt=0.005)
    th = np.arctan2(st.x[:, 1], st.x[:, 0])
    assert st.steps == 800
    assert abs((th[1] - th[0]) - phi_ode) < 1e-8
    assert abs(phi0 - phi_ode) > 1.0  # the particles did move a lot
    assert abs(th.sum() - (0.6 + phi0)) < 1e-12  # the midpoint is fixed by symmetry


@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
def test_two_weighted_particles_follow_the_angle_ode(normalized):
    beta, T, w = 2.0, 3.0, (0.3, 0.7)
    th0 = [-0.4, 1.6]
    ref = solve_ivp(angle_ode(beta, *w, normalized), [0, T], th0, rtol=1e-12, atol=1e-14, method="DOP853").y[:, -1]
    field = mf.DirectField(mf.AttentionModel(d=2, beta=beta, normalized=normalized))
    st = evolve(field, on_circle(th0), T, weights=w, dt=0.005)
    th = np.arctan2(st.x[:, 1], st.x[:, 0])
    assert np.max(np.abs(th - ref)) < 1e-8
    # the lighter particle moves more
    assert abs(th[0] - th0[0]) > 1.5 * abs(th[1] - th0[1])


@pytest.mark.parametrize("k", [3, 5, 8])
def test_equally_spaced_particles_on_the_circle_are_stationary(k):
    x0 = on_circle(0.7 + 2 * np.pi * np.arange(k) / k)
    field = mf.DirectField(mf.AttentionModel(d=2, beta=4.0))
    st = evolve(field, x0, 10.0, dt=0.05)
    assert np.max(np.abs(st.x - x0)) < 1e-12


def octahedron():
    return np.concatenate([np.eye(3), -np.eye(3)])


def tetrahedron():
    return np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(3)


@pytest.mark.parametrize("config", [octahedron, tetrahedron])
@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
def test_platonic_configurations_on_the_sphere_stay_fixed(config, normalized):
    rot = np.linalg.qr(np.random.default_rng(3).standard_normal((3, 3)))[0]
    x0 = config() @ rot.T
    field = mf.DirectField(mf.AttentionModel(d=3, beta=3.0, normalized=normalized))
    st = evolve(field, x0, 10.0, dt=0.05)
    assert np.max(np.abs(st.x - x0)) < 1e-12


def test_cross_polytope_in_five_dimensions_stays_fixed():
    x0 = np.concatenate([np.eye(5), -np.eye(5)])
    st = evolve(mf.DirectField(mf.AttentionModel(d=5, beta=2.0)), x0, 5.0, dt=0.1)
    assert np.max(np.abs(st.x - x0)) < 1e-12


def test_rotationally_symmetric_configuration_stays_symmetric():
    # Three rings of three points on S^2, each ring invariant under the rotation R by
    # 2 pi / 3 about the z axis: R permutes the particles, and so must it at all times.
    # The configuration is not stationary (it contracts towards clusters).
    z = np.array([0.8, 0.1, -0.5])
    az0 = np.array([0.2, 1.1, 2.5])
    pts = []
    for ring in range(3):
        for j in range(3):
            a = az0[ring] + 2 * np.pi * j / 3
            s = math.sqrt(1 - z[ring] ** 2)
            pts.append([s * math.cos(a), s * math.sin(a), z[ring]])
    x0 = np.array(pts)
    c, s = math.cos(2 * np.pi / 3), math.sin(2 * np.pi / 3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    perm = np.array([3 * r + (j + 1) % 3 for r in range(3) for j in range(3)])
    assert np.max(np.abs(x0 @ rot.T - x0[perm])) < 1e-15
    st = evolve(mf.DirectField(mf.AttentionModel(d=3, beta=2.0)), x0, 6.0, dt=0.05)
    assert np.max(np.abs(st.x - x0)) > 0.3
    assert np.max(np.abs(st.x @ rot.T - st.x[perm])) < 1e-12


def random_points(n, d, seed):
    g = np.random.default_rng(seed).standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


@pytest.mark.parametrize("integrator, order, lo, hi", [("rk4", 4, 3.8, 4.3), ("euler", 1, 0.9, 1.1),
                                                      ("euler_tangent", 1, 0.9, 1.1)])
def test_observed_order_in_dt(integrator, order, lo, hi):
    assert INTEGRATORS[integrator].order == order
    field = mf.DirectField(mf.AttentionModel(d=3, beta=2.0))
    x0 = random_points(12, 3, 0)
    w = np.random.default_rng(1).random(12)
    T = 1.0
    ref = evolve(field, x0, T, w, dt=T / 1024).x
    dts = [T / 10, T / 20, T / 40, T / 80] if integrator == "rk4" else [T / 80, T / 160, T / 320, T / 640]
    # (the error-controlled integrators: tests/test_particle_integrators.py)
    errs = np.array([np.max(np.abs(evolve(field, x0, T, w, integrator=integrator, dt=dt).x - ref)) for dt in dts])
    orders = np.log2(errs[:-1] / errs[1:])
    assert np.all(orders > lo) and np.all(orders < hi), orders


@pytest.mark.parametrize("integrator", sorted(INTEGRATORS))
def test_particles_stay_on_the_sphere_to_round_off(integrator):
    field = mf.DirectField(mf.AttentionModel(d=3, beta=9.0))
    if INTEGRATORS[integrator].adaptive:  # they choose their own steps
        st = evolve(field, random_points(50, 3, 2), 20.0, integrator=integrator)
        assert st.steps > 10
    else:
        st = evolve(field, random_points(50, 3, 2), 20.0, integrator=integrator, dt=0.02)
        assert st.steps == 1000
    assert np.max(np.abs(np.linalg.norm(st.x, axis=1) - 1)) < 4e-16


def test_usa_energy_ascends_with_rate_sum_of_squared_speeds():
    # USA is the gradient ascent of E: dE/dt = sum_i w_i |X(x_i)|^2 along the particle flow.
    model = mf.AttentionModel(d=3, beta=1.5, normalized=False)
    field = mf.DirectField(model)
    x0 = random_points(40, 3, 4)
    w = np.random.default_rng(5).random(40)
    system = ParticleSystem(field, dt=1e-3)
    st = ParticleState.create(x0, w)
    energies, rates = [], []

    def record(s, dt):
        energies.append(mf.energy(model, s.x, s.weights))
        v = system.velocity(s)
        rates.append(float(s.weights @ np.einsum("ij,ij->i", v, v)))

    record(st, 0.0)
    system.advance(st, 0.5, record)
    energies, rates = np.array(energies), np.array(rates)
    assert np.all(np.diff(energies) > 0)
    # centred difference of E against the rate, O(dt^2) = 1e-6 relative
    fd = (energies[2:] - energies[:-2]) / 2e-3
    assert np.max(np.abs(fd / rates[1:-1] - 1)) < 1e-5


def test_the_field_is_called_as_field_x_x_w():
    class Spy:
        def __init__(self, inner):
            self.inner, self.model, self.calls = inner, inner.model, []

        def __call__(self, targets, sources, weights):
            self.calls.append((targets, sources, weights))
            return self.inner(targets, sources, weights)

    spy = Spy(mf.DirectField(mf.AttentionModel(d=3, beta=1.0)))
    w = np.array([1.0, 2.0, 3.0, 2.0])
    st = evolve(spy, random_points(4, 3, 6), 0.3, w, dt=0.1)
    assert st.steps == 3 and len(spy.calls) == 12  # 4 stages per RK4 step
    for targets, sources, weights in spy.calls:
        assert targets is sources
        assert np.array_equal(weights, w / w.sum())


def test_automatic_step_bounds_and_lands_on_output_times():
    model = mf.AttentionModel(d=2, beta=9.0)
    system = ParticleSystem(mf.DirectField(model), integrator="rk4", dt="auto", cfl=0.4, rate_cfl=0.1, dt_max=0.5)
    st = ParticleState.create(random_points(64, 2, 7))
    dts = []
    for t in (0.5, 1.0, 4.0 / 3.0):
        system.advance(st, t, lambda s, dt: dts.append(dt))
        assert st.t == t
    sigma = max(mf.growth_rate(np.arange(1, 65), 9.0, 2))
    assert system.rate == pytest.approx(sigma, rel=1e-14)
    assert max(dts) <= 0.1 / sigma * (1 + 1e-12)
    # a moving state: the CFL-like bound cfl * (1/sqrt(beta)) / v_max is active
    v = system.velocity(st)
    vmax = np.sqrt(np.max(np.sum(v**2, axis=1)))
    assert system.auto_dt(v) == pytest.approx(min(0.1 / sigma, 0.4 / 3.0 / vmax), rel=1e-14)
    # with the attention averages a (before P_x): also dt <= rate_cfl / max_i |a_i|
    a = system.field(st.x, st.x, st.weights, project=False)
    amax = np.max(np.linalg.norm(a, axis=1))
    assert system.auto_dt(v, a) == pytest.approx(min(0.1 / max(sigma, amax), 0.4 / 3.0 / vmax), rel=1e-14)
    # and the automatic step tracks the fixed-step solution
    x_auto = evolve(system.field, random_points(64, 2, 7), 2.0).x
    x_fine = evolve(system.field, random_points(64, 2, 7), 2.0, dt=0.005).x
    assert np.max(np.abs(x_auto - x_fine)) < 1e-4


def test_fixed_steps_hit_t_end_exactly():
    field = mf.DirectField(mf.AttentionModel(d=2, beta=1.0))
    dts = []
    st = evolve(field, random_points(5, 2, 8), 0.3, dt=0.1, callback=lambda s, dt: dts.append(dt))
    assert st.t == 0.3 and st.steps == 3 and dts == [0.1, 0.1, pytest.approx(0.1, rel=1e-9)]
    st = evolve(field, random_points(5, 2, 8), 0.25, dt=0.1)
    assert st.t == 0.25 and st.steps == 3


def test_invalid_input():
    field = mf.DirectField(mf.AttentionModel(d=2))
    with pytest.raises(ValueError, match="integrator"):
        ParticleSystem(field, integrator="rk45")
    with pytest.raises(ValueError, match="dt"):
        ParticleSystem(field, dt=-1.0)
    with pytest.raises(ValueError, match="weights"):
        ParticleState.create(random_points(3, 2, 0), [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="zero"):
        ParticleState.create([[1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="d = 2"):
        ParticleSystem(field, dt=0.1).step(ParticleState.create(random_points(3, 3, 0)))

"""The particle integrators of issue 10: the authors' Euler bit for bit, the error-controlled
Dormand--Prince 5(4) / Bogacki--Shampine 3(2) (the default), and the automatic step after a
cluster collapses (USA) or when the field is huge."""

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import meanfield as mf
from meanfield.particles.system import (INTEGRATORS, ParticleSettingError, ParticleState, ParticleSystem, evolve,
                                 max_row_norm, retract)
from meanfield.pde.timestepping import NonFiniteStateError, StalledRunError


def random_points(n, d, seed):
    g = np.random.default_rng(seed).standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


class Counting:
    """A backend that counts its calls (and passes ``project`` on)."""

    def __init__(self, inner):
        self.inner, self.model, self.name, self.calls = inner, inner.model, "counting", 0

    def __call__(self, targets, sources, weights, project=True):
        self.calls += 1
        return self.inner(targets, sources, weights, project=project)


# -- 7. the authors' Euler --------------------------------------------------------------------

def authors_loop(x0, beta, dt, T, denominator):
    """The time loop of github.com/borjanG/2023-transformers-rotf, sphere.py, with A = V = I
    (kept as written there: num_steps = int(T/dt) + 1 points of linspace(0, T, num_steps))."""
    n, d = x0.shape
    num_steps = int(T / dt) + 1
    V, A = np.eye(d), np.eye(d)
    z = np.zeros((n, num_steps, d))
    z[:, 0, :] = x0
    for l, t in enumerate(np.linspace(0, T, num_steps)[:-1]):
        Az = np.matmul(A, z[:, l, :].T)
        exp_beta_dot = np.exp(beta * np.matmul(Az.T, Az))
        if denominator:
            attention = exp_beta_dot / exp_beta_dot.sum(axis=1)[:, np.newaxis]
        else:
            attention = exp_beta_dot / n
        dynamics = np.matmul(attention, np.matmul(V, z[:, l, :].T).T)
        z[:, l + 1, :] = z[:, l, :] + dt * dynamics
        z[:, l + 1, :] = z[:, l + 1, :] / np.linalg.norm(z[:, l + 1, :], axis=1)[:, np.newaxis]
    return z


@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
def test_euler_is_the_authors_update_to_round_off(normalized):
    x0 = random_points(64, 3, 0)
    z = authors_loop(x0, 1.0, 0.1, 15.0, normalized)
    field = mf.DirectField(mf.AttentionModel(d=3, beta=1.0, normalized=normalized))
    path = [x0]
    st = evolve(field, x0, 15.0, integrator="euler", dt=0.1, callback=lambda s, dt: path.append(s.x.copy()))
    assert st.steps == z.shape[1] - 1 == 150 and st.t == 15.0
    gap = np.max(np.abs(np.array(path) - z.transpose(1, 0, 2)))
    assert gap < 1e-14, gap  # measured 3.3e-16 (SA), 2.2e-16 (USA) over 150 steps
    # the projected variant is a different first-order scheme (1.6e-3 apart at t = 15 for SA)
    tangent = evolve(field, x0, 15.0, integrator="euler_tangent", dt=0.1).x
    assert np.max(np.abs(tangent - z[:, -1])) > 1e-4


def test_euler_tangent_steps_with_the_projected_field():
    field = mf.DirectField(mf.AttentionModel(d=3, beta=2.0))
    for name, project in (("euler_tangent", True), ("euler", False)):
        st = ParticleState.create(random_points(10, 3, 1))
        x0, w = st.x.copy(), st.weights
        ParticleSystem(field, integrator=name, dt=0.1).step(st)
        assert np.array_equal(st.x, retract(x0 + 0.1 * field(x0, x0, w, project=project))), name


def test_authors_euler_needs_a_backend_with_project_false():
    class Projected:  # a backend that only returns the projected field
        def __init__(self, inner):
            self.inner, self.model, self.name = inner, inner.model, "projected-only"

        def __call__(self, targets, sources, weights):
            return self.inner(targets, sources, weights)

    field = Projected(mf.DirectField(mf.AttentionModel(d=3)))
    with pytest.raises(ValueError, match="project=False.*direct") as err:
        ParticleSystem(field, integrator="euler", dt=0.1)
    assert err.value.key == "solver.backend"
    ParticleSystem(field, integrator="euler_tangent", dt=0.1)  # fine
    st = evolve(field, random_points(5, 3, 2), 0.5)  # the automatic step falls back to the rate bound
    assert st.t == 0.5


# -- 8. error-controlled integrators ---------------------------------------------------------

def equiangular(rho0):
    """Three unit vectors in R^3 with pairwise inner products rho0 (symmetric about e_3)."""
    s2 = 2.0 * (1.0 - rho0) / 3.0
    s, c = math.sqrt(s2), math.sqrt(1.0 - s2)
    return np.array([[s * math.cos(a), s * math.sin(a), c] for a in 2 * np.pi * np.arange(3) / 3])


def equiangular_rho(beta, rho0, T):
    """The exact reduced ODE of three equiangular tokens (SA, Q = K = V = I, equal weights).

    x_1' = P_{x_1}(e^beta x_1 + e^{beta rho} (x_2 + x_3)) / Z, Z = e^beta + 2 e^{beta rho}, is
    e^{beta rho} (x_2 + x_3 - 2 rho x_1) / Z; by symmetry the three stay equiangular, and
    rho = <x_1, x_2> obeys rho' = <x_1', x_2> + <x_1, x_2'> = 2 e^{beta rho} (1 + rho - 2 rho^2) / Z
    = 2 e^{beta rho} (1 - rho)(1 + 2 rho) / (e^beta + 2 e^{beta rho}).
    """

    def rhs(t, r):
        e = math.exp(beta * r[0])
        return [2.0 * e * (1.0 - r[0]) * (1.0 + 2.0 * r[0]) / (math.exp(beta) + 2.0 * e)]

    return solve_ivp(rhs, [0.0, T], [rho0], method="DOP853", rtol=1e-13, atol=1e-15).y[0, -1]


def rho_error(x, rho):
    g = x @ x.T
    return float(np.max(np.abs(g[np.triu_indices(3, 1)] - rho)))


@pytest.mark.parametrize("rho0", [0.0, 0.3])
def test_default_run_reaches_the_reduced_ode_of_three_equiangular_tokens(rho0):
    beta, T = 2.0, 1.0
    rho = equiangular_rho(beta, rho0, T)
    field = mf.DirectField(mf.AttentionModel(d=3, beta=beta))
    system = ParticleSystem(field)  # the defaults: dopri5, rtol = 1e-8, atol = 1e-10
    assert system.integrator.name == "dopri5" and (system.rtol, system.atol) == (1e-8, 1e-10)
    st = ParticleState.create(equiangular(rho0))
    system.advance(st, T)
    err = rho_error(st.x, rho)
    # measured: 7.7e-10 (rho0 = 0, 5 steps), 4.1e-10 (rho0 = 0.3, 6 steps); the former default
    # (RK4 with the automatic step) missed by 1.5e-7 and 4.7e-7
    assert err < 3e-9, err
    rk4 = evolve(field, equiangular(rho0), T, integrator="rk4")
    assert rho_error(rk4.x, rho) > 10 * err


def test_achieved_error_scales_with_rtol():
    beta, T = 2.0, 1.0
    rho = equiangular_rho(beta, 0.0, T)
    field = mf.DirectField(mf.AttentionModel(d=3, beta=beta))
    for name in ("dopri5", "bs32"):
        rtols = [1e-5, 1e-7, 1e-9] if name == "dopri5" else [1e-4, 1e-6, 1e-8]
        errs = [rho_error(evolve(field, equiangular(0.0), T, integrator=name, rtol=r, atol=r / 100).x, rho)
                for r in rtols]
        slope = np.polyfit(np.log(rtols), np.log(errs), 1)[0]
        assert 0.8 < slope < 1.25, (name, errs, slope)
        assert all(e < 10 * r for e, r in zip(errs, rtols)), (name, errs)  # a global error of about rtol


@pytest.mark.parametrize("name, order, steps", [("dopri5", 5, [5, 10, 20, 40]), ("bs32", 3, [10, 20, 40, 80])])
def test_embedded_pairs_have_their_order_with_fixed_steps(name, order, steps):
    integ = INTEGRATORS[name]
    assert integ.adaptive and integ.order == order and integ.error_order == order - 1
    field = mf.DirectField(mf.AttentionModel(d=3, beta=2.0))
    x0 = random_points(12, 3, 0)
    w = np.random.default_rng(1).random(12)
    w /= w.sum()

    def rhs(x):
        return field(x, x, w)

    def run(n):
        x, v = x0, rhs(x0)
        for _ in range(n):
            x, v, _ = integ.step(rhs, x, 1.0 / n, v)
        return x

    ref = run_dopri(rhs, x0, 1000)
    errs = np.array([np.max(np.abs(run(n) - ref)) for n in steps])
    orders = np.log2(errs[:-1] / errs[1:])
    assert np.all(np.abs(orders - order) < 0.2), orders  # measured 4.99, 4.99, 4.99 and 3.04, 3.02, 3.01


def run_dopri(rhs, x, n):
    step, v = INTEGRATORS["dopri5"].step, rhs(x)
    for _ in range(n):
        x, v, _ = step(rhs, x, 1.0 / n, v)
    return x


def test_error_estimate_is_of_the_lower_order():
    # err = (5th-order - 4th-order solution) scales like h^5 for dopri5, h^3 for bs32
    field = mf.DirectField(mf.AttentionModel(d=3, beta=2.0))
    x0 = random_points(12, 3, 3)
    w = np.full(12, 1 / 12)

    def rhs(x):
        return field(x, x, w)

    for name, q in (("dopri5", 5), ("bs32", 3)):
        sizes = [np.max(np.abs(INTEGRATORS[name].step(rhs, x0, h, rhs(x0))[2])) for h in (0.1, 0.05)]
        assert abs(math.log2(sizes[0] / sizes[1]) - q) < 0.3, (name, sizes)


def test_fsal_one_evaluation_per_stage_and_steps_land_on_output_times():
    field = Counting(mf.DirectField(mf.AttentionModel(d=3, beta=2.0)))
    system = ParticleSystem(field)
    st = ParticleState.create(equiangular(0.0))
    for t in (0.3, 0.7, 1.0):
        system.advance(st, t)
        assert st.t == t
    assert system.rejected == 0
    assert field.calls == 1 + 6 * st.steps  # 7 stages, the last one is the next step's first


def test_a_stopped_and_continued_run_takes_the_same_steps():
    # every output time restarts the controller from the automatic rule, so a fresh system
    # from the state at an output time (a restart from a snapshot) continues bit for bit
    field = mf.DirectField(mf.AttentionModel(d=3, beta=4.0))
    x0 = random_points(40, 3, 4)
    for name in ("dopri5", "bs32"):
        one = ParticleSystem(field, integrator=name)
        st = ParticleState.create(x0)
        one.advance(st, 0.5)
        copy = ParticleState(st.t, st.x.copy(), st.weights.copy(), st.steps)
        one.advance(st, 1.5)
        two = ParticleSystem(field, integrator=name)
        two.advance(copy, 1.5)
        assert copy.steps == st.steps and np.array_equal(copy.x, st.x), name


def test_rejected_steps_are_retried():
    class BigFirstStep(ParticleSystem):
        def auto_dt(self, v, a=None):
            return 1.0

    beta, T = 2.0, 1.0
    rho = equiangular_rho(beta, 0.0, T)
    field = mf.DirectField(mf.AttentionModel(d=3, beta=beta))
    for name in ("dopri5", "bs32"):
        system = BigFirstStep(field, integrator=name)
        st = ParticleState.create(equiangular(0.0))
        system.advance(st, T)
        assert system.rejected >= 1 and st.t == T
        assert rho_error(st.x, rho) < 2e-8, name


def test_fixed_dt_is_refused_by_the_error_controlled_integrators():
    field = mf.DirectField(mf.AttentionModel(d=2))
    for name in ("dopri5", "bs32"):
        with pytest.raises(ParticleSettingError, match=r"solver\.dt.*fixed step.*rtol") as err:
            ParticleSystem(field, integrator=name, dt=0.1)
        assert err.value.key == "solver.dt"
    assert ParticleSystem(field).integrator.name == "dopri5"  # no integrator named: by dt
    assert ParticleSystem(field, dt=0.1).integrator.name == "rk4"
    from meanfield.io.case import CaseError
    from meanfield.particles.run import build_particles

    case = mf.resolve_case({"domain": {"manifold": "circle", "cells": 32}, "solver": {"dt": 0.1},
                            "particles": {"n": 8}})
    with pytest.raises(CaseError, match=r"solver\.dt: 0\.1 is a fixed step"):
        build_particles(case)


def test_error_control_that_cannot_be_met_stops_the_run():
    field = mf.DirectField(mf.AttentionModel(d=3, beta=2.0))
    system = ParticleSystem(field, rtol=1e-30, atol=1e-40)  # far below round-off
    with pytest.raises(StalledRunError, match=r"solver\.(rtol|max_steps)"):
        system.advance(ParticleState.create(equiangular(0.0)), 1.0)

    class Blows(Counting):  # finite at the start, non-finite at every later stage
        def __call__(self, targets, sources, weights, project=True):
            out = super().__call__(targets, sources, weights, project)
            return out if self.calls == 1 else out * np.inf

    system = ParticleSystem(Blows(mf.DirectField(mf.AttentionModel(d=3, beta=2.0))))
    st = ParticleState.create(equiangular(0.0))
    with pytest.raises(NonFiniteStateError, match="non-finite at every step"):
        system.advance(st, 1.0)
    assert st.t == 0.0 and system.rejected > 100


# -- 9. the automatic step after a cluster collapses; huge fields ------------------------------

def cap(n, d, width, seed):
    g = width * np.random.default_rng(seed).standard_normal((n, d))
    g[:, 0] = 1.0
    return g / np.linalg.norm(g, axis=1, keepdims=True)


@pytest.mark.parametrize("d, beta, width", [(2, 100.0, 0.05), (3, 20.0, 0.15)], ids=["circle-100", "sphere-20"])
def test_usa_clusters_collapse_to_points_with_the_automatic_rk4_step(d, beta, width):
    # One cluster of mass 1 contracts at the rate e^beta (USA, Q = K = V = I); the rate bound
    # about the uniform density is 34x (circle, beta = 100) and 55x (sphere, beta = 20)
    # smaller, so the former step had dt e^beta = 3.4, resp. 5.5: RK4 unstable, the cluster
    # stayed fuzzy (radius 1.0e-2 and 2.4e-2 at t = 20 e^-beta, 8 steps). The local rate
    # max_i |a_i| keeps dt e^beta <= rate_cfl: radius 2.5e-10 (circle) and 1.5e-9 (sphere).
    field = mf.DirectField(mf.AttentionModel(d=d, beta=beta, normalized=False))
    system = ParticleSystem(field, integrator="rk4")
    st = ParticleState.create(cap(32, d, width, 0))
    dts, rates = [], []  # each step, and the local rate at its start

    def local(s):
        return max_row_norm(field(s.x, s.x, s.weights, project=False))

    rates.append(local(st))
    system.advance(st, 20.0 * math.exp(-beta), lambda s, dt: (dts.append(dt), rates.append(local(s))))
    c = retract(st.x.mean(axis=0)[None])[0]
    radius = np.max(np.linalg.norm(st.x - c, axis=1))
    assert radius < 1e-8, radius  # measured 2.5e-10, 1.5e-9 (the former step: 1e-2, 2.4e-2)
    assert max(dt * r for dt, r in zip(dts, rates)) <= 0.1 * (1 + 1e-12)  # rate_cfl
    assert rates[-1] == pytest.approx(math.exp(beta), rel=1e-6)  # collapsed: mass 1 at one point
    assert st.steps < 400  # measured 200 and 198


def test_the_automatic_step_is_overflow_safe_and_never_zero():
    field = mf.DirectField(mf.AttentionModel(d=2, beta=1.0))
    system = ParticleSystem(field, integrator="rk4")
    v = np.array([[3e200, 4e200], [0.0, 1.0]])
    assert system.auto_dt(v) == pytest.approx(0.4 / 5e200, rel=1e-14)  # squares would overflow
    assert system.auto_dt(v, a=v) == pytest.approx(0.1 / 5e200, rel=1e-14)
    with pytest.raises(NonFiniteStateError, match="not finite"):
        system.auto_dt(np.array([[np.inf, 0.0]]))
    with pytest.raises(NonFiniteStateError, match="not finite"):
        system.auto_dt(np.array([[1.5e308, 1.5e308]]))  # |v| = 2.1e308 overflows: no finite step
    assert 0 < system.auto_dt(np.array([[1e307, 0.0]]), a=np.array([[1e307, 0.0]])) < 1e-307
    # a fixed step that no longer moves t
    st = ParticleState.create(random_points(3, 2, 0), t=1e20)
    with pytest.raises(StalledRunError, match="does not advance"):
        ParticleSystem(field, dt=1.0).step(st)


@pytest.mark.parametrize("integrator", ["rk4", "dopri5", "euler"])
def test_usa_at_huge_beta_stops_with_a_reason(integrator):
    # beta = 400: |v| ~ e^400 / n ~ 1e172, |v|^2 overflows. The former rule divided by it:
    # dt = 0 and the run never returned. Now: the step ~1e-174 predicts ~1e174 steps.
    field = mf.DirectField(mf.AttentionModel(d=2, beta=400.0, normalized=False))
    with pytest.raises(StalledRunError, match="max_steps.*shift"):
        evolve(field, random_points(16, 2, 5), 1.0, integrator=integrator)

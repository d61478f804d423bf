"""The SSP Runge--Kutta schemes: orders, SSP coefficients, and the PDE with SSP(4,3)."""

import math

import numpy as np
import pytest

import meanfield as mf
from meanfield.geometry.mesh import CircleMesh
from meanfield.pde.solver import Simulation, State
from meanfield.pde.timestepping import INTEGRATORS, SSPRK43, StepRejected


def _operator(matrix):
    def op(u):
        return matrix @ u, None, math.inf

    return op


@pytest.mark.parametrize("name, order", [("euler", 1), ("ssprk2", 2), ("ssprk3", 3), ("ssprk43", 3)])
def test_observed_order_on_a_linear_system(name, order):
    """u' = A u (a rotation plus a decay), exact solution by the matrix exponential."""
    from scipy.linalg import expm

    scheme = INTEGRATORS[name]
    assert scheme.order == order
    A = np.array([[-0.3, 2.0], [-2.0, -0.1]])
    u0 = np.array([1.0, 0.5])
    T = 2.0
    exact = expm(T * A) @ u0
    errors = []
    for n in (40, 80, 160, 320):
        u = u0.copy()
        for _ in range(n):
            u = scheme.step(_operator(A), u, T / n)
        errors.append(np.linalg.norm(u - exact))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(orders - order) < 0.1), orders


def test_ssprk43_has_ssp_coefficient_two():
    """Each stage of SSP(4,3) is a forward-Euler step of dt/2: a step of twice the
    forward-Euler bound is admissible, and just above it is rejected with that bound."""
    assert SSPRK43.ssp_coefficient == 2.0
    bound = 0.1

    def op(u):
        return -u, None, bound  # forward Euler keeps u >= 0 for dt <= 1 ... here declared 0.1

    SSPRK43.step(op, np.ones(3), 2 * bound)
    with pytest.raises(StepRejected) as err:
        SSPRK43.step(op, np.ones(3), 2.0001 * bound)
    assert err.value.dt_allowed == pytest.approx(2 * bound)


def test_pde_with_ssprk43_takes_longer_steps_and_agrees():
    """Same case with SSP-RK3 and SSP(4,3): the CFL-limited steps are twice as long, both
    keep mass and positivity, and the solutions agree to the time-discretization error."""
    mesh = CircleMesh(256)
    model = mf.AttentionModel(d=2, beta=9.0)
    theta = mesh.angles
    rho0 = (1 + 0.6 * np.cos(2 * theta) + 0.3 * np.sin(5 * theta)) / (2 * math.pi)
    out = {}
    for name in ("ssprk3", "ssprk43"):
        sim = Simulation(mesh, model, backend="direct", integrator=INTEGRATORS[name], rate_cfl=1.0)
        st = State(0.0, rho0.copy())
        sim.advance(st, 3.0)
        assert abs(st.rho @ mesh.areas - 1.0) < 1e-13 and st.rho.min() >= 0
        out[name] = st
    assert out["ssprk43"].steps < 0.55 * out["ssprk3"].steps  # measured 121 vs 243
    diff = np.abs(out["ssprk43"].rho - out["ssprk3"].rho).max() / out["ssprk3"].rho.max()
    assert diff < 5e-5, diff  # measured 6.7e-6 (each within 1e-5 of a cfl = 0.05 reference)

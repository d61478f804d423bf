"""A perceptron-only model moves the density by its flow.

With no attention heads, ``X(x) = P_x W sigma(U x + b)`` does not depend on the measure: the
continuity equation is transport by a fixed field, whose exact solution is the pushforward of
the initial density along the characteristics. On the circle the mass of a cell ``[a, b]`` at
time T is the initial mass of ``[Phi_{-T}(a), Phi_{-T}(b)]`` (``Phi`` the flow of the angle ODE
``theta' = f(theta)``, f the tangential speed): exact from the initial CDF, no Jacobian
needed. On the sphere, smooth observables ``int g drho(T) = int g(Phi_T(y)) rho0(y) dy``.
Particles follow the same flow.
"""

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import meanfield as mf
from meanfield.dynamics.model import Terms, VelocityModel
from meanfield.dynamics.perceptron import Perceptron
from meanfield.geometry.sphere import icosahedral
from meanfield.particles.system import evolve
from meanfield.pde.solver import Simulation, State, make_velocity

from _helpers import observed_orders, sphere_grid

TWO_PI = 2 * math.pi

CIRCLE = {
    # no zero of the speed (0.084 .. 0.75): the density is compressed 3.7x where it is slow
    "tanh": Perceptron(W=0.6 * np.array([[0.9, -0.6, 0.4], [0.3, 0.8, -0.7]]),
                       U=[[1.1, -0.4], [0.5, 0.9], [-0.8, 0.6]], b=[0.2, -0.3, 0.1], activation="tanh"),
    # |b_i| < |u_i|: every unit switches on and off on the circle (six kinks of the field);
    # speed 0.46 .. 1.58, a rotation
    "relu": Perceptron(W=[[-0.16, -1.0, 0.92], [0.51, -0.24, -0.27]],
                       U=[[1.0, 0.2], [-0.6, 0.9], [-0.5, -1.0]], b=[0.4, 0.5, 0.3], activation="relu"),
}


def perceptron_only(P):
    return VelocityModel(P.d, Terms(P.d, (), P))


def speed(P, theta):
    """Tangential speed ``f(theta) = <e_theta, W sigma(U x(theta) + b)>`` (written from the
    perceptron's unprojected average: the projection does not change the tangential part)."""
    theta = np.asarray(theta, dtype=float)
    x = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    tangent = np.stack([-np.sin(theta), np.cos(theta)], axis=-1)
    return np.einsum("ij,ij->i", P.average(x.reshape(-1, 2)), tangent.reshape(-1, 2)).reshape(theta.shape)


def cdf(theta):
    """Mass of ``rho0 = (1 + cos(theta - 0.3) / 2) / (2 pi)`` in ``[0, theta]``, on the lift."""
    return (theta + 0.5 * np.sin(theta - 0.3)) / TWO_PI


def backward_ivp(P, theta, T):
    """``Phi_{-T}(theta)`` on the lift by solve_ivp (DOP853, rtol 1e-12)."""
    sol = solve_ivp(lambda t, th: speed(P, th), (T, 0.0), np.asarray(theta, dtype=float), method="DOP853",
                    rtol=1e-12, atol=1e-13)
    assert sol.success
    return sol.y[:, -1]


_GL = np.polynomial.legendre.leggauss(24)


def _breaks(P):
    """[0, 2 pi] cut at every kink of a relu field (``<u_i, x(theta)> = -b_i``) and into 32
    pieces: ``1 / f`` is analytic on each piece."""
    r = np.hypot(P.U[:, 0], P.U[:, 1])
    alpha = np.arctan2(P.U[:, 1], P.U[:, 0])
    on = np.abs(P.b) < r
    c = np.arccos(-P.b[on] / r[on])
    kinks = np.concatenate([alpha[on] + c, alpha[on] - c]) % TWO_PI
    return np.unique(np.concatenate([np.linspace(0.0, TWO_PI, 33), kinks]))


def _integral_of_inverse_speed(P, lo, hi):
    x, w = _GL
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    return (w / speed(P, mid[..., None] + half[..., None] * x)).sum(axis=-1) * half


def backward_travel_time(P, theta, T):
    """``Phi_{-T}(theta)`` on the lift for a speed without zeros, from the travel time
    ``tau(theta) = int_0^theta dphi / f`` (Gauss--Legendre on the pieces between kinks, exact
    to round-off) and ``tau(Phi_{-T}(theta)) = tau(theta) - T``, solved by Newton. For relu
    fields, whose kinks slow solve_ivp down by 100x."""
    brk = _breaks(P)
    cum = np.concatenate([[0.0], np.cumsum(_integral_of_inverse_speed(P, brk[:-1], brk[1:]))])
    period = cum[-1]
    if not np.all(speed(P, np.linspace(0, TWO_PI, 4097)) > 0):
        raise ValueError("the travel time needs a positive speed")

    def tau(th):  # on the lift
        turns = np.floor(th / TWO_PI)
        red = th - turns * TWO_PI
        j = np.clip(np.searchsorted(brk, red, side="right") - 1, 0, brk.size - 2)
        return turns * period + cum[j] + _integral_of_inverse_speed(P, brk[j], red)

    target = tau(np.asarray(theta, dtype=float)) - T
    turns = np.floor(target / period)
    th = turns * TWO_PI + np.interp(target - turns * period, cum, brk)  # tau is monotone: a start
    for _ in range(8):
        th = th - (tau(th) - target) * speed(P, th)
    assert np.abs(tau(th) - target).max() < 1e-13
    return th


def test_the_two_references_agree():
    """The travel time against solve_ivp: tanh at 513 points, relu (kinks) at a few."""
    T = 0.5
    theta = np.linspace(0, TWO_PI, 513)
    P = CIRCLE["tanh"]
    # measured 2.4e-13
    assert np.abs(backward_travel_time(P, theta, T) - backward_ivp(P, theta, T)).max() < 1e-11
    P = CIRCLE["relu"]
    theta = theta[::64]
    # measured 2.4e-10: solve_ivp's error where it steps across a kink (one ODE per point
    # at rtol 1e-13 is within 6e-13 of the travel time at most points, 1.3e-10 at one)
    assert np.abs(backward_travel_time(P, theta, T) - backward_ivp(P, theta, T)).max() < 2e-9


@pytest.mark.parametrize("activation, lo, top", [("tanh", 1.85, 1e-5), ("relu", 1.45, 2e-4)])
def test_circle_cell_averages_converge_to_the_pushforward(activation, lo, top):
    """MUSCL from the exact cell averages of ``rho0`` to T = 0.5 on 64 .. 512 cells, against
    the exact cell averages of the pushforward: L1 errors of second order for the smooth tanh
    field; relu's kinks are kinks of the density, where the limiter cuts the slopes (order
    ~1.6). Mass is conserved to round-off."""
    P = CIRCLE[activation]
    T, fine = 0.5, 512
    edges = np.arange(fine + 1) * (TWO_PI / fine)
    back = backward_ivp(P, edges, T) if activation == "tanh" else backward_travel_time(P, edges, T)
    model = perceptron_only(P)
    errors = []
    for M in (64, 128, 256, 512):
        mesh = mf.CircleMesh(M)
        exact = np.diff(cdf(back[:: fine // M])) / mesh.h  # coarse edges are every (fine/M)-th
        rho0 = np.diff(cdf(edges[:: fine // M])) / mesh.h
        sim = Simulation(mesh, model, scheme="muscl", backend="direct")
        st = State(0.0, rho0.copy())
        sim.advance(st, T)
        assert st.t == T and sim.rejected == 0
        assert abs(math.fsum(st.rho * mesh.h) - 1) < 1e-14
        assert np.abs(exact - rho0).sum() * mesh.h > 0.1  # the flow moves mass (L1 0.12, 0.28)
        errors.append(np.abs(st.rho - exact).sum() * mesh.h)
    orders = observed_orders(errors)
    # measured: tanh L1 4.9e-4, 1.2e-4, 2.6e-5, 6.5e-6 (orders 2.02, 2.24, 1.99);
    # relu 3.5e-3, 1.1e-3, 3.4e-4, 1.1e-4 (orders 1.67, 1.71, 1.57)
    assert np.all(orders >= lo) and np.all(orders <= 2.5), (errors, orders)
    assert errors[-1] <= top, errors


SPHERE_P = Perceptron(W=[[0.71, -0.89, 0.15, -0.2], [-0.16, -0.08, -0.71, -0.08], [-0.3, 1.16, 0.08, -0.12]],
                      U=[[-0.28, -0.67, -1.06], [-0.39, 0.48, -0.24], [0.96, -0.2, 0.02], [1.55, 0.55, -0.51]],
                      b=[-0.09, 0.27, 0.97, -0.13], activation="tanh")
_C = np.array([0.36, 0.48, 0.8])


def sphere_rho0(x):  # unnormalized, smooth
    return 1 + 0.6 * np.exp(2 * (x @ _C - 1)) + 0.3 * x[:, 0] * x[:, 1]


def observables(x):
    return np.stack([x[:, 0], x[:, 1], x[:, 2], x[:, 0] * x[:, 2], np.exp(x[:, 1])], axis=1)


def exact_observables(T, n):
    """``int g(Phi_T(y)) rho0(y) dy / int rho0`` on the Gauss x trapezoid grid of ``n x 2n``
    points, each moved forward by solve_ivp (DOP853, rtol 1e-11)."""
    y, w = sphere_grid(n, 2 * n)
    sol = solve_ivp(lambda t, z: SPHERE_P(z.reshape(-1, 3)).ravel(), (0.0, T), y.ravel(), method="DOP853",
                    rtol=1e-11, atol=1e-12)
    assert sol.success
    wr = w * sphere_rho0(y)
    return wr @ observables(sol.y[:, -1].reshape(-1, 3)) / wr.sum()


def test_sphere_observables_converge_at_second_order():
    """Icosahedral levels 3 and 4, MUSCL to T = 0.5 (the density's max/min grows from 1.8 to
    13): ``sum_i rho_i int_{C_i} g`` against the exact observables; every error falls by ~4."""
    T = 0.5
    ref = exact_observables(T, 32)
    assert np.abs(ref - exact_observables(T, 24)).max() < 1e-10  # the reference is converged (1.4e-12)
    errors = []
    for level in (3, 4):
        mesh = icosahedral(level)
        pts, wts = mesh.cell_quadrature(8)
        flat = pts.reshape(-1, 3)
        rho0 = (sphere_rho0(flat).reshape(wts.shape) * wts).sum(axis=1) / mesh.areas
        rho0 /= rho0 @ mesh.areas
        g_cells = (observables(flat).reshape(wts.shape + (5,)) * wts[..., None]).sum(axis=1)
        sim = Simulation(mesh, perceptron_only(SPHERE_P), scheme="muscl", backend="direct")
        st = State(0.0, rho0.copy())
        sim.advance(st, T)
        assert abs(math.fsum(st.rho * mesh.areas) - 1) < 1e-13
        assert np.abs(rho0 @ g_cells - ref).min() > 0.01  # every observable moves
        errors.append(st.rho @ g_cells - ref)
    ratios = np.abs(errors[0] / errors[1])
    # measured: level 3 max 3.7e-4, level 4 max 9.1e-5; ratios 4.04 .. 4.21
    assert np.all(ratios >= 3.5) and np.all(ratios <= 5.0), (errors, ratios)
    assert np.abs(errors[1]).max() < 1.5e-4, errors


def random_points(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def particle_perceptron(d, activation):
    rng = np.random.default_rng(5)
    return Perceptron(W=0.5 * rng.normal(size=(d, 4)), U=rng.normal(size=(4, d)), b=0.5 * rng.normal(size=4),
                      activation=activation), random_points(rng, 16, d)


def exact_particles(P, x0, T):
    sol = solve_ivp(lambda t, z: P(z.reshape(x0.shape)).ravel(), (0.0, T), x0.ravel(), method="DOP853",
                    rtol=1e-13, atol=1e-14)
    assert sol.success
    return sol.y[:, -1].reshape(x0.shape)


@pytest.mark.parametrize("d, activation, tol", [(2, "tanh", 1e-9), (3, "tanh", 1e-9), (3, "gelu", 1e-9),
                                                 (3, "relu", 1e-7)])
def test_particles_follow_the_flow(d, activation, tol):
    """dopri5 at rtol 1e-10 against solve_ivp of each point's ODE in R^d; rk4 at T/50 and T/100
    is fourth order for smooth activations (relu's kinks break the order: not checked)."""
    P, x0 = particle_perceptron(d, activation)
    T = 1.0
    velocity = make_velocity(perceptron_only(P), "direct")
    ref = exact_particles(P, x0, T)
    assert np.linalg.norm(ref - x0, axis=1).max() > 0.5  # they move
    st = evolve(velocity, x0, T, integrator="dopri5", rtol=1e-10, atol=1e-12)
    # measured: 1.8e-11 (d = 2), 1.6e-11 (tanh), 1.3e-11 (gelu), 8.5e-9 (relu)
    assert np.abs(st.x - ref).max() < tol
    if activation == "relu":
        return
    errs = [np.abs(evolve(velocity, x0, T, integrator="rk4", dt=T / n).x - ref).max() for n in (50, 100)]
    # measured 15.9 (d = 2), 16.0 (d = 3)
    assert 14.5 < errs[0] / errs[1] < 17.5, errs


def test_particles_land_on_the_pde_reference_edges():
    """Circle: particles started at ``Phi_{-T}(a_j)`` (the backward map of the PDE test) reach
    the cell edges ``a_j`` at T: the PDE reference and the particles see one flow."""
    P = CIRCLE["relu"]
    T = 0.5
    a = np.linspace(0, TWO_PI, 17)[:-1]
    back = backward_travel_time(P, a, T)
    st = evolve(make_velocity(perceptron_only(P), "direct"), np.c_[np.cos(back), np.sin(back)], T,
                integrator="dopri5", rtol=1e-10, atol=1e-12)
    assert np.abs(st.x - np.c_[np.cos(a), np.sin(a)]).max() < 1e-7  # measured 6.2e-9

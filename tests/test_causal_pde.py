r"""The causal PDE (``Simulation(positions=P)``, :mod:`meanfield.pde.causal`): the density of
``P`` position bands on the cells of the circle.

- invariants: the mass of every band to round-off, positivity, causality (a band's field
  ignores every later band), the ALiBi locality (with a large ``lambda`` a band's field
  depends on the nearby earlier bands only);
- identical bands are the non-causal solution (SA normalizes every prefix measure), nonlinear,
  with and without noise;
- the exact linearized solutions of SPEC section 5 (SA, ``Q = K = V = I``, mode ``cos k theta``,
  ``d/dt a = c H a``): the solver integrates the semi-discrete band system
  ``dA/dt = c_h H_P A`` (``c_h`` the mode's finite-volume rate, ``H_P`` the band quadrature of
  :func:`~meanfield.fields.causal.band_measures`), and its error against the exact
  ``a(t, s_p)`` (``a_0 = W^alpha`` in closed form, a bump in ``s`` by the Green's function
  integral) falls like ``P^-2``;
- restarts, the command line under MPI, bad input.

The theta discretization is taken out of the comparisons: the mesh is uniform and the
linearized finite-volume operator commutes with its rotations and reflection, so
``cos(k theta_i)`` is an eigenvector with the rate ``c_h = c sinc(k h_theta / 2)`` (the
non-causal test ``test_semi_discrete_rates_are_sigma_times_sinc``), the same in every band;
the references use ``c_h``. Time steps of 0.05 (``c dt = 0.02``: SSP-RK3 errors ~1e-7)
and ``eps = 1e-6`` (the nonlinear terms, 1e-6 relative) leave the position bands' error.
"""

import math

import numpy as np
import pytest
from scipy import integrate, special
from scipy.linalg import expm

import meanfield as mf
from meanfield.dynamics.model import VelocityModel
from meanfield.fields.causal import band_measures
from meanfield.pde.causal import CausalFiniteVolume
from meanfield.pde.solver import Simulation, State, make_velocity

from _helpers import MEANFIELD, MPIEXEC, launch

K, BETA, T_END, EPS, CELLS = 1, 1.0, 4.0, 1e-6, 32
#: the linear rate of cos(k theta) (SPEC section 5), c T_END = 1.78
C = K**2 * special.iv(K, BETA) / (BETA * special.iv(0, BETA))
LEVELS = (8, 16, 32, 64)


def causal_model(beta=BETA, alibi=0.0, normalized=True):
    return VelocityModel(2, mf.AttentionModel(2, beta=beta, normalized=normalized), mask="causal", alibi=alibi)


def W(s, lam):
    """``W(s) = (e^{lambda s} - 1) / lambda`` (``s`` at ``lambda = 0``)."""
    return s if lam == 0 else np.expm1(lam * s) / lam


def psi(c, u):
    """``psi_c(u) = sqrt(c / u) I_1(2 sqrt(c u))`` (``c`` at ``u = 0``)."""
    if u <= 0:
        return c
    z = 2.0 * math.sqrt(c * u)
    return math.sqrt(c / u) * special.ive(1, z) * math.exp(z)


def green(a0, s, lam, ct):
    """The exact linearized amplitude ``a(t, s) = a_0(s) + int_0^s psi_{ct}(log(W(s) / W(s')))
    W'(s') / W(s) a_0(s') ds'`` at the points ``s`` (adaptive quadrature)."""
    out = []
    for sp in np.atleast_1d(s):
        ws = W(sp, lam)

        def f(x):
            return psi(ct, math.log(ws / W(x, lam))) * math.exp(lam * x) / ws * a0(x)

        v, _ = integrate.quad(f, 0.0, sp, limit=200, epsabs=1e-14, epsrel=1e-12)
        out.append(a0(sp) + v)
    return np.array(out)


def band_operator(P, lam):
    """``H_P``: ``(H_P A)_p = sum_q omega_pq A_q / sum_q omega_pq`` (the SA band fields linearized)."""
    m = band_measures(np.eye(P), lam)
    return m / m.sum(axis=1, keepdims=True)


def linearized_run(a0, P, lam, cells=CELLS, t_end=T_END):
    """``(s_p, A_p(t_end), c_h)``: the amplitude of ``cos(k theta)`` of every band after a run
    from ``rho = (1 + eps a_0(s_p) cos(k theta)) / (2 pi)`` (``A_p(0) = a_0(s_p)``)."""
    mesh = mf.CircleMesh(cells)
    sim = Simulation(mesh, causal_model(alibi=lam), positions=P, dt_max=0.05)
    s = sim.fv.centres
    mode = np.cos(K * mesh.angles)
    st = State(0.0, (1.0 + EPS * a0(s)[:, None] * mode) / (2 * math.pi))
    sim.advance(st, t_end)
    amp = (st.rho - st.rho.mean(axis=1, keepdims=True)) @ mode / (EPS / (2 * math.pi) * (mode @ mode))
    x = K * mesh.h / 2
    return s, amp, C * math.sin(x) / x


# -- the references themselves -----------------------------------------------------------
@pytest.mark.parametrize("lam", [0.0, 3.0])
def test_green_function_reference_gives_the_closed_forms(lam):
    """The quadrature of the Green's function integral against ``a_0 = 1 -> e^{ct}`` and
    ``a_0 = W^alpha -> e^{ct / (alpha + 1)} W^alpha``."""
    s = np.array([0.05, 0.3, 0.7, 1.0])
    ct = C * T_END
    assert np.allclose(green(lambda x: 1.0, s, lam, ct), math.exp(ct), rtol=1e-11, atol=0)
    for alpha in (1, 2):
        exact = math.exp(ct / (alpha + 1)) * W(s, lam) ** alpha
        assert np.allclose(green(lambda x: W(x, lam) ** alpha, s, lam, ct), exact, rtol=1e-11, atol=0)


# -- invariants ----------------------------------------------------------------------------
def banded_density(mesh, P, amplitude=0.8):
    """Every band a different smooth density: a bump whose centre turns with ``s``."""
    s = (np.arange(P) + 0.5) / P
    rho = 1.0 + amplitude * np.cos(mesh.angles[None, :] - 2 * math.pi * s[:, None])
    return rho / (rho @ mesh.areas)[:, None]


@pytest.mark.parametrize("scheme", ["muscl", "upwind"])
@pytest.mark.parametrize("noise", [0.0, 0.4])
def test_every_band_keeps_its_mass_and_stays_nonnegative(scheme, noise):
    """Into clusters (beta = 6, ALiBi 2): each band's mass stays 1 to round-off, densities >= 0."""
    mesh = mf.CircleMesh(64)
    P = 6
    sim = Simulation(mesh, causal_model(beta=6.0, alibi=2.0), scheme=scheme, positions=P, noise=noise)
    st = State(0.0, banded_density(mesh, P))
    low = []
    sim.advance(st, 3.0, lambda state, dt: low.append(state.rho.min()))
    assert st.rho.shape == (P, mesh.n_cells)
    # measured <= 2.2e-16 without noise, 2.2e-15 with (the diffusion's mass restoration)
    assert np.max(np.abs(st.rho @ mesh.areas - 1.0)) < 1e-14
    assert min(low) >= 0.0
    assert st.rho.max() > 10 * st.rho.min()  # it did cluster


def test_band_fields_are_causal_and_alibi_local():
    """A change of band q changes nothing in the bands before it; with ALiBi lambda = 60 the
    change of band p's field falls like ``e^{-lambda (s_p - s_q)}`` (with lambda = 0 it does not)."""
    mesh = mf.CircleMesh(48)
    P, q = 20, 4
    rho = banded_density(mesh, P, 0.5)
    other = rho.copy()
    other[q] = banded_density(mesh, 1, 0.9)[0]
    change = {}
    for lam in (0.0, 60.0):
        fv = CausalFiniteVolume(mesh, make_velocity(causal_model(beta=2.0, alibi=lam)), P)
        v0, v1 = fv.velocity_at_centers(rho), fv.velocity_at_centers(other)
        assert v0.shape == (P, mesh.n_cells, 2)
        dv = np.abs(v1 - v0).max(axis=(1, 2))
        assert np.all(dv[:q] == 0.0)  # causality, exactly
        change[lam] = dv[q:] / dv[q]
    s = fv.centres[q:] - fv.centres[q]
    far = s > 0.27
    # lambda = 60: beyond the next band the change falls by the ALiBi weight e^{-lambda h} per
    # band (measured: the ratios are e^{-3} to 1e-3); below 1e-6 of band q's from s_q + 0.3 on
    # (measured 8.2e-8)
    assert np.all(change[60.0][2:] <= 1.05 * change[60.0][1] * np.exp(-60.0 * (s[2:] - s[1])) + 1e-14)  # (round-off)
    assert change[60.0][far].max() < 1e-6
    assert change[0.0][far].min() > 0.05  # without ALiBi every later band sees band q


@pytest.mark.parametrize("lam", [0.0, 3.0])
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_identical_bands_are_the_non_causal_solution(lam, noise):
    """A density the same at every position: every band's prefix measure is a multiple of it,
    and SA normalizes the multiple away, so every band follows the non-causal solution
    (nonlinear, here into clusters; with noise each band diffuses as the one density does)."""
    mesh = mf.CircleMesh(48)
    P = 5
    rho0 = banded_density(mesh, 1, 0.6)[0]
    model = mf.AttentionModel(2, beta=4.0)
    ref = Simulation(mesh, model, noise=noise)
    sim = Simulation(mesh, causal_model(beta=4.0, alibi=lam), positions=P, noise=noise)
    a, b = State(0.0, rho0.copy()), State(0.0, np.tile(rho0, (P, 1)))
    ref.advance(a, 2.0)
    sim.advance(b, 2.0)
    assert b.steps == a.steps
    # measured <= 8.9e-16 (of a maximum density 0.31), the same steps
    assert np.max(np.abs(b.rho - a.rho)) < 1e-13
    assert a.rho.max() > 2 * a.rho.min()


def test_restart_from_the_state_is_bitwise():
    """Stopping at t = 1 and continuing in a new Simulation from that State (a restart) gives the
    bits of the run that went through, with noise (one factorization per step size)."""
    mesh = mf.CircleMesh(40)
    P = 4

    def new():
        return Simulation(mesh, causal_model(beta=4.0, alibi=1.0), positions=P, noise=0.2)

    straight = State(0.0, banded_density(mesh, P))
    sim = new()
    sim.advance(straight, 1.0)
    saved = State(straight.t, straight.rho.copy(), straight.steps)
    sim.advance(straight, 2.0)
    new().advance(saved, 2.0)
    assert saved.steps == straight.steps and saved.t == straight.t == 2.0
    assert np.array_equal(saved.rho, straight.rho)


# -- the exact linearized solutions --------------------------------------------------------
def a0_of(name, lam):
    if name == "1":
        return lambda s: np.ones_like(np.asarray(s, dtype=float))
    if name == "W":
        return lambda s: W(s, lam)
    if name == "W^2":
        return lambda s: W(s, lam) ** 2
    return lambda s: np.exp(-(((s - 0.35) / 0.08) ** 2))  # "bump": localized in s


def exact_amplitude(name, s, lam, ct):
    a0 = a0_of(name, lam)
    if name == "1":
        return np.full(s.shape, math.exp(ct))
    if name in ("W", "W^2"):
        alpha = 1 if name == "W" else 2
        return math.exp(ct / (alpha + 1)) * a0(s)
    return green(lambda x: float(a0(x)), s, lam, ct)


@pytest.mark.parametrize("lam", [0.0, 3.0])
def test_uniform_in_s_grows_like_the_non_causal_mode_in_every_band(lam):
    """``a_0 = 1``: ``H_P 1 = 1`` exactly, so every band grows like ``e^{c_h t}``; the error
    against the exact ``e^{ct}`` is the theta discretization only (the same at every P)."""
    for P in (1, 16):
        s, amp, ch = linearized_run(a0_of("1", lam), P, lam)
        # measured 8.1e-7 relative: the nonlinear terms at eps = 1e-6, and SSP-RK3
        assert np.allclose(amp, math.exp(ch * T_END), rtol=1e-5, atol=0)
        # the theta error: c t (k h)^2 / 24 = 2.9e-3 at 32 cells (measured 2.85e-3)
        assert abs(amp / math.exp(C * T_END) - 1).max() < 3.2e-3


@pytest.mark.parametrize("lam", [0.0, 3.0])
@pytest.mark.parametrize("name", ["W", "W^2", "bump"])
def test_linearized_bands_converge_to_the_exact_solution(name, lam):
    """The band amplitudes against the exact ``a(t, s_p)`` (with ``c_h``) for ``P = 8 .. 64``.

    First the solver against the semi-discrete band system ``expm(c_h t H_P) a_0(s_p)``
    (its time steps and the nonlinear terms only: 2e-7); then the error of the bands,
    ``max_p |A_p - a(t, s_p)| / max_p |a(t, s_p)|`` over all bands and over ``s_p >= 1/4``,
    and its observed order. Second order where ``a_0`` is flat at ``s = 0`` (``W^2``, the bump);
    ``a_0 = W`` has ``a_0'(0) != 0``: the first bands' error ``h^2 a'/(8 s)`` (half of the own
    band, normalized by ``W(s) ~ s``) is ``O(h)`` there, and at fixed ``s`` the Green's
    function (``psi(log(W(s)/W(s')))`` grows as ``s' -> 0``) spreads it: order about 1.5
    at lambda = 0 (1.6 at P = 1024 by the band system alone), 2 at lambda = 3 for these P
    (the growth of ``W`` hides it)."""
    a0 = a0_of(name, lam)
    errors = []
    for P in LEVELS:
        s, amp, ch = linearized_run(a0, P, lam)
        semi = expm(ch * T_END * band_operator(P, lam)) @ a0(s)
        assert np.allclose(amp, semi, rtol=0, atol=1e-6 * abs(semi).max())  # measured <= 2.1e-7
        exact = exact_amplitude(name, s, lam, ch * T_END)
        err = np.abs(amp - exact) / abs(exact).max()
        errors.append((err.max(), err[s >= 0.25].max()))
    errors = np.array(errors)
    orders = np.log2(errors[:-1] / errors[1:])
    table = "\n".join(f"  P={P:3d}  all {e[0]:.3e}  s>=1/4 {e[1]:.3e}" + ("" if i == 0 else
                      f"  orders {orders[i - 1, 0]:.2f} {orders[i - 1, 1]:.2f}") for i, (P, e) in enumerate(zip(LEVELS, errors)))
    print(f"\na_0 = {name}, lambda = {lam:g}\n{table}")
    finest = {("W", 0.0): (1.14e-2, 2.10e-3), ("W", 3.0): (1.84e-3, 3.37e-4), ("W^2", 0.0): (1.42e-4, 1.42e-4),
              ("W^2", 3.0): (6.19e-4, 6.19e-4), ("bump", 0.0): (1.28e-3, 1.28e-3), ("bump", 3.0): (1.71e-3, 1.71e-3)}
    assert np.all(errors[-1] <= 1.1 * np.array(finest[name, lam]))  # the measured errors at P = 64
    if name == "W":
        assert np.all(np.abs(orders[:, 0] - 1.0) < 0.35)  # first order over all bands (the first band)
        assert np.all(orders[:, 1] > (1.9 if lam else 1.4))
    else:
        assert np.all(orders[1:] > 1.95) and np.all(orders > 1.8)


# -- the command line under MPI --------------------------------------------------------------
CASE = """
[domain]
manifold = "circle"
cells = 48
positions = 6
[model]
beta = 3.0
mask = "causal"
alibi = 2.0
noise = {noise}
[initial]
kind = "modes"
modes = [{{k = 1, amplitude = 0.3}}]
[solver]
t_end = 1.0
[output]
every = 0.5
plots = false
"""


@pytest.mark.skipif(MPIEXEC is None or MEANFIELD is None, reason="mpiexec or the meanfield script is not installed")
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_causal_run_under_mpi_is_the_serial_run(tmp_path, noise):
    """``meanfield run`` of a causal case under ``mpiexec -n 2`` (each rank the same cells of
    every band) gives the serial bands and velocities (measured 2e-16)."""
    case = tmp_path / "causal.toml"
    case.write_text(CASE.format(noise=noise))
    out = {}
    for ranks in (1, 2):
        proc = launch(ranks, "run", case, "--quiet", "--out", tmp_path / f"r{ranks}")
        assert proc.returncode == 0, proc.stderr
        out[ranks] = np.load(tmp_path / f"r{ranks}" / "final.npz")
    a, b = out[1], out[2]
    assert a["density"].shape == (6, 48) and a["velocity"].shape == (6, 48, 2)
    assert int(a["steps"]) == int(b["steps"])
    assert np.allclose(a["density"], b["density"], rtol=0, atol=1e-14)
    assert np.allclose(a["velocity"], b["velocity"], rtol=0, atol=1e-14)


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("positions", [0, -3, 2.5, True])
def test_positions_must_be_a_positive_integer(positions):
    with pytest.raises(ValueError, match="domain.positions"):
        Simulation(mf.CircleMesh(16), causal_model(), positions=positions)


def test_positions_need_a_causal_model_and_a_causal_model_needs_positions():
    mesh = mf.CircleMesh(16)
    with pytest.raises(ValueError, match="model.mask"):
        Simulation(mesh, mf.AttentionModel(2, beta=1.0), positions=4)
    with pytest.raises(ValueError, match="domain.positions"):
        Simulation(mesh, causal_model())


def test_the_operator_checks_the_shape_of_the_density():
    mesh = mf.CircleMesh(16)
    sim = Simulation(mesh, causal_model(), positions=3)
    with pytest.raises(ValueError, match=r"\(3, 16\)"):
        sim.fv.rhs(np.ones(16) / (2 * math.pi))

"""Fourier pseudo-spectral solver on S^1 for isotropic attention models.

The unknowns are the **point values** of the density at the ``M`` grid points
``theta_j = (j + 1/2) h`` (the cell centres ``mesh.angles`` of a :class:`CircleMesh`),
not cell averages: ``State.rho[j] = rho(theta_j)``. The mass is the trapezoidal rule
``2 pi mean(rho)``, which is the exact integral of the trigonometric interpolant and is
conserved to round-off (the flux divergence has no k = 0 mode).

For ``Q^T K = c I`` and ``V = v I`` with ``b = beta c`` the convolution
``K*rho(theta) = int exp(b cos(theta - phi)) rho(phi) dphi`` is diagonal in Fourier modes:
mode ``k`` is multiplied by ``2 pi I_k(b)``. The tangential velocity is

* USA: ``u = v/b d/dtheta (K*rho)``,
* SA:  ``u = v/b (d/dtheta K*rho) / (K*rho)`` (= ``v/b d/dtheta log K*rho``),
* ``b = 0``: ``u = v P_x(mean) . tangent`` (only the ``k = +-1`` modes; SA divides by the mass),

computed exactly for the discrete Fourier series with exponentially scaled Bessel
functions (``scipy.special.ive``), so SA never overflows at large ``b``. The flux
``rho u`` is formed pointwise on a grid padded by the 3/2 rule (alias free for the modes
kept), its derivative is spectral, and time stepping is classical RK4 with

    dt = min(dt_max, rate_cfl / model.rate_bound(M // 2), cfl * h / max |u|),

landing exactly on ``t_limit``.

This scheme is **not positivity preserving**: near steep gradients or clusters the
truncated Fourier series has Gibbs oscillations and densities can become negative. It is
meant for smooth regimes (linear growth about the uniform state, early nonlinear phase)
and as a high-accuracy reference to verify the finite-volume schemes
(:class:`meanfield.Simulation`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from ..fields.attention import AttentionModel
from ..geometry.mesh import CircleMesh
from .solver import State
from .timestepping import NonFiniteStateError, Stepper

__all__ = ["SpectralCircleSimulation", "interpolant_cell_averages"]


def _pad(coef: np.ndarray, m: int, n: int) -> np.ndarray:
    """rfft (forward-normalized) coefficients of an ``m``-point real signal, zero-padded to
    ``n`` points; an even ``m``'s Nyquist coefficient is split symmetrically (halved)."""
    out = np.zeros(n // 2 + 1, dtype=complex)
    out[: coef.shape[0]] = coef
    if m % 2 == 0:
        out[m // 2] = 0.5 * coef[m // 2].real
    return out


def interpolant_cell_averages(rho: np.ndarray, cells: int) -> np.ndarray:
    """Exact averages of the trigonometric interpolant of the point values ``rho`` (at
    ``(j + 1/2) 2 pi / M``) over the ``cells`` uniform cells ``[i H, (i+1) H]``.

    Mode ``k`` is multiplied by ``sinc(k H / 2) = sin(k H/2) / (k H/2)``; needs
    ``cells >= M``.
    """
    rho = np.asarray(rho, dtype=float)
    m = rho.shape[0]
    if cells < m:
        raise ValueError(f"cells ({cells}) must be >= the number of points ({m})")
    h, H = 2 * math.pi / m, 2 * math.pi / cells
    coef = _pad(np.fft.rfft(rho, norm="forward"), m, cells)
    k = np.arange(coef.shape[0])
    # shift from the coarse origin h/2 to the fine origin H/2, and average over a cell
    coef *= np.exp(1j * k * (H - h) / 2) * np.sinc(k * H / (2 * math.pi))
    return np.fft.irfft(coef, n=cells, norm="forward")


class SpectralCircleSimulation(Stepper):
    """Fourier pseudo-spectral solver with RK4, same ``step``/``advance``/``velocity`` API
    as :class:`meanfield.Simulation`; ``State.rho`` holds point values at ``mesh.angles``.

    Parameters
    ----------
    mesh : CircleMesh
        Supplies the ``M`` grid points (cell centres).
    model : AttentionModel
        Must be isotropic (``Q^T K = c I``, ``V = v I``), ``d = 2``.
    dt_max, rate_cfl, cfl : float
        Step bounds (see module docstring).
    """

    def __init__(self, mesh: CircleMesh, model: AttentionModel, dt_max: float = math.inf, rate_cfl: float = 0.05,
                 cfl: float = 0.5, noise: float = 0.0):
        if mesh.d != 2 or model.d != 2 or not isinstance(mesh, CircleMesh):
            raise ValueError("the pseudo-spectral scheme is for the circle (CircleMesh, d = 2)")
        iso = model.isotropic()
        if iso is None:
            raise ValueError("the pseudo-spectral scheme needs an isotropic model (Q^T K = c I, V = v I); "
                             "use the finite-volume schemes (meanfield.Simulation) otherwise")
        if not (rate_cfl > 0 and cfl > 0 and dt_max > 0):
            raise ValueError("dt_max, rate_cfl and cfl must be positive")
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.noise = float(noise)
        self.mesh = mesh
        self.model = model
        self.dt_max = float(dt_max)
        self.rate_cfl = float(rate_cfl)
        self.cfl = float(cfl)
        c, v = iso
        self.b = b = model.beta * c
        self.v = v
        m = self.m = mesh.n_cells
        self.n_pad = 3 * (m // 2) + 2  # > 3 * (highest mode): products alias-free on kept modes
        k = np.arange(m // 2 + 1)
        ik = 1j * k.astype(float)
        if m % 2 == 0:
            ik[-1] = 0.0  # derivative of the (symmetric) Nyquist mode vanishes at the grid points
        self.ik = ik
        # Scaled multipliers: K*rho ~ 2 pi ive(k, b) (times e^|b|) and (1/b) K*rho.
        self.kconv = 2 * math.pi * special.ive(k, b)
        if b == 0.0:
            self.kgrad = np.where(k == 1, math.pi, 0.0)  # lim I_k(b)/b: 1/2 for k = 1, else 0
        else:
            self.kgrad = 2 * math.pi * special.ive(k, b) / b
        # USA undoes the scaling e^{-|b|}; shifted USA (logit offset beta |c| = |b|) does not
        self.scale = 1.0 if model.normalized else math.exp(abs(b) - model.logit_offset)
        self.rate = model.rate_bound(max_mode=max(1, m // 2))
        self.tangents = mesh.tangent(mesh.centers)
        #: decay rate of mode k under the diffusion (sigma^2 / 2) d^2/dtheta^2: exact in Fourier space
        self.decay = 0.5 * self.noise ** 2 * k.astype(float) ** 2

    # -- spatial operator ---------------------------------------------------------------
    def _u(self, coef: np.ndarray) -> np.ndarray:
        """Tangential velocity at the grid points from the rfft coefficients of rho."""
        m = self.m
        num = np.fft.irfft(self.v * self.scale * self.kgrad * self.ik * coef, n=m, norm="forward")
        if not self.model.normalized:
            return num
        den = np.fft.irfft(self.kconv * coef, n=m, norm="forward")
        return num / den

    def tangential_velocity(self, rho: np.ndarray) -> np.ndarray:
        """``u = X . tangent`` at the grid points, shape ``(M,)``."""
        return self._u(np.fft.rfft(np.asarray(rho, dtype=float), norm="forward"))

    def _rhs(self, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, n = self.m, self.n_pad
        coef = np.fft.rfft(rho, norm="forward")
        u = self._u(coef)
        rho_f = np.fft.irfft(_pad(coef, m, n), n=n, norm="forward")
        u_f = np.fft.irfft(_pad(np.fft.rfft(u, norm="forward"), m, n), n=n, norm="forward")
        flux = np.fft.rfft(rho_f * u_f, norm="forward")[: m // 2 + 1]
        return -np.fft.irfft(self.ik * flux, n=m, norm="forward"), u

    def rhs(self, rho: np.ndarray) -> np.ndarray:
        """``-d/dtheta (rho u)`` at the grid points."""
        return self._rhs(np.asarray(rho, dtype=float))[0]

    # -- time stepping --------------------------------------------------------------------
    def step(self, state: State, t_limit: float = math.inf) -> float:
        """Advance ``state`` in place by one RK4 step not passing ``t_limit``; returns dt."""
        rho = state.rho
        k1, u = self._rhs(rho)
        umax = float(np.abs(u).max())
        dt = min(self.dt_max, self.rate_cfl / self.rate,
                 self.cfl * self.mesh.h / umax if umax > 0 else math.inf)
        dt = self.clip_step(state.t, dt, t_limit)
        if not math.isfinite(dt):
            raise NonFiniteStateError(f"t={state.t:.6g}: no finite step (zero velocity, no rate bound or t_limit)")
        if self.noise == 0.0:
            k2 = self.rhs(rho + 0.5 * dt * k1)
            k3 = self.rhs(rho + 0.5 * dt * k2)
            k4 = self.rhs(rho + dt * k3)
            new = rho + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        else:
            new = self._lawson_rk4(rho, k1, dt)
        if not np.all(np.isfinite(new)):
            raise NonFiniteStateError(f"t={state.t + dt:.6g}: the density became non-finite")
        state.rho = new
        self.finish_step(state, dt, t_limit)
        return dt


    def step_bounds(self, rho: np.ndarray, t: float = 0.0) -> dict:
        """The bounds of the next step from ``rho``: ``{"cfl", "rate", "dt_max"}`` (their minimum is the step)."""
        umax = float(np.abs(self.tangential_velocity(rho)).max())
        return {"cfl": self.cfl * self.mesh.h / umax if umax > 0 else math.inf, "rate": self.rate_cfl / self.rate,
                "dt_max": self.dt_max}

    def velocity(self, rho: np.ndarray, t: float = 0.0) -> np.ndarray:
        """The field X at the grid points (cell centres), shape ``(M, 2)`` (one fixed head: ``t``
        does not matter)."""
        return self.tangential_velocity(rho)[:, None] * self.tangents

    def _heat(self, rho: np.ndarray, tau: float) -> np.ndarray:
        """The exact heat flow ``exp(tau (sigma^2/2) d^2/dtheta^2)`` of the grid values."""
        return np.fft.irfft(np.fft.rfft(rho, norm="forward") * np.exp(-self.decay * tau), n=self.m, norm="forward")

    def _lawson_rk4(self, rho: np.ndarray, k1: np.ndarray, dt: float) -> np.ndarray:
        """One step of the integrating-factor (Lawson) RK4 for ``rho' = D rho + N(rho)``: RK4 on
        ``e^{-tD} rho`` with the diffusion ``D`` exact in Fourier space; fourth order, and
        stable for any step the transport allows (the diffusion only damps)."""
        half, heat = 0.5 * dt, self._heat
        k2 = self.rhs(heat(rho + half * k1, half))
        k3 = self.rhs(heat(rho, half) + half * k2)
        k4 = self.rhs(heat(rho, dt) + dt * heat(k3, half))
        return heat(rho + (dt / 6.0) * k1, dt) + (dt / 6.0) * (heat(2.0 * (k2 + k3), half) + k4)

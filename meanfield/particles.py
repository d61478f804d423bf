"""The particle system: n weighted tokens on S^{d-1} moving with the attention field.

.. math::

    \\dot x_i = X[\\mu_n](x_i), \\qquad \\mu_n = \\sum_j w_j \\delta_{x_j}, \\qquad |x_i| = 1,

with X the field of :mod:`meanfield.attention`. The empirical measure ``mu_n`` is a weak
solution of the same continuity equation as the density, so the particles evaluate the
field exactly as the finite-volume solver does: one call ``field(x, x, w)`` per stage,
where ``field`` is any :class:`~meanfield.attention.AttentionField` backend (targets =
sources = the particle positions, weights = the particle weights). A backend written for
the PDE (direct sums, a spectral transform, an MPI split of the targets) therefore serves
the particles unchanged.

Integrators (``solver.integrator``), registered in :data:`INTEGRATORS`:

``rk4`` (default)
    The classical Runge--Kutta method applied to the *radially extended* field
    ``F(y) = X[mu(y / |y|)](y / |y|)`` (every particle row normalized), followed by the
    projection ``R(y) = y / |y|`` of every row. Evaluating ``F`` at a stage value is the
    same as evaluating X at the stage value retracted onto the sphere, so every stage is
    retracted, ``x <- (x + dx) / |x + dx|``::

        k1 = X(x)
        k2 = X(R(x + dt/2 k1)),  k3 = X(R(x + dt/2 k2)),  k4 = X(R(x + dt k3))
        x  <- R(x + dt/6 (k1 + 2 k2 + 2 k3 + k4))

    Why this retraction and not the exponential map ``exp_x(v) = cos|v| x + sin|v| v/|v|``:
    the sphere (product of spheres) is invariant under the flow of ``F`` because ``F`` is
    tangent on it, so this is the *standard projection method* (Hairer, Lubich, Wanner,
    Geometric Numerical Integration, IV.4): the step before projection is an order-4
    approximation of a flow that stays on the sphere, and the projection moves it by no
    more than that error. The method keeps order 4, needs no tangent-space bookkeeping
    (stage slopes live in different tangent spaces, which the projection absorbs), works
    in any dimension d, and keeps ``|x_i| = 1`` to round-off. The exponential map would
    change nothing at order 4 (the two retractions agree to O(|v|^3)).
``euler``
    Explicit Euler followed by renormalization, ``x <- (x + dt X(x)) / |x + dt X(x)|``
    (first order), for reproducing the figures of the authors' public scripts
    (github.com/borjanG/2023-transformers-rotf, ``sphere.py``: n = 64, dt = 0.1). Those
    scripts step with the *unprojected* softmax average ``v`` (``x + dt v``, then
    normalize); since ``x + dt v = (1 + dt <x, v>) x + dt P_x v``, that is this scheme with
    the per-particle step ``dt / (1 + dt <x, v>)``: the two agree to O(dt^2) per step (the
    same first-order method, not bit for bit; the field interface returns ``P_x v`` only).

Time step (``solver.dt``): a fixed number, or ``"auto"``::

    dt = min(dt_max, rate_cfl / sigma_max, cfl * ell / v_max)

* ``sigma_max`` (:meth:`AttentionModel.rate_bound`) is the interaction rate of the model
  (the largest linear growth rate about the uniform state, or its estimate for general
  ``Q, K, V``): the same bound the PDE solver uses, it keeps ``dt`` a fixed fraction of
  the time scale of cluster formation and of the contraction inside a cluster;
* the "CFL" term: no particle moves by more than ``cfl`` times the interaction length
  ``ell = min(1, 1 / sqrt(||beta Q^T K||_2))`` (the angular width of the kernel
  ``exp(beta <x, y>)``) in one step; ``v_max = max_i |X(x_i)|``.

Steps never pass an output time: the step before ``t_target`` is shortened to land on it
exactly (a fixed step is otherwise kept; a remainder within ``1e-9 dt`` of a step is
absorbed into it, so ``t_end = k dt`` takes exactly k steps).

Weights: ``weights (n,)`` nonnegative with a positive sum; :meth:`ParticleState.create`
normalizes them to sum 1 (the PDE normalizes its mass to 1 too, which matters for USA,
whose field scales with the total mass).

MPI: the integrator touches only whole arrays, never the communicator; a distributed
backend splits the targets of each ``field(x, x, w)`` call and returns the full result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .attention import AttentionField, AttentionModel
from .timestepping import NonFiniteStateError, Stepper

__all__ = [
    "INTEGRATORS",
    "ParticleIntegrator",
    "ParticleState",
    "ParticleSystem",
    "evolve",
    "register_integrator",
    "retract",
]


def retract(y: np.ndarray) -> np.ndarray:
    """Every row of ``y`` divided by its norm: the projection retraction onto the sphere."""
    return y / np.linalg.norm(y, axis=-1, keepdims=True)


@dataclass(frozen=True)
class ParticleIntegrator:
    """A one-step method ``step(rhs, x, dt, v0) -> x_new`` on the product of spheres.

    ``rhs(x) -> (n, d)`` is the field at the positions ``x`` (rows on the sphere); ``v0``
    is ``rhs(x)``, already computed by the caller to choose ``dt``.
    """

    name: str
    order: int
    step: Callable


#: name -> :class:`ParticleIntegrator`.
INTEGRATORS: dict[str, ParticleIntegrator] = {}


def register_integrator(name: str, order: int):
    """Register ``fn(rhs, x, dt, v0) -> x_new`` as the integrator ``name`` of order ``order``."""

    def deco(fn):
        INTEGRATORS[name] = ParticleIntegrator(name, order, fn)
        return fn

    return deco


@register_integrator("rk4", order=4)
def _rk4(rhs, x, dt, v0):
    k1 = v0
    k2 = rhs(retract(x + (0.5 * dt) * k1))
    k3 = rhs(retract(x + (0.5 * dt) * k2))
    k4 = rhs(retract(x + dt * k3))
    return retract(x + (dt / 6.0) * (k1 + 2.0 * (k2 + k3) + k4))


@register_integrator("euler", order=1)
def _euler(rhs, x, dt, v0):
    return retract(x + dt * v0)


@dataclass
class ParticleState:
    """Positions ``x (n, d)`` (unit rows) and weights ``weights (n,)`` at time ``t``,
    after ``steps`` steps."""

    t: float
    x: np.ndarray
    weights: np.ndarray
    steps: int = 0

    @classmethod
    def create(cls, points, weights=None, t: float = 0.0) -> "ParticleState":
        """A checked state: ``points (n, d)`` projected onto the sphere, ``weights (n,)``
        (default ``1/n``) normalized to sum 1."""
        x = np.array(points, dtype=float, copy=True)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
            raise ValueError(f"points must have shape (n, d) with n >= 1, d >= 2, got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("points must be finite")
        r = np.linalg.norm(x, axis=1)
        if np.any(r == 0):
            raise ValueError(f"point {int(np.flatnonzero(r == 0)[0])} is zero and cannot be projected onto the sphere")
        x /= r[:, None]
        n = x.shape[0]
        if weights is None:
            w = np.full(n, 1.0 / n)
        else:
            w = np.array(weights, dtype=float, copy=True)
            if w.shape != (n,):
                raise ValueError(f"weights must have shape ({n},), got {w.shape}")
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError("weights must be finite and nonnegative")
            total = math.fsum(w)
            if not total > 0:
                raise ValueError("weights must have a positive sum")
            w /= total
        return cls(float(t), x, w, 0)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.x.shape[1]


def _interaction_length(model: AttentionModel) -> float:
    a = float(np.linalg.norm(model.interaction, 2))
    return 1.0 if a <= 1.0 else 1.0 / math.sqrt(a)


class ParticleSystem(Stepper):
    """Evolve a :class:`ParticleState` with an attention-field backend.

    Parameters
    ----------
    field : AttentionField
        Backend, called as ``field(x, x, w)``; its ``model`` sets the automatic step.
    integrator : str
        Key of :data:`INTEGRATORS` (``"rk4"`` or ``"euler"``).
    dt : float or "auto"
        Fixed step, or the automatic step of the module docstring.
    cfl, rate_cfl, dt_max : float
        Bounds of the automatic step (``dt_max`` also caps a fixed step).
    """

    def __init__(self, field: AttentionField, integrator: str = "rk4", dt="auto", cfl: float = 0.4,
                 rate_cfl: float = 0.1, dt_max: float = math.inf):
        if integrator not in INTEGRATORS:
            raise ValueError(f"unknown integrator {integrator!r}; choose one of {sorted(INTEGRATORS)}")
        if dt != "auto":
            if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
                raise ValueError(f"dt must be \"auto\" or a finite number > 0, got {dt!r}")
            dt = float(dt)
        for name, value in (("cfl", cfl), ("rate_cfl", rate_cfl)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not dt_max > 0:
            raise ValueError(f"dt_max must be > 0, got {dt_max!r}")
        self.field = field
        self.model: AttentionModel = field.model
        self.integrator = INTEGRATORS[integrator]
        self.dt = dt
        self.cfl = float(cfl)
        self.rate_cfl = float(rate_cfl)
        self.dt_max = float(dt_max)
        a = float(np.linalg.norm(self.model.interaction, 2))
        # Modes up to ~4 sqrt(2 beta) cover the fastest-growing one (k ~ sqrt(2 beta)).
        self.rate = self.model.rate_bound(max_mode=max(64, int(4.0 * math.sqrt(2.0 * a)) + 1))
        self.length = _interaction_length(self.model)

    def velocity(self, state: ParticleState) -> np.ndarray:
        """The field X[mu_n] at the particles, ``(n, d)``."""
        return self.field(state.x, state.x, state.weights)

    def auto_dt(self, v: np.ndarray) -> float:
        """The automatic step for the velocities ``v (n, d)`` (without ``dt_max``)."""
        vmax = float(np.sqrt(np.max(np.einsum("ij,ij->i", v, v)))) if v.size else 0.0
        dt = self.rate_cfl / self.rate
        if vmax > 0:
            dt = min(dt, self.cfl * self.length / vmax)
        return dt

    def step(self, state: ParticleState, t_limit: float = math.inf) -> float:
        """Advance ``state`` in place by one step not passing ``t_limit``; returns the step."""
        w = state.weights
        if state.x.shape[1] != self.model.d:
            raise ValueError(f"particles live in R^{state.x.shape[1]} but the model is for d = {self.model.d}")

        def rhs(x):
            return self.field(x, x, w)

        v0 = rhs(state.x)
        dt = self.auto_dt(v0) if self.dt == "auto" else self.dt
        dt = min(dt, self.dt_max)
        dt = self.clip_step(state.t, dt, t_limit)
        x = self.integrator.step(rhs, state.x, dt, v0)
        if not np.all(np.isfinite(x)):
            raise NonFiniteStateError(f"t={state.t + dt:.6g}: a particle position became non-finite")
        state.x = x
        self.finish_step(state, dt, t_limit)
        return dt



def evolve(field: AttentionField, points, t_end: float, weights=None, *, integrator: str = "rk4", dt="auto",
           cfl: float = 0.4, rate_cfl: float = 0.1, dt_max: float = math.inf, t0: float = 0.0,
           callback=None) -> ParticleState:
    """Evolve particles from ``points (n, d)`` (weights default ``1/n``) to ``t_end``.

    ``callback(state, dt)`` is called after every step (``state`` is updated in place;
    copy ``state.x`` to keep it). Returns the final :class:`ParticleState`.

    >>> import numpy as np, meanfield as mf
    >>> from meanfield.particles import evolve
    >>> field = mf.DirectField(mf.AttentionModel(d=2, beta=1.0))
    >>> theta = np.array([0.0, 1.0])
    >>> st = evolve(field, np.c_[np.cos(theta), np.sin(theta)], 5.0, dt=0.01)
    >>> bool(np.dot(st.x[0], st.x[1]) > np.cos(1.0))   # the two tokens attract
    True
    """
    state = ParticleState.create(points, weights, t=t0)
    system = ParticleSystem(field, integrator=integrator, dt=dt, cfl=cfl, rate_cfl=rate_cfl, dt_max=dt_max)
    return system.advance(state, float(t_end), callback)

"""The particle system: n weighted tokens on S^{d-1} moving with the attention field.

.. math::

    \\dot x_i = X[\\mu_n](x_i), \\qquad \\mu_n = \\sum_j w_j \\delta_{x_j}, \\qquad |x_i| = 1,

with X the field of :mod:`meanfield.fields.attention`. The empirical measure ``mu_n`` is a weak
solution of the same continuity equation as the density, so the particles evaluate the
field exactly as the finite-volume solver does: one call ``field(x, x, w)`` per stage,
where ``field`` is any :class:`~meanfield.fields.attention.AttentionField` backend (targets =
sources = the particle positions, weights = the particle weights). A backend written for
the PDE (direct sums, a spectral transform, an MPI split of the targets) therefore serves
the particles unchanged.

Integrators (``solver.integrator``), registered in :data:`INTEGRATORS` (docs/particles.md
has the measurements):

``dopri5`` (default), ``bs32``, ``rk4``: Runge--Kutta with retraction
    The method is applied to the *radially extended* field ``F(y) = X[mu(y / |y|)](y / |y|)``
    (every particle row normalized), followed by the projection ``R(y) = y / |y|`` of every
    row. Evaluating ``F`` at a stage value is the same as evaluating X at the stage value
    retracted onto the sphere, so every stage is retracted, ``x <- (x + dx) / |x + dx|``;
    for ``rk4``::

        k1 = X(x)
        k2 = X(R(x + dt/2 k1)),  k3 = X(R(x + dt/2 k2)),  k4 = X(R(x + dt k3))
        x  <- R(x + dt/6 (k1 + 2 k2 + 2 k3 + k4))

    Why this retraction and not the exponential map ``exp_x(v) = cos|v| x + sin|v| v/|v|``:
    the sphere (product of spheres) is invariant under the flow of ``F`` because ``F`` is
    tangent on it, so this is the *standard projection method* (Hairer, Lubich, Wanner,
    Geometric Numerical Integration, IV.4): the step before projection is an order-p
    approximation of a flow that stays on the sphere, and the projection moves it by no
    more than that error. The method keeps order p, needs no tangent-space bookkeeping
    (stage slopes live in different tangent spaces, which the projection absorbs), works
    in any dimension d, and keeps ``|x_i| = 1`` to round-off. The exponential map would
    change nothing at these orders (the two retractions agree to O(|v|^3)).

    ``dopri5`` (Dormand--Prince 5(4)) and ``bs32`` (Bogacki--Shampine 3(2)) are embedded
    pairs with the FSAL property (scipy's RK45 and RK23 tableaus), error controlled as in
    ``solve_ivp``: the size of the estimate ``err`` (its tangential part at the new point)
    is the RMS over all coordinates of ``err / (atol + rtol max(|x|, |x_new|))``; a step
    of size <= 1 is accepted and the next is ``h min(10, 0.9 size^(-1/(q+1)))`` (q the
    estimate's order; no growth right after a rejection), a larger one is retried with
    ``h max(0.2, 0.9 size^(-1/(q+1)))``. The first trial step is the automatic step below,
    taken afresh at every output time (so a restart from a snapshot takes the steps of the
    uninterrupted run); a fixed ``dt`` is refused (:class:`ParticleSettingError` naming
    ``solver.dt``); a step below 10 ulp(t) raises :class:`StalledRunError`.
``euler``
    The authors' update, bit for bit (github.com/borjanG/2023-transformers-rotf,
    ``sphere.py``): ``x <- (x + dt A(x)) / |x + dt A(x)|`` with ``A`` the attention average
    *before* the projection (``field(x, x, w, project=False)``; a backend without it is
    refused). First order: ``x + dt A = (1 + dt <x, A>) x + dt P_x A``, the projected Euler
    step with the per-particle step ``dt / (1 + dt <x, A>)``.
``euler_tangent``
    Explicit Euler with the projected field, ``x <- (x + dt X(x)) / |x + dt X(x)|``.

Time step (``solver.dt``) of ``rk4`` and the Euler schemes: a fixed number, or ``"auto"``
(also the first trial step of the error-controlled ones)::

    dt = min(dt_max, rate_cfl / max(sigma_max, lambda_loc), cfl * ell / v_max)

* ``sigma_max`` (:meth:`AttentionModel.rate_bound`) is the interaction rate of the model
  (the largest linear growth rate about the uniform state, or its estimate for general
  ``Q, K, V``): the same bound the PDE solver uses, it keeps ``dt`` a fixed fraction of
  the time scale of cluster formation;
* ``lambda_loc = max_i |A(x_i)|`` (:meth:`ParticleSystem.local_rate`, where the backend
  takes ``project=False``) is the contraction rate of a collapsed cluster (USA with
  ``V = I``: ``m e^beta`` for mass m), which ``sigma_max`` underestimates by orders of
  magnitude at large beta;
* the "CFL" term: no particle moves by more than ``cfl`` times the interaction length
  ``ell = min(1, 1 / sqrt(||beta Q^T K||_2))`` (the angular width of the kernel
  ``exp(beta <x, y>)``) in one step; ``v_max = max_i |X(x_i)|``.

Speeds are measured without squares (no overflow); a step that is not finite and > 0, or
that does not move ``t``, raises :class:`StalledRunError` (non-finite speeds:
:class:`NonFiniteStateError`), and so does a run whose predicted step count exceeds
``max_steps``.

Steps never pass an output time: the step before ``t_target`` is shortened to land on it
exactly (a fixed step is otherwise kept; a remainder within ``1e-9 dt`` of a step is
absorbed into it, so ``t_end = k dt`` takes exactly k steps).

Weights: ``weights (n,)`` nonnegative with a positive sum; :meth:`ParticleState.create`
normalizes them to sum 1 (the PDE normalizes its mass to 1 too, which matters for USA,
whose field scales with the total mass).

MPI: the integrator touches only whole arrays, never the communicator; a distributed
backend splits the targets of each ``field(x, x, w)`` call and returns the full result.

Noise (``model.noise = sigma > 0``): Brownian tokens ``dx_i = X[mu_n](t, x_i) dt + sigma dB_i``
with ``B_i`` independent Brownian motions on S^{d-1} (generator ``(sigma^2/2)`` Laplace--Beltrami).
A step of a fixed-step integrator becomes the Strang splitting

    x <- B(h/2) A(dt) B(h/2) x,       h = sigma^2 dt,

``A(dt)`` the deterministic step of the integrator (all particles together, the field at
the post-noise points) and ``B(s)`` an independent Brownian step of every token
(:func:`brownian_step`): ``exp_x(c(s) sqrt(s) P_x g)``, ``g ~ N(0, I_d)`` (so ``P_x g`` is a
standard normal of the tangent plane), with ``c(s) = 1 - (d-2) s / 12`` (at least 1/2). On
S^1 (``c = 1``) it is exact in law (the wrapped normal angle); on S^{d-1}, d >= 3, the
correction ``c`` makes ``E r^2`` of the geodesic distance exact to ``O(s^3)``
(``(d-1) s - (d-1)(d-2) s^2 / 6``), so the step is of weak order 2 (the plain geodesic random
walk, ``c = 1``, is of weak order 1). The Itô drift ``-(d-1) sigma^2/2 x`` of the ambient
equation is not added: the step is on the sphere, and its mean ``x E cos r = x (1 - (d-1) s / 2
+ ...)`` is that drift (adding it to a renormalized step would count it twice). Weak order:
2 with ``rk4`` (Strang splitting of two weak-order-2 parts), 1 with ``euler`` and
``euler_tangent``; docs/particles.md has the measurements. The error-controlled ``dopri5`` and
``bs32`` have no error estimate for a random path and are refused (naming
``solver.integrator``). The automatic step also keeps the Brownian displacement of a step,
``sqrt((d-1) sigma^2 dt)`` in RMS, below ``cfl`` kernel widths:
``dt <= (cfl ell)^2 / ((d-1) sigma^2)``.

The normals of step k come from ``numpy.random.default_rng([seed, NOISE_STREAM, k])``
(:func:`noise_normals`), all particles at once: every MPI rank (which holds all positions)
draws the same ones, so the path does not depend on the number of ranks, and a run
restarted at step k (the step count is in every snapshot) continues the same path with no
generator state to save.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..dynamics.velocity import Velocity
from ..fields.attention import AttentionField
from ..pde.health import StepBudget
from ..pde.timestepping import NonFiniteStateError, StalledRunError, Stepper

__all__ = [
    "INTEGRATORS",
    "ParticleIntegrator",
    "ParticleSettingError",
    "ParticleState",
    "ParticleSystem",
    "brownian_scale",
    "brownian_step",
    "evolve",
    "max_row_norm",
    "noise_normals",
    "register_integrator",
    "retract",
]


#: What to change when the automatic step cannot advance (the field is too large).
_FIX = "for USA at large beta use model.shift = true (a rescaling of time), SA, or a smaller beta"


def retract(y: np.ndarray) -> np.ndarray:
    """Every row of ``y`` divided by its norm: the projection retraction onto the sphere."""
    return y / np.linalg.norm(y, axis=-1, keepdims=True)


#: The stream tag of the noise: step k of a run with seed s draws from
#: ``default_rng([s, NOISE_STREAM, k])`` (the initial sample draws from ``default_rng(s)``).
NOISE_STREAM = 0x4E015E


def brownian_scale(s: float, d: int) -> float:
    """The factor ``c(s) = max(1/2, 1 - (d - 2) s / 12)`` of the geodesic distance of
    :func:`brownian_step` on S^{d-1} (1 on the circle): with it ``E r^2 = (d-1) s c^2`` is the
    exact ``(d-1) s - (d-1)(d-2) s^2 / 6`` to ``O(s^3)``."""
    return max(0.5, 1.0 - (d - 2) * s / 12.0)


def brownian_step(x: np.ndarray, s: float, g: np.ndarray) -> np.ndarray:
    """One Brownian step of time ``s`` (generator ``Lap / 2``, so ``s = sigma^2 dt``) of every
    row of ``x (n, d)`` (unit rows), from the standard normals ``g (n, d)``.

    The point ``exp_x(a P_x g) = cos(r) x + sin(r) P_x g / |P_x g|`` with ``a = c(s) sqrt(s)``
    (:func:`brownian_scale`) and ``r = a |P_x g|``: an isotropic step whose geodesic length
    ``r`` is ``a`` times a chi variable with d - 1 degrees of freedom. Exact in law on the
    circle, of weak order 2 on S^{d-1} (docs/particles.md), on the sphere to round-off.
    """
    v = g - np.einsum("ij,ij->i", g, x)[:, None] * x
    a = brownian_scale(s, x.shape[1]) * math.sqrt(s)
    size = np.sqrt(np.einsum("ij,ij->i", v, v))  # |P_x g|
    r = a * size
    coeff = np.divide(np.sin(r), size, out=np.full_like(r, a), where=size > 0)  # (the limit a at P_x g = 0)
    y = np.cos(r)[:, None] * x
    y += coeff[:, None] * v
    y /= np.sqrt(np.einsum("ij,ij->i", y, y))[:, None]  # |y| = 1 + O(eps): the rounding removed
    return y


def _seed_words(seed) -> list[int]:
    """A seed as a list of integers >= 0: an int, or a sequence of them (prompt b of a batch
    with seed S has the seed ``[S, b]``)."""
    words = [seed] if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else list(seed)
    if not words or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 0 for w in words):
        raise ValueError(f"seed must be an integer >= 0 or a sequence of them, got {seed!r}")
    return [int(w) for w in words]


def noise_normals(seed, step: int, n: int, d: int) -> np.ndarray:
    """The standard normals ``(n, 2, d)`` of step ``step`` (the two Brownian half steps of
    every particle, particle i in row i, so its draws do not depend on n either), from
    ``numpy.random.default_rng([seed, NOISE_STREAM, step])`` (``seed`` an int, or a sequence
    of ints spliced in: ``[S, b, NOISE_STREAM, step]`` for prompt b of a batch): a function of
    the seed and the step index alone."""
    return np.random.default_rng([*_seed_words(seed), NOISE_STREAM, int(step)]).standard_normal((n, 2, d))


@dataclass(frozen=True)
class ParticleIntegrator:
    """A one-step method on the product of spheres.

    Fixed-step methods: ``step(rhs, x, dt, v0) -> x_new``. ``rhs(x) -> (n, d)`` is the
    field at the positions ``x`` (rows on the sphere); ``v0`` is ``rhs(x)``, already
    computed by the caller to choose ``dt`` (for an ``unprojected`` method: the attention
    average ``field(x, x, w, project=False)`` at ``x`` instead).

    Error-controlled (embedded) methods, ``error_order`` set: ``step(rhs, x, dt, v0) ->
    (x_new, v_new, err)`` with ``v_new = rhs(x_new)`` (first same as last: the next step's
    ``v0``) and ``err (n, d)`` the difference of the two embedded solutions (before the
    retraction); the caller measures it and accepts or retries (:class:`ParticleSystem`).
    """

    name: str
    order: int
    step: Callable
    #: order of the embedded error estimate (``None``: a fixed-step method).
    error_order: int | None = None
    #: steps with the attention average before the projection ``P_x`` (the authors' Euler).
    unprojected: bool = False

    @property
    def adaptive(self) -> bool:
        """Whether the method controls its step by an embedded error estimate."""
        return self.error_order is not None


#: name -> :class:`ParticleIntegrator`.
INTEGRATORS: dict[str, ParticleIntegrator] = {}


def register_integrator(name: str, order: int, error_order: int | None = None, unprojected: bool = False):
    """Register ``fn`` (see :class:`ParticleIntegrator`) as the integrator ``name`` of order ``order``."""

    def deco(fn):
        INTEGRATORS[name] = ParticleIntegrator(name, order, fn, error_order, unprojected)
        return fn

    return deco


def _combine(coeffs, ks):
    """``sum_j coeffs[j] ks[j]`` over the nonzero coefficients."""
    out = None
    for c, k in zip(coeffs, ks):
        if c:
            out = c * k if out is None else out + c * k
    return out


def _embedded(a, b, e):
    """The step of an explicit embedded Runge--Kutta pair with the FSAL property, applied to
    the radially extended field: stage matrix ``a`` (rows 1..s-1), weights ``b`` of the
    propagated solution, error weights ``e`` (s + 1 of them: the last one multiplies the
    slope at the new point). Every stage value is retracted before the field is evaluated
    there, and so is the result."""

    def step(rhs, x, dt, v0):
        ks = [v0]
        for row in a:
            ks.append(rhs(retract(x + dt * _combine(row, ks))))
        x_new = retract(x + dt * _combine(b, ks))
        ks.append(rhs(x_new))
        return x_new, ks[-1], dt * _combine(e, ks)

    return step


@register_integrator("rk4", order=4)
def _rk4(rhs, x, dt, v0):
    k1 = v0
    k2 = rhs(retract(x + (0.5 * dt) * k1))
    k3 = rhs(retract(x + (0.5 * dt) * k2))
    k4 = rhs(retract(x + dt * k3))
    return retract(x + (dt / 6.0) * (k1 + 2.0 * (k2 + k3) + k4))


@register_integrator("euler", order=1, unprojected=True)
def _euler(rhs, x, dt, a0):
    # the authors' update: z + dt * (attention average), then every row divided by its norm
    return retract(x + dt * a0)


@register_integrator("euler_tangent", order=1)
def _euler_tangent(rhs, x, dt, v0):
    return retract(x + dt * v0)


#: Dormand--Prince 5(4) (the tableau of scipy's RK45): 7 stages, the 7th at the new point.
_DOPRI5 = _embedded(
    a=((1 / 5,),
       (3 / 40, 9 / 40),
       (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656)),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    e=(-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40),
)
#: Bogacki--Shampine 3(2) (scipy's RK23): 4 stages, the 4th at the new point.
_BS32 = _embedded(
    a=((1 / 2,), (0.0, 3 / 4)),
    b=(2 / 9, 1 / 3, 4 / 9),
    e=(5 / 72, -1 / 12, -1 / 9, 1 / 8),
)
register_integrator("dopri5", order=5, error_order=4)(_DOPRI5)
register_integrator("bs32", order=3, error_order=2)(_BS32)

#: Step-size controller of the error-controlled integrators (those of scipy's solve_ivp):
#: the step is multiplied by ``SAFETY * err^(-1 / (error_order + 1))``, within
#: ``[MIN_FACTOR, MAX_FACTOR]`` (no growth right after a rejected step).
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0


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


def max_row_norm(v: np.ndarray) -> float:
    """``max_i |v_i|`` without squaring (no overflow for entries up to the largest double;
    ``inf`` for an infinite entry, ``nan`` for a nan)."""
    if v.size == 0:
        return 0.0
    with np.errstate(over="ignore"):
        return float(np.max(np.hypot.reduce(v, axis=1)))


def _takes_project(field) -> bool:
    """Whether ``field(x, y, w, project=False)`` is accepted (a wrapper's inner field too; a
    velocity's head backends, all of them)."""
    velocity = getattr(field, "velocity", None)
    if isinstance(velocity, Velocity):
        if velocity.model.random_heads is not None:
            return True  # the package's backends (make_field) all take it
        return all(_takes_project(b) for b in velocity.fixed_backends())
    seen = 0
    while field is not None and seen < 8:
        try:
            params = inspect.signature(field.__call__).parameters
        except (TypeError, ValueError):
            return False
        if "project" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return False
        inner = getattr(field, "field", None)
        field = inner if hasattr(inner, "model") and callable(inner) else None
        seen += 1
    return True


class ParticleSettingError(ValueError):
    """Settings of a :class:`ParticleSystem` that cannot work together; ``key`` is the case
    key to change (``solver.dt``, ``solver.backend``, ...), ``reason`` says why."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


class ParticleSystem(Stepper):
    """Evolve a :class:`ParticleState` with an attention-field backend.

    Parameters
    ----------
    field : AttentionField
        Backend, called as ``field(x, x, w)`` (and ``field(x, x, w, project=False)`` for the
        authors' Euler and for the local rate of the automatic step, where it takes it);
        its ``model`` sets the automatic step.
    integrator : str or None
        Key of :data:`INTEGRATORS`: ``"dopri5"``, ``"bs32"`` (error controlled), ``"rk4"``,
        ``"euler"`` (the authors' scheme), ``"euler_tangent"``. ``None``: ``"dopri5"`` when
        ``dt`` is ``"auto"``, ``"rk4"`` for a fixed ``dt`` (a case file always names one:
        ``solver.integrator``, default ``"dopri5"``).
    dt : float or "auto"
        Fixed step, or the automatic step of the module docstring. The error-controlled
        integrators choose their steps themselves and refuse a number.
    cfl, rate_cfl, dt_max : float
        Bounds of the automatic step (``dt_max`` also caps a fixed step and the steps of the
        error-controlled integrators).
    rtol, atol : float
        Tolerances of the error-controlled integrators (solve_ivp's convention).
    max_steps, t_end : int or None, float or None
        The progress guarantee of :func:`meanfield.run.drive`
        (:class:`~meanfield.pde.health.StepBudget`): stop with :class:`StalledRunError` once
        the steps done plus those predicted to ``t_end`` (default: the furthest finite
        ``t_limit`` of a step) exceed ``max_steps`` (``None``: no limit; the CLI passes
        ``None``, its time loop keeps the budget).
    noise : float
        ``sigma >= 0``: Brownian tokens ``dx = X dt + sigma dB`` (the Strang splitting of the
        module docstring; needs a fixed-step integrator, ``None`` then means ``"rk4"``).
    seed : int
        Seed of the noise (``particles.seed``): step k draws :func:`noise_normals` ``(seed, k)``.
    """

    def __init__(self, field: AttentionField, integrator: str | None = None, dt="auto", cfl: float = 0.4,
                 rate_cfl: float = 0.1, dt_max: float = math.inf, rtol: float = 1e-8, atol: float = 1e-10,
                 max_steps: int | None = 1_000_000, t_end: float | None = None, noise: float = 0.0, seed: int = 0):
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (math.isfinite(noise) and noise >= 0):
            raise ParticleSettingError("model.noise", f"must be a finite number >= 0, got {noise!r}")
        _seed_words(seed)  # an int >= 0 or a sequence of them (a batch's prompt: [S, b])
        if integrator is None:
            integrator = "dopri5" if dt == "auto" and not noise else "rk4"
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
        for name, value in (("rtol", rtol), ("atol", atol)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if max_steps is not None and not (int(max_steps) == max_steps and max_steps >= 1):
            raise ValueError(f"max_steps must be an integer >= 1 or None, got {max_steps!r}")
        # the velocity X[mu](t, .): a Velocity (or its MPI split), or one backend taken as one head
        self.field = field if getattr(field, "time_aware", False) else Velocity.from_backend(field)
        self.velocity_field = self.field.velocity  # the time scales and switch times
        self.model = field.model
        self.integrator = INTEGRATORS[integrator]
        if self.integrator.adaptive and noise > 0:
            raise ParticleSettingError(
                "solver.integrator", f"\"{integrator}\" controls its steps by an error estimate, which a random path "
                f"does not have (model.noise = {noise:g} > 0): take a fixed-step integrator, solver.integrator = "
                f"\"rk4\" (weak order 2 with the noise; solver.dt a number or \"auto\"), or \"euler\" / "
                f"\"euler_tangent\" (weak order 1)")
        if self.integrator.adaptive and dt != "auto":
            raise ParticleSettingError(
                "solver.dt", f"{dt:g} is a fixed step, but solver.integrator = \"{integrator}\" chooses its own "
                f"steps from solver.rtol and solver.atol: set solver.dt = \"auto\" (solver.dt_max caps the steps) "
                f"or take a fixed-step integrator (\"rk4\", \"euler\", \"euler_tangent\")")
        #: whether the backend returns the attention average before ``P_x`` (``project=False``)
        self.takes_project = _takes_project(field)
        if self.integrator.unprojected and not self.takes_project:
            raise ParticleSettingError(
                "solver.backend", f"the authors' Euler (solver.integrator = \"{integrator}\") steps with the "
                f"attention average before the projection, which needs a backend taking project=False "
                f"(e.g. \"direct\"); backend {getattr(field, 'name', type(field).__name__)!r} does not; "
                f"or use solver.integrator = \"euler_tangent\"")
        self.dt = dt
        self.cfl = float(cfl)
        self.rate_cfl = float(rate_cfl)
        self.dt_max = float(dt_max)
        self.rtol, self.atol = float(rtol), float(atol)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.t_end = None if t_end is None else float(t_end)
        #: sigma of the Brownian noise (0: none) and the seed of its normals
        self.noise = float(noise)
        self.seed = int(seed) if isinstance(seed, (int, np.integer)) else tuple(_seed_words(seed))
        self._budget = None  # the progress guarantee of meanfield.run.drive, for runs driven from Python
        self._t = 0.0  # the start of the current step: the terms acting during it
        self.rate, self.length = self.time_scales(0.0)
        #: steps rejected by the error control (retried with a smaller step)
        self.rejected = 0
        self._h_next = None  # the controller's next trial step (None: from the automatic rule)
        self._fsal = None  # (x, weights, v, a, segment) of the last accepted step's end point

    @property
    def weak_order(self) -> int:
        """The weak order of the noisy scheme: 2 for ``rk4`` (Strang splitting with the
        weak-order-2 Brownian step), 1 for the Euler schemes."""
        return min(2, self.integrator.order)

    def describe(self) -> str:
        """The integrator and its step settings, in words."""
        name = self.integrator.name
        if self.integrator.adaptive:
            cap = f", dt_max={self.dt_max:g}" if math.isfinite(self.dt_max) else ""
            return f"{name} (error controlled: rtol={self.rtol:g}, atol={self.atol:g}{cap})"
        step = "automatic step" if self.dt == "auto" else f"dt={self.dt:g}"
        if self.noise > 0:
            return (f"{name}, {step}, noise sigma={self.noise:g} (Strang splitting with Brownian steps, weak order "
                    f"{self.weak_order}, seed {self.seed})")
        return f"{name}, {step}"

    def time_scales(self, t: float) -> tuple[float, float]:
        """``(rate, length)`` of the terms acting at ``t``: the rate bound over the modes up to
        ``~4 sqrt(2 a)`` (they cover the fastest-growing one, ``k ~ sqrt(2 beta)``; ``a`` the
        largest ``||beta Q^T K||``) and the length scale of the automatic CFL rule."""
        velocity = self.velocity_field
        a = velocity.interaction_norm(t)
        rate = velocity.rate_bound(t, max_mode=max(64, int(4.0 * math.sqrt(2.0 * a)) + 1))
        return rate, velocity.length_scale(t)

    def velocity(self, state: ParticleState) -> np.ndarray:
        """The field X[mu_n](t) at the particles, ``(n, d)``."""
        return self.field(state.x, state.x, state.weights, t=state.t)

    def _evaluate(self, x: np.ndarray, w: np.ndarray, average: bool):
        """``(v, a)``: the field at ``x`` and, when ``average`` and the backend can, the
        attention average before ``P_x`` (else ``None``)."""
        if average and self.takes_project:
            try:
                a = self.field(x, x, w, project=False, t=self._t)
            except TypeError as exc:
                if "project" not in str(exc):
                    raise
                raise ParticleSettingError("solver.backend", f"the backend does not take project=False ({exc}); "
                                           "use \"direct\"") from None
            v = a - np.einsum("ij,ij->i", a, x)[:, None] * x
            return v, a
        return self.field(x, x, w, t=self._t), None

    def local_rate(self, a: np.ndarray) -> float:
        """The rate of the state ``max_i |a_i|``, ``a`` the attention average before ``P_x``.

        For USA with ``V = I`` this is the contraction rate of a cluster collapsed to a
        point (mass m: ``m e^beta``, or ``m`` with ``model.shift``); ``|a_i| <= ||V||`` for SA.
        """
        return max_row_norm(a)

    def auto_dt(self, v: np.ndarray, a: np.ndarray | None = None) -> float:
        """The automatic step for the velocities ``v (n, d)`` (without ``dt_max``); with the
        attention averages ``a`` also bounded by the local rate (:meth:`local_rate`).

        Overflow safe (no squares of speeds); a step that is not a finite number > 0
        raises :class:`StalledRunError` (or :class:`NonFiniteStateError` for non-finite
        speeds) with the reason."""
        return self._auto_rule(v, a)[0]

    def _auto_rule(self, v, a):
        """``(dt, what sets it)``: ``"rate"`` (``rate_cfl`` over the larger of the rate bound
        and the local rate), ``"cfl"`` or, with noise, ``"noise"`` (the RMS Brownian
        displacement ``sqrt((d-1) sigma^2 dt)`` of a step at most ``cfl`` kernel widths)."""
        vmax = max_row_norm(v)
        local = self.local_rate(a) if a is not None else 0.0
        rate = max(self.rate, local)
        if not (math.isfinite(vmax) and math.isfinite(rate)):
            raise NonFiniteStateError(f"the particle speeds are not finite (max |v| = {vmax:.3g}, max |a| = "
                                      f"{local:.3g}, rate bound {self.rate:.3g}): the field overflowed; {_FIX}")
        dt, what = self.rate_cfl / rate, "rate"
        if vmax > 0 and self.cfl * self.length / vmax < dt:
            dt, what = self.cfl * self.length / vmax, "cfl"
        if self.noise > 0:
            diffusive = (self.cfl * self.length) ** 2 / ((v.shape[1] - 1) * self.noise ** 2)
            if diffusive < dt:
                dt, what = diffusive, "noise"
        if not (dt > 0 and math.isfinite(dt)):
            raise StalledRunError(f"the automatic step is {dt:.3g} (speeds up to {vmax:.3g}, rate {rate:.3g}): "
                                  f"the run cannot advance; {_FIX}")
        return dt, what

    def proposed_step(self, state: ParticleState) -> tuple[float, str]:
        """``(dt, what sets it)`` of the next step from ``state`` (before it is shortened
        to land on an output time): ``"dt"`` (a fixed ``solver.dt``), ``"dt_max"``,
        ``"rate"``, ``"cfl"`` or ``"noise"`` (the automatic rule; for the error-controlled integrators
        the first trial step, which the error control then adapts)."""
        if self.dt != "auto":
            return (self.dt, "dt") if self.dt <= self.dt_max else (self.dt_max, "dt_max")
        self._t = state.t
        self.rate, self.length = self.time_scales(state.t)
        v, a = self._evaluate(state.x, state.weights, True)
        dt, what = self._auto_rule(v, a)
        return (dt, what) if dt <= self.dt_max else (self.dt_max, "dt_max")

    @staticmethod
    def _check_step(state, dt: float) -> None:
        """Refuse a step that is not finite and > 0 or that would not move ``state.t``."""
        if not (dt > 0 and math.isfinite(dt)) or state.t + dt == state.t:
            raise StalledRunError(f"t={state.t:.6g}: the step {dt:.3g} does not advance the time; {_FIX}")

    def _finish(self, state, dt: float, t_limit: float) -> None:
        """End the step; with ``max_steps``, the step budget towards ``t_end`` (or the
        furthest finite ``t_limit`` seen) is checked (:class:`~meanfield.pde.health.StepBudget`)."""
        self.finish_step(state, dt, t_limit)
        if self.max_steps is None:
            return
        target = self.t_end if self.t_end is not None else t_limit
        if not math.isfinite(target):
            return
        if self._budget is None:
            self._budget = StepBudget(target, self.max_steps, hint=_FIX)
        self._budget.t_end = max(self._budget.t_end, target)
        self._budget.update(state, dt, landed=state.t == t_limit)

    def step(self, state: ParticleState, t_limit: float = math.inf) -> float:
        """Advance ``state`` in place by one step not passing ``t_limit``; returns the step."""
        w = state.weights
        if state.x.shape[1] != self.model.d:
            raise ValueError(f"particles live in R^{state.x.shape[1]} but the model is for d = {self.model.d}")
        t_limit = min(t_limit, self.velocity_field.next_switch(state.t))
        self._t = state.t
        self.rate, self.length = self.time_scales(state.t)
        integ = self.integrator
        average = integ.unprojected or self.dt == "auto" or integ.adaptive
        last = {}

        def rhs(x):
            v, a = self._evaluate(x, w, average)
            last["x"], last["a"] = x, a
            return v

        fsal = self._fsal
        # (the end point's field is the next step's first stage only with the same terms: not
        # after a switch time of the model)
        segment = self.velocity_field.model.segment(state.t)
        if fsal is not None and fsal[0] is state.x and fsal[1] is w and fsal[4] == segment:
            v0, a0 = fsal[2], fsal[3]
        elif self.noise > 0 and self.dt != "auto":
            v0 = a0 = None  # the field is needed only after the first Brownian half step
        else:
            v0, a0 = self._evaluate(state.x, w, average)
        self._fsal = None
        if integ.adaptive:
            return self._adaptive_step(state, t_limit, rhs, last, v0, a0, segment)
        dt = self.auto_dt(v0, a0) if self.dt == "auto" else self.dt
        dt = min(dt, self.dt_max)
        dt = self.clip_step(state.t, dt, t_limit)
        self._check_step(state, dt)
        if self.noise > 0:
            x = self._noisy_step(state, dt, rhs)
        else:
            x = integ.step(rhs, state.x, dt, a0 if integ.unprojected else v0)
        if not np.all(np.isfinite(x)):
            raise NonFiniteStateError(f"t={state.t + dt:.6g}: a particle position became non-finite")
        state.x = x
        self._finish(state, dt, t_limit)
        return dt

    def _noisy_step(self, state, dt: float, rhs) -> np.ndarray:
        """``B(h/2) A(dt) B(h/2) x`` (``h = sigma^2 dt``): a Brownian half step, the
        integrator's step from there, a Brownian half step, with the normals of step
        ``state.steps`` (:func:`noise_normals`)."""
        integ = self.integrator
        g = noise_normals(self.seed, state.steps, state.n, state.d)
        half = 0.5 * self.noise ** 2 * dt
        x = brownian_step(state.x, half, np.ascontiguousarray(g[:, 0]))
        v, a = self._evaluate(x, state.weights, integ.unprojected)
        x = integ.step(rhs, x, dt, a if integ.unprojected else v)
        return brownian_step(x, half, np.ascontiguousarray(g[:, 1]))

    def error_norm(self, x: np.ndarray, x_new: np.ndarray, err: np.ndarray) -> float:
        """solve_ivp's error measure: the RMS over all coordinates of
        ``err / (atol + rtol max(|x|, |x_new|))``, with ``err`` the tangential part at
        ``x_new`` of the embedded difference (what the retraction leaves of it)."""
        with np.errstate(over="ignore", invalid="ignore"):
            err = err - np.einsum("ij,ij->i", err, x_new)[:, None] * x_new
            scale = self.atol + self.rtol * np.maximum(np.abs(x), np.abs(x_new))
            return float(np.sqrt(np.mean(np.square(err / scale))))

    def _adaptive_step(self, state, t_limit, rhs, last, v0, a0, segment) -> float:
        integ = self.integrator
        exponent = -1.0 / (integ.error_order + 1)
        h_trial = self._h_next if self._h_next is not None else self.auto_dt(v0, a0)
        h_trial = min(h_trial, self.dt_max)
        floor = 10.0 * float(np.spacing(abs(state.t)))  # solve_ivp's smallest step
        rejected, finite = False, True
        while True:
            h = self.clip_step(state.t, h_trial, t_limit)
            if not h > floor and h != t_limit - state.t:
                if not finite:
                    raise NonFiniteStateError(
                        f"t={state.t:.6g}: the step's stages were non-finite at every step size down to {floor:.3g}")
                raise StalledRunError(
                    f"t={state.t:.6g}: the error control needs steps below {floor:.3g} (step underflow at "
                    f"solver.rtol = {self.rtol:g}, solver.atol = {self.atol:g}); raise solver.rtol/solver.atol "
                    f"(they must stay well above the round-off, 1e-16 relative)")
            self._check_step(state, h)
            with np.errstate(over="ignore", invalid="ignore"):  # a non-finite trial is rejected below
                x_new, v_new, err = integ.step(rhs, state.x, h, v0)
                norm = self.error_norm(state.x, x_new, err)
            finite = math.isfinite(norm) and bool(np.all(np.isfinite(x_new)))
            if finite and norm <= 1.0:
                break
            # rejected: retry with a smaller step
            self.rejected += 1
            rejected = True
            factor = MIN_FACTOR if not finite else max(MIN_FACTOR, SAFETY * norm ** exponent)
            h_trial = h * factor
        a_new = last.get("a") if last.get("x") is x_new else None
        ideal = math.inf if norm == 0.0 else SAFETY * norm ** exponent
        factor = min(MAX_FACTOR, ideal)
        if rejected:
            factor = min(1.0, factor)
        h_next = h * factor
        landed = h == t_limit - state.t
        state.x = x_new
        self._finish(state, h, t_limit)
        self._fsal = (x_new, state.weights, v_new, a_new, segment)
        # Every output time starts the controller afresh from the automatic rule, so that a
        # run restarted from a snapshot takes the same steps as the uninterrupted run.
        self._h_next = None if landed else h_next
        return h



def evolve(field: AttentionField, points, t_end: float, weights=None, *, integrator: str | None = None, dt="auto",
           cfl: float = 0.4, rate_cfl: float = 0.1, dt_max: float = math.inf, rtol: float = 1e-8,
           atol: float = 1e-10, max_steps: int | None = 1_000_000, t0: float = 0.0, callback=None,
           noise: float = 0.0, seed: int = 0) -> ParticleState:
    """Evolve particles from ``points (n, d)`` (weights default ``1/n``) to ``t_end``.

    ``integrator=None``: ``"dopri5"`` with ``dt="auto"``, ``"rk4"`` with a fixed ``dt`` or
    with ``noise > 0`` (Brownian tokens of strength ``noise``, normals seeded by ``seed``;
    see :class:`ParticleSystem`). ``callback(state, dt)`` is called after every step
    (``state`` is updated in place; copy ``state.x`` to keep it). Returns the final
    :class:`ParticleState`.

    >>> import numpy as np, meanfield as mf
    >>> from meanfield.particles.system import evolve
    >>> field = mf.DirectField(mf.AttentionModel(d=2, beta=1.0))
    >>> theta = np.array([0.0, 1.0])
    >>> st = evolve(field, np.c_[np.cos(theta), np.sin(theta)], 5.0, dt=0.01)
    >>> bool(np.dot(st.x[0], st.x[1]) > np.cos(1.0))   # the two tokens attract
    True
    """
    state = ParticleState.create(points, weights, t=t0)
    system = ParticleSystem(field, integrator=integrator, dt=dt, cfl=cfl, rate_cfl=rate_cfl, dt_max=dt_max,
                            rtol=rtol, atol=atol, max_steps=max_steps, t_end=t_end, noise=noise, seed=seed)
    return system.advance(state, float(t_end), callback)

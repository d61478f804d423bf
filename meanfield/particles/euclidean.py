"""Euclidean tokens: self-attention dynamics in R^d without layer normalization.

The model of Geshkovski, Letrouit, Polyanskiy, Rigollet, *The emergence of clusters in
self-attention dynamics* (NeurIPS 2023, arXiv:2305.05465): n tokens ``x_i`` in R^d (any
``d >= 1``, no projection onto a sphere) move with the softmax self-attention average

.. math::

    \\dot x_i = \\sum_j P_{ij}(t) V x_j, \\qquad
    P_{ij} = \\frac{e^{\\beta \\langle Q x_i, K x_j\\rangle}}{\\sum_k e^{\\beta \\langle Q x_i, K x_k\\rangle}}.

``beta`` may be folded into ``Q`` (the paper has none); it is kept, ``beta >= 0``, for the
package's convention (the sign of the interaction goes into ``Q``).

**Rescaling.** The tokens grow like ``e^{t V}``; the paper studies ``z_i(t) = e^{-tV} x_i(t)``.
Since ``e^{-tV}`` commutes with ``V``,

.. math::

    \\dot z_i = -V z_i + e^{-tV} \\sum_j P_{ij} V e^{tV} z_j
              = \\sum_j P_{ij}(t) V (z_j - z_i)
              = V\\Big(\\sum_j P_{ij}(t) z_j - z_i\\Big),

(``sum_j P_ij = 1``) with the attention written in the rescaled tokens:
``P_ij(t) = softmax_j beta <Q e^{tV} z_i, K e^{tV} z_j>``, i.e. the interaction
``A(t) = beta e^{tV^T} Q^T K e^{tV}``. :class:`EuclideanSystem` integrates this rescaled
ODE directly (``frame="z"``, bounded tokens, the default) or the original one
(``frame="x"``), and returns both ``x(t)`` and ``z(t)``; the tests check the two agree to
the integrator tolerance.

**The kernel.** The sums ``sum_j P_ij V y_j`` are those of the package's single
implementation of the attention field, :class:`~meanfield.fields.attention.DirectField`
with ``project=False`` (blocked over targets, each logit row shifted by its maximum, so
nothing overflows while the logits are finite). It does not assume unit vectors: it reads
the logits ``<x, A y>`` and the values ``V y`` of arbitrary points. The time-dependent
interaction of the rescaled frame is passed as the query matrix of a fresh
:class:`~meanfield.fields.attention.AttentionModel` per evaluation (``Q' = A(t)^T``,
``K' = I``, ``beta' = 1``: d x d matrices, cheap). ``AttentionModel`` requires ``d >= 2``;
``d = 1`` is embedded in R^2 as ``(x, 0)`` with ``Q, K, V`` padded by zeros (the logits and
values are those of the line exactly). The attention matrix itself
(:func:`attention_matrix`, for the Boolean limit) is formed explicitly, ``n x n``.

**What is proved** (the paper; see docs/euclidean.md for the statements and their
conditions): ``V = I_d``, ``Q^T K`` positive definite: every ``z_i(t)`` converges, to a point
of the boundary of a convex polytope determined by the initial tokens, generically one of
its vertices (the "leaders"); ``d = 1``, ``V > 0``, ``QK > 0``, distinct tokens: ``P(t)``
converges to a Boolean matrix of rank at most 2; ``V`` with a simple positive top
eigenvalue (and ``<Q phi_1, K phi_1> > 0``): the tokens approach at most three parallel
hyperplanes, level sets of the top spectral coordinate (:func:`top_coordinate`).

Helpers: :func:`leaders` (the vertices of the convex hull; min and max in d = 1),
:func:`hull_measure` (area / volume / length of the hull, non-increasing for ``V = I``),
:func:`nearest_boolean` (the distance of ``P`` to the nearest 0/1 matrix and its rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg
from scipy.integrate import solve_ivp

from ..fields.attention import AttentionModel, DirectField

__all__ = [
    "EuclideanModel",
    "EuclideanSystem",
    "EuclideanTrajectory",
    "INTEGRATORS",
    "attention_matrix",
    "evolve_euclidean",
    "hull_measure",
    "leaders",
    "nearest_boolean",
    "top_coordinate",
]

#: Integrators: ``dopri5`` (Dormand--Prince 5(4), scipy's RK45) and ``dop853`` (order 8) under
#: :func:`scipy.integrate.solve_ivp` with ``rtol`` / ``atol``; ``rk4``: classical fixed-step
#: Runge--Kutta of step ``dt`` (attention re-evaluated at every stage).
INTEGRATORS = ("dopri5", "dop853", "rk4")
_SCIPY_METHOD = {"dopri5": "RK45", "dop853": "DOP853"}
_FRAMES = ("z", "x")
#: Largest logit bound accepted before a run (exp(logit - row max) needs finite logits).
_LOGIT_LOG_LIMIT = math.log(np.finfo(float).max) - 10.0


def _matrix(name: str, value, d: int) -> np.ndarray:
    if value is None:
        return np.eye(d)
    a = np.asarray(value, dtype=float)
    if a.ndim == 0 and d == 1:
        a = a.reshape(1, 1)
    if a.shape != (d, d):
        raise ValueError(f"{name} must be a {d} x {d} matrix (the tokens are in R^{d}), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries")
    return a


def _tokens(x0) -> np.ndarray:
    x = np.asarray(x0, dtype=float)
    if x.ndim != 2:
        hint = " (for d = 1 pass shape (n, 1), e.g. x0[:, None])" if x.ndim == 1 else ""
        raise ValueError(f"tokens must have shape (n, d), got shape {x.shape}{hint}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"tokens must have shape (n, d) with n >= 1 and d >= 1, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("tokens have non-finite entries")
    return np.ascontiguousarray(x)


@dataclass(frozen=True)
class EuclideanModel:
    """One self-attention head acting on R^d (no normalization of the tokens).

    Parameters
    ----------
    d : int
        Token dimension, ``d >= 1``.
    Q, K, V : array_like, shape (d, d), optional
        Query, key and value matrices (identity by default; a number for ``d = 1``).
    beta : float
        Inverse temperature, finite, ``>= 0``; the logits are ``beta <Q x, K y>``.
    """

    d: int
    Q: np.ndarray = field(default=None)
    K: np.ndarray = field(default=None)
    V: np.ndarray = field(default=None)
    beta: float = 1.0

    def __post_init__(self):
        if isinstance(self.d, bool) or int(self.d) != self.d or self.d < 1:
            raise ValueError(f"d must be an integer >= 1, got {self.d}")
        object.__setattr__(self, "d", int(self.d))
        beta = float(self.beta)
        if not math.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a finite number >= 0 (put a sign into Q), got {self.beta}")
        object.__setattr__(self, "beta", beta)
        for name in "QKV":
            object.__setattr__(self, name, _matrix(name, getattr(self, name), self.d))

    def propagator(self, t: float) -> np.ndarray:
        """``e^{tV}`` (:func:`scipy.linalg.expm`), the map ``z -> x`` at time ``t``."""
        return linalg.expm(float(t) * self.V)

    def interaction(self, t: float = 0.0) -> np.ndarray:
        """The bilinear form of the rescaled logits, ``A(t) = beta e^{tV^T} Q^T K e^{tV}``, so
        that ``P_ij(t) = softmax_j <z_i, A(t) z_j>``; ``A(0) = beta Q^T K`` is that of ``x``."""
        a = self.beta * (self.Q.T @ self.K)
        if t == 0.0:
            return a
        e = self.propagator(t)
        return e.T @ a @ e

    def log_logit_bound(self, radius: float, t: float) -> float:
        """``log`` of a bound of ``|<z, A(t) w>|`` over ``|z|, |w| <= radius``:
        ``beta ||Q^T K||_2 e^{2 t mu(V)} radius^2`` with ``mu(V)`` the largest eigenvalue of
        ``(V + V^T) / 2`` (the logarithmic norm, ``||e^{tV}||_2 <= e^{t mu}``)."""
        c = self.beta * float(np.linalg.norm(self.Q.T @ self.K, 2))
        if c == 0.0 or radius == 0.0:
            return -math.inf
        mu = float(np.linalg.eigvalsh(0.5 * (self.V + self.V.T)).max())
        return math.log(c) + 2.0 * max(t, 0.0) * mu + 2.0 * math.log(radius)


def attention_matrix(points, interaction) -> np.ndarray:
    """The row-softmax ``P_ij = e^{<p_i, A p_j>} / sum_k e^{<p_i, A p_k>}``, ``(n, n)``.

    ``points (n, d)``; ``interaction`` the ``d x d`` form ``A`` (``beta Q^T K`` for tokens
    ``x``, :meth:`EuclideanModel.interaction` ``(t)`` for rescaled tokens ``z(t)``). Each row
    is shifted by its maximum before ``exp``; non-finite logits raise ``FloatingPointError``.
    """
    p = np.asarray(points, dtype=float)
    a = np.asarray(interaction, dtype=float)
    if p.ndim != 2 or a.shape != (p.shape[1], p.shape[1]):
        raise ValueError(f"points (n, d) and interaction (d, d) expected, got {p.shape} and {a.shape}")
    logits = p @ a @ p.T
    if not np.all(np.isfinite(logits)):
        raise FloatingPointError("attention logits overflow double precision (t too large for this V)")
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


class EuclideanSystem:
    """n tokens in R^d under one self-attention head (the unnormalized model above).

    Parameters
    ----------
    model : EuclideanModel
    block_elements : int
        Passed to :class:`~meanfield.fields.attention.DirectField` (memory of the logit block).
    """

    def __init__(self, model: EuclideanModel, block_elements: int = 1 << 18):
        self.model = model
        self.block_elements = int(block_elements)
        d = model.d
        self._pad = d == 1  # AttentionModel needs d >= 2: embed the line as (x, 0) in R^2
        self._D = 2 if self._pad else d
        self._V = self._embed(model.V)
        self._eye = np.eye(self._D)
        self._lognorm = float(np.linalg.eigvalsh(0.5 * (model.V + model.V.T)).max())

    def _embed(self, m: np.ndarray) -> np.ndarray:
        if not self._pad:
            return m
        out = np.zeros((2, 2))
        out[0, 0] = m[0, 0]
        return out

    def _sums(self, points: np.ndarray, interaction: np.ndarray) -> np.ndarray:
        """``sum_j P_ij V p_j`` for rows ``p`` under logits ``<p_i, A p_j>`` (DirectField SA,
        ``project=False``, uniform weights, which SA normalizes away)."""
        n = points.shape[0]
        if self._pad:
            pts = np.zeros((n, 2))
            pts[:, 0] = points[:, 0]
        else:
            pts = points
        # AttentionModel's form is beta Q^T K: Q = A^T, K = I gives the logits <p_i, A p_j>
        am = AttentionModel(self._D, beta=1.0, Q=self._embed(interaction).T, K=self._eye, V=self._V)
        out = DirectField(am, self.block_elements)(pts, pts, np.full(n, 1.0 / n), project=False)
        if not np.all(np.isfinite(out)):
            raise FloatingPointError("attention sums are not finite (the logits overflow: t too large for this V)")
        return out[:, :1] if self._pad else out

    def velocity_x(self, x) -> np.ndarray:
        """``dx_i/dt = sum_j P_ij V x_j``, ``(n, d)``."""
        x = _tokens(x)
        return self._sums(x, self.model.interaction(0.0))

    def velocity_z(self, z, t: float) -> np.ndarray:
        """``dz_i/dt = sum_j P_ij(t) V z_j - V z_i`` with ``P(t)`` the softmax of
        ``<z_i, A(t) z_j>``, ``(n, d)``."""
        z = _tokens(z)
        return self._sums(z, self.model.interaction(t)) - z @ self.model.V.T

    def attention(self, z, t: float) -> np.ndarray:
        """The attention matrix ``P(t)`` of rescaled tokens ``z`` at time ``t`` (the same as
        that of ``x = e^{tV} z``)."""
        return attention_matrix(_tokens(z), self.model.interaction(t))

    def evolve(self, x0, t_end: float, times=None, integrator: str = "dopri5", frame: str = "z",
               rtol: float = 1e-10, atol: float = 1e-12, dt: float = 0.01) -> "EuclideanTrajectory":
        """Integrate from ``x(0) = z(0) = x0`` to ``t_end``.

        Parameters
        ----------
        x0 : array_like, shape (n, d)
        t_end : float
            Final time, finite and > 0.
        times : array_like, optional
            Output times, increasing, in ``[0, t_end]`` (default 101 equispaced, 0 and
            ``t_end`` included).
        integrator : {"dopri5", "dop853", "rk4"}
        frame : {"z", "x"}
            Integrate the rescaled ODE (default: bounded tokens for ``V = I``) or the
            original one.
        rtol, atol : float
            Tolerances of the embedded pairs (``solve_ivp``).
        dt : float
            Step of ``rk4`` (each output interval is split into equal steps <= dt).

        Raises
        ------
        ValueError
            Bad shapes, times, integrator, frame or tolerances, or logits that would overflow
            before ``t_end`` (``beta ||Q^T K|| e^{2 t_end mu(V)} max|x0|^2`` beyond double
            precision).
        """
        m = self.model
        x0 = _tokens(x0)
        if x0.shape[1] != m.d:
            raise ValueError(f"tokens must have shape (n, {m.d}) for this model, got {x0.shape}")
        t_end = float(t_end)
        if not math.isfinite(t_end) or t_end <= 0:
            raise ValueError(f"t_end must be a finite number > 0, got {t_end}")
        if integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
        if frame not in _FRAMES:
            raise ValueError(f"frame must be 'z' (rescaled) or 'x', got {frame!r}")
        for name, val in (("rtol", rtol), ("atol", atol), ("dt", dt)):
            if not (math.isfinite(float(val)) and float(val) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {val}")
        if times is None:
            times = np.linspace(0.0, t_end, 101)
        times = np.asarray(times, dtype=float)
        if times.ndim != 1 or times.size < 1 or not np.all(np.isfinite(times)):
            raise ValueError("times must be a non-empty 1-D array of finite numbers")
        if np.any(np.diff(times) <= 0) or times[0] < 0 or times[-1] > t_end:
            raise ValueError(f"times must increase strictly within [0, t_end = {t_end}]")
        radius = float(np.linalg.norm(x0, axis=1).max())
        if m.log_logit_bound(radius, t_end) > _LOGIT_LOG_LIMIT:
            raise ValueError(
                f"the logits beta <Q e^(tV) z_i, K e^(tV) z_j> may overflow before t_end = {t_end} "
                f"(bound exp({m.log_logit_bound(radius, t_end):.0f})); use a smaller t_end, beta or tokens")
        n, d = x0.shape

        if frame == "z":
            def rhs(t, y):
                return self.velocity_z(y.reshape(n, d), t).ravel()
        else:
            def rhs(t, y):
                return self.velocity_x(y.reshape(n, d)).ravel()

        if integrator == "rk4":
            states, nfev = _rk4(rhs, x0.ravel(), times, float(dt))
        else:
            grid = times if times[0] == 0.0 else np.concatenate([[0.0], times])
            sol = solve_ivp(rhs, (0.0, float(grid[-1])), x0.ravel(), method=_SCIPY_METHOD[integrator],
                            t_eval=grid, rtol=float(rtol), atol=float(atol))
            if not sol.success:
                raise FloatingPointError(f"solve_ivp failed: {sol.message}")
            states = sol.y.T[-times.size:]
            nfev = int(sol.nfev)
        states = states.reshape(times.size, n, d)
        props = [m.propagator(t) for t in times]
        if frame == "z":
            z = states
            x = np.stack([zk @ e.T for zk, e in zip(states, props)])
        else:
            x = states
            z = np.stack([np.linalg.solve(e, xk.T).T for xk, e in zip(states, props)])
        return EuclideanTrajectory(model=m, times=times, x=x, z=z, frame=frame, integrator=integrator, nfev=nfev)


def _rk4(rhs, y0: np.ndarray, times: np.ndarray, dt: float):
    """Classical RK4 through the output times (equal steps <= dt in every interval)."""
    out = np.empty((times.size, y0.size))
    y, t, nfev = y0.copy(), 0.0, 0
    for k, target in enumerate(times):
        steps = int(math.ceil((target - t) / dt - 1e-9)) if target > t else 0
        if steps:
            h = (target - t) / steps
            for _ in range(steps):
                k1 = rhs(t, y)
                k2 = rhs(t + h / 2, y + h / 2 * k1)
                k3 = rhs(t + h / 2, y + h / 2 * k2)
                k4 = rhs(t + h, y + h * k3)
                y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
                t += h
                nfev += 4
            t = float(target)
        out[k] = y
    return out, nfev


@dataclass
class EuclideanTrajectory:
    """A run of :meth:`EuclideanSystem.evolve`.

    Attributes
    ----------
    times : (T,) output times
    x : (T, n, d) tokens
    z : (T, n, d) rescaled tokens ``e^{-tV} x``
    frame, integrator : how it was integrated; ``nfev`` the number of field evaluations
    """

    model: EuclideanModel
    times: np.ndarray
    x: np.ndarray
    z: np.ndarray
    frame: str
    integrator: str
    nfev: int

    def attention(self, k: int) -> np.ndarray:
        """``P(t_k)``, ``(n, n)``, from the rescaled tokens (finite for any stored time)."""
        return attention_matrix(self.z[k], self.model.interaction(self.times[k]))

    def leaders(self, k: int = 0) -> np.ndarray:
        """:func:`leaders` of the rescaled tokens at output ``k`` (default: the initial tokens)."""
        return leaders(self.z[k])


def leaders(points) -> np.ndarray:
    """Indices of the tokens that are vertices of their convex hull, sorted.

    ``d = 1``: the indices of the minimum and the maximum (one index if all tokens are
    equal). ``d >= 2``: :class:`scipy.spatial.ConvexHull` (Qhull); needs ``n >= d + 1`` tokens
    that span R^d (else ``ValueError``). Repeated points: Qhull reports one of them.
    """
    p = _tokens(points)
    n, d = p.shape
    if d == 1:
        return np.unique([int(np.argmin(p[:, 0])), int(np.argmax(p[:, 0]))])
    from scipy.spatial import ConvexHull, QhullError

    if n < d + 1:
        raise ValueError(f"the convex hull in R^{d} needs at least {d + 1} tokens, got {n}")
    try:
        return np.sort(ConvexHull(p).vertices)
    except QhullError as exc:
        raise ValueError(f"the tokens do not span R^{d} (degenerate convex hull): {str(exc).splitlines()[0]}") from None


def hull_measure(points) -> float:
    """The d-dimensional measure of the convex hull of the tokens: length (``max - min``) in
    d = 1, area in d = 2, volume in d >= 3; 0 for a degenerate hull."""
    p = _tokens(points)
    n, d = p.shape
    if d == 1:
        return float(p[:, 0].max() - p[:, 0].min())
    from scipy.spatial import ConvexHull, QhullError

    if n < d + 1:
        return 0.0
    try:
        return float(ConvexHull(p).volume)
    except QhullError:
        return 0.0


def nearest_boolean(P) -> tuple[np.ndarray, float, int]:
    """The nearest 0/1 matrix to ``P`` entrywise, the distance and its rank.

    Returns ``(B, dist, rank)``: ``B = [P >= 1/2]`` (the entrywise nearest Boolean matrix),
    ``dist = max_ij |P_ij - B_ij| = max_ij min(P_ij, 1 - P_ij)`` (0 exactly for a Boolean
    ``P``, at most 1/2), and ``rank = rank(B)`` (numpy's SVD rank of a 0/1 matrix is exact).
    """
    P = np.asarray(P, dtype=float)
    if P.ndim != 2:
        raise ValueError(f"P must be a matrix, got shape {P.shape}")
    B = (P >= 0.5).astype(float)
    dist = float(np.abs(P - B).max()) if P.size else 0.0
    return B, dist, int(np.linalg.matrix_rank(B)) if P.size else 0


def top_coordinate(V) -> tuple[float, np.ndarray, np.ndarray]:
    """The simple positive top eigenvalue of ``V`` and its spectral coordinate.

    Returns ``(lambda_1, phi_1, psi_1)``: ``V phi_1 = lambda_1 phi_1`` (``|phi_1| = 1``),
    ``V^T psi_1 = lambda_1 psi_1`` normalized by ``<psi_1, phi_1> = 1``, so that
    ``a_1(z) = <psi_1, z>`` is the coefficient of ``phi_1`` in the eigen-decomposition of ``z``
    (``e^{-tV}`` multiplies it by ``e^{-t lambda_1}``). The hyperplanes of the paper's
    Theorem 4.2 are level sets ``{a_1 = c}`` (perpendicular to ``psi_1``, parallel to the other
    eigenvectors). ``ValueError`` unless the eigenvalue of largest real part is real,
    positive and simple, with every other eigenvalue of smaller modulus.
    """
    V = np.asarray(V, dtype=float)
    if V.ndim != 2 or V.shape[0] != V.shape[1] or not np.all(np.isfinite(V)):
        raise ValueError(f"V must be a finite square matrix, got shape {V.shape}")
    w, vr = np.linalg.eig(V)
    k = int(np.argmax(np.abs(w)))
    lam = w[k]
    scale = max(1.0, float(np.abs(w).max()))
    others = np.delete(w, k)
    if abs(lam.imag) > 1e-12 * scale or lam.real <= 0:
        raise ValueError(f"the eigenvalue of V of largest modulus must be real and positive, got {lam}")
    if others.size and np.abs(others).max() >= abs(lam) * (1 - 1e-10):
        raise ValueError("the eigenvalue of V of largest modulus must be simple (and strictly largest)")
    phi = np.real(vr[:, k])
    phi /= np.linalg.norm(phi)
    wl, vl = np.linalg.eig(V.T)
    psi = np.real(vl[:, int(np.argmin(np.abs(wl - lam)))])
    psi = psi / float(psi @ phi)
    return float(lam.real), phi, psi


def evolve_euclidean(x0, t_end: float, Q=None, K=None, V=None, beta: float = 1.0, times=None,
                     integrator: str = "dopri5", frame: str = "z", rtol: float = 1e-10,
                     atol: float = 1e-12, dt: float = 0.01) -> EuclideanTrajectory:
    """Tokens ``x0 (n, d)`` in R^d under ``dx_i/dt = sum_j P_ij V x_j``, with ``z = e^{-tV} x``.

    A shortcut for ``EuclideanSystem(EuclideanModel(d, Q, K, V, beta)).evolve(...)``; see
    :meth:`EuclideanSystem.evolve` for the arguments. Returns an
    :class:`EuclideanTrajectory` (``times``, ``x``, ``z``, ``attention(k)``, ``leaders(k)``).
    """
    x0 = _tokens(x0)
    model = EuclideanModel(x0.shape[1], Q=Q, K=K, V=V, beta=beta)
    return EuclideanSystem(model).evolve(x0, t_end, times=times, integrator=integrator, frame=frame,
                                         rtol=rtol, atol=atol, dt=dt)

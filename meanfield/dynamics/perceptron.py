"""The perceptron (feed-forward) velocity term on the sphere.

For points ``x`` on the unit sphere S^{d-1} in R^d, a hidden width ``m``, weights
``W`` (d x m), ``U`` (m x d), a bias ``b`` (m,) and an elementwise activation ``sigma``,

.. math::

    X_P(x) = P_x\\big( W \\sigma(U x + b) \\big), \\qquad P_x y = y - \\langle x, y\\rangle x .

The term does not depend on the measure: every particle (or cell) moves in the same fixed
field. It is the feed-forward layer of a Transformer in the mean-field limit (SPEC section 5).

**Gradient form.** When ``W = U^T diag(w)`` (column ``i`` of ``W`` parallel to row ``u_i`` of
``U``) the field is the tangential gradient of the potential

.. math::

    \\Phi(x) = \\sum_i w_i S(\\langle u_i, x\\rangle + b_i), \\qquad S' = \\sigma,\\; S(0) = 0,

since the Euclidean gradient of ``Phi`` is ``U^T diag(w) sigma(Ux + b) = W sigma(Ux + b)``
and ``grad_S = P_x grad``. The flow ``x' = X_P(x)`` is then a gradient *ascent* (the
convention of USA attention, which ascends its energy): ``d/dt Phi(x(t)) = |X_P(x)|^2 >= 0``,
and for a measure ``mu`` the energy ``int Phi dmu`` grows at the rate ``int |X_P|^2 dmu``.

Examples
--------
>>> import numpy as np
>>> p = Perceptron(W=np.eye(3)[:, :2] * 2.0, U=np.eye(3)[:2], activation="identity")
>>> p.describe()
'perceptron m=2 identity (gradient form)'
>>> p.gradient_weights()
array([2., 2.])
>>> x = np.array([[0.6, 0.0, 0.8]])
>>> p(x)                       # P_x (2 x_1, 2 x_2, 0) = (1.2, 0, 0) - 0.72 x
array([[ 0.768,  0.   , -0.576]])
>>> float(p.potential(x)[0])   # x_1^2 + x_2^2
0.36
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special

__all__ = ["ACTIVATIONS", "Activation", "Perceptron"]

_LOG2 = math.log(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Activation:
    """An elementwise activation ``sigma`` with what the solvers need to know about it.

    Parameters
    ----------
    name : str
        The key in :data:`ACTIVATIONS` (what a case file writes).
    function : callable
        ``sigma(z)``, elementwise on a float array.
    antiderivative : callable
        ``S(z)`` with ``S' = sigma`` and ``S(0) = 0``, written so that it stays finite
        (no overflow) for any finite ``z``.
    lipschitz : float
        ``sup_z |sigma'(z)|``, the exact Lipschitz constant of ``sigma``.
    extrema : tuple of float
        The points where ``sigma`` has a local extremum (empty for a monotone activation):
        on an interval, ``max |sigma|`` is attained at an end or at one of these.
    """

    name: str
    function: Callable[[np.ndarray], np.ndarray]
    antiderivative: Callable[[np.ndarray], np.ndarray]
    lipschitz: float
    extrema: tuple[float, ...] = ()

    def max_abs(self, lo, hi) -> np.ndarray:
        """``max |sigma(z)|`` over ``lo <= z <= hi``, elementwise (``lo <= hi``)."""
        lo = np.asarray(lo, dtype=float)
        hi = np.asarray(hi, dtype=float)
        best = np.maximum(np.abs(self.function(lo)), np.abs(self.function(hi)))
        for e in self.extrema:
            value = abs(float(self.function(np.array(e))))
            best = np.where((lo <= e) & (e <= hi), np.maximum(best, value), best)
        return best


def _relu(z):
    return np.maximum(z, 0.0)


def _relu_s(z):
    return 0.5 * np.maximum(z, 0.0) ** 2


def _identity(z):
    return np.array(z, dtype=float, copy=True)


def _identity_s(z):
    return 0.5 * np.square(z)


def _tanh_s(z):
    # log cosh z = |z| + log(1 + e^{-2|z|}) - log 2: no overflow for any finite z.
    a = np.abs(z)
    return a + np.log1p(np.exp(-2.0 * a)) - _LOG2


def _sigmoid(z):
    return special.expit(z)


def _sigmoid_s(z):
    # softplus(z) - log 2 = max(z, 0) + log(1 + e^{-|z|}) - log 2.
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z))) - _LOG2


def _gaussian(z):
    return _INV_SQRT_2PI * np.exp(-0.5 * np.square(z))


def _gelu(z):
    # The exact form z Phi(z) (torch's default, approximate="none").
    return z * special.ndtr(z)


def _gelu_s(z):
    # d/dz [((z^2 - 1) Phi + z phi) / 2] = z Phi; the constant 1/4 makes S(0) = 0.
    z = np.asarray(z, dtype=float)
    return 0.5 * ((np.square(z) - 1.0) * special.ndtr(z) + z * _gaussian(z)) + 0.25


def _gelu_minimum() -> float:
    """The minimizer of ``z Phi(z)``: the root of ``sigma' = Phi(z) + z phi(z)`` (Newton)."""
    z = -0.75
    for _ in range(50):
        phi = _INV_SQRT_2PI * math.exp(-0.5 * z * z)
        step = (0.5 * math.erfc(-z / math.sqrt(2.0)) + z * phi) / ((2.0 - z * z) * phi)
        z -= step
        if abs(step) < 1e-16:
            break
    return z


# sup |sigma'| for gelu: sigma'' = (2 - z^2) phi vanishes at z = +-sqrt 2, and
# sigma'(sqrt 2) = Phi(sqrt 2) + sqrt 2 phi(sqrt 2) = Phi(sqrt 2) + e^{-1} / sqrt(pi) ~ 1.1289
# beats |sigma'(-sqrt 2)| = |1 - Phi(sqrt 2) - e^{-1}/sqrt(pi)| ~ 0.1289 and the limits 0, 1.
_GELU_LIPSCHITZ = 0.5 * (1.0 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi)

ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("gelu", _gelu, _gelu_s, _GELU_LIPSCHITZ, (_gelu_minimum(),)),
        Activation("identity", _identity, _identity_s, 1.0),
        Activation("relu", _relu, _relu_s, 1.0),
        Activation("sigmoid", _sigmoid, _sigmoid_s, 0.25),
        Activation("tanh", np.tanh, _tanh_s, 1.0),
    )
}
"""The activations a perceptron may use, by name."""


# ---------------------------------------------------------------------------------------
# The perceptron term
# ---------------------------------------------------------------------------------------
def _real_array(name: str, value, what: str) -> np.ndarray:
    try:
        if np.iscomplexobj(value):
            raise TypeError
        a = np.array(value, dtype=float, copy=True)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {what} of real numbers, got {value!r}") from None
    return a


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Perceptron:
    """The feed-forward velocity term ``X_P(x) = P_x(W sigma(U x + b))`` on S^{d-1}.

    Parameters
    ----------
    W : array_like, shape (d, m)
        Output weights; ``d >= 2`` is the ambient dimension, ``m >= 1`` the hidden width.
    U : array_like, shape (m, d)
        Input weights; row ``u_i`` feeds hidden unit ``i``.
    b : array_like, shape (m,), optional
        Hidden biases, zeros by default.
    activation : str
        One of :data:`ACTIVATIONS`: ``"gelu"`` (exact erf form ``z Phi(z)``),
        ``"identity"``, ``"relu"``, ``"sigmoid"``, ``"tanh"``.

    The arrays are stored as read-only float copies. Two perceptrons are equal when their
    activations and arrays are equal entry for entry.
    """

    W: np.ndarray
    U: np.ndarray
    b: np.ndarray | None = None
    activation: str = "relu"

    def __post_init__(self):
        W = _real_array("W", self.W, "a d x m matrix")
        if W.ndim != 2 or W.shape[0] < 2 or W.shape[1] < 1:
            raise ValueError(f"W must be a d x m matrix (d >= 2, m >= 1), got shape {W.shape}")
        if not np.all(np.isfinite(W)):
            raise ValueError("W has non-finite entries")
        d, m = W.shape
        U = _real_array("U", self.U, "an m x d matrix")
        if U.shape != (m, d):
            raise ValueError(
                f"U must be m x d (W is {d} x {m}, so U must be {m} x {d}), got shape {U.shape}"
            )
        if not np.all(np.isfinite(U)):
            raise ValueError("U has non-finite entries")
        b = np.zeros(m) if self.b is None else _real_array("b", self.b, "a vector")
        if b.shape != (m,):
            raise ValueError(f"b must have shape (m,) = ({m},), got shape {b.shape}")
        if not np.all(np.isfinite(b)):
            raise ValueError("b has non-finite entries")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            names = ", ".join(repr(k) for k in sorted(ACTIVATIONS))
            raise ValueError(f"activation must be one of {names}, got {self.activation!r}")
        object.__setattr__(self, "W", _readonly(W))
        object.__setattr__(self, "U", _readonly(U))
        object.__setattr__(self, "b", _readonly(b))
        w = _solve_gradient_weights(W, U)
        # Not a field: derived from W and U once, read by potential() and describe().
        object.__setattr__(self, "_gradient_weights", None if w is None else _readonly(w))

    def __eq__(self, other):
        if not isinstance(other, Perceptron):
            return NotImplemented
        return (
            self.activation == other.activation
            and all(np.array_equal(getattr(self, k), getattr(other, k)) for k in "WUb")
        )

    def __hash__(self):
        return hash((self.activation, self.W.shape, self.W.tobytes(), self.U.tobytes(), self.b.tobytes()))

    # -- shape ----------------------------------------------------------------------------
    @property
    def d(self) -> int:
        """Ambient dimension (points live on S^{d-1} in R^d)."""
        return self.W.shape[0]

    @property
    def m(self) -> int:
        """Hidden width."""
        return self.W.shape[1]

    @property
    def sigma(self) -> Activation:
        """The :class:`Activation` named by :attr:`activation`."""
        return ACTIVATIONS[self.activation]

    def _points(self, x, name: str = "x") -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"{name} must have shape (N, {self.d}), got {x.shape}")
        return x

    # -- the field ------------------------------------------------------------------------
    def average(self, x) -> np.ndarray:
        """``W sigma(U x_i + b)`` for each row ``x_i`` of ``x`` (N, d): the field before
        the projection onto the tangent space, shape (N, d)."""
        x = self._points(x)
        return self.sigma.function(x @ self.U.T + self.b) @ self.W.T

    def __call__(self, x, project: bool = True) -> np.ndarray:
        """``X_P(x_i) = P_{x_i}(W sigma(U x_i + b))`` for each row of ``x`` (N, d).

        ``project=False`` returns :meth:`average` (the unprojected field).
        """
        x = self._points(x)
        y = self.average(x)
        if project:
            y -= np.einsum("ij,ij->i", y, x)[:, None] * x
        return y

    # -- bounds for step control ----------------------------------------------------------
    def _unit_bounds(self) -> np.ndarray:
        """``M_i = max |sigma(z)|`` over ``|z - b_i| <= |u_i|``: a bound of hidden unit
        ``i`` on the whole closed unit ball (the exact range of ``<u_i, x> + b_i`` over the
        sphere is that interval)."""
        r = np.linalg.norm(self.U, axis=1)
        return self.sigma.max_abs(self.b - r, self.b + r)

    def speed_bound(self) -> float:
        """An upper bound of ``max_{|x| = 1} |X_P(x)|``.

        For ``|x| <= 1``, ``z_i = <u_i, x> + b_i`` lies in ``[b_i - |u_i|, b_i + |u_i|]``,
        so ``|sigma(z_i)| <= M_i``, the largest ``|sigma|`` on that interval (at an end, or
        at an interior extremum of ``sigma``: gelu's minimum). Since ``|P_x y| <= |y|``,

        .. math::

            |X_P(x)| \\le |W \\sigma(Ux + b)| \\le
            \\min\\Big( \\|W\\|_2 |M|_2,\\; \\sum_i |W_{:, i}| M_i \\Big).

        The bound also holds for the unprojected field :meth:`average` on the ball.
        """
        M = self._unit_bounds()
        spectral = float(np.linalg.norm(self.W, 2)) * float(np.linalg.norm(M))
        columns = float(np.linalg.norm(self.W, axis=0) @ M)
        return min(spectral, columns)

    def rate_bound(self) -> float:
        """An upper bound of the Lipschitz constant of ``X_P`` on the sphere (geodesic
        distance), a rate (1/time) for step control.

        With ``F(x) = W sigma(Ux + b)``, ``|DF| <= L_sigma ||W||_2 ||U||_2``. For a unit
        tangent vector ``v`` at ``x``, ``D X_P(x)[v] = P_x DF[v] - <x, F> v - <v, F> x``,
        whose last two terms are orthogonal with norm ``<= |F(x)|``, so

        .. math::

            \\mathrm{Lip}(X_P) \\le L_\\sigma \\|W\\|_2 \\|U\\|_2 + \\text{speed\\_bound}().

        It is 0 only for ``W = 0`` (a zero field). With ``U = 0`` the field is the
        projection ``P_x W sigma(b)`` of a constant, whose Lipschitz constant is
        ``|W sigma(b)|``: the bound is then :meth:`speed_bound`. For the chordal distance
        ``|x - y|`` multiply by at most ``pi / 2`` (far pairs); close pairs need no factor.
        """
        if not np.any(self.W):
            return 0.0
        lip = self.sigma.lipschitz * float(np.linalg.norm(self.W, 2)) * float(np.linalg.norm(self.U, 2))
        return lip + self.speed_bound()

    # -- gradient form --------------------------------------------------------------------
    def gradient_weights(self) -> np.ndarray | None:
        """The vector ``w`` (m,) with ``W = U^T diag(w)``, else ``None``.

        Column ``i`` of ``W`` must be ``w_i u_i`` to a relative tolerance of ``1e-12`` of
        ``max |W|`` (a zero row ``u_i`` needs a zero column, and gets ``w_i = 0``). Then
        ``X_P = grad_S Phi`` with ``Phi(x) = sum_i w_i S(<u_i, x> + b_i)``, for any ``b``.
        """
        w = self._gradient_weights
        return None if w is None else w.copy()

    def potential(self, x) -> np.ndarray:
        """``Phi(x_i) = sum_k w_k S(<u_k, x_i> + b_k)`` for each row of ``x`` (N, d), shape
        (N,); ``S`` is the activation's antiderivative with ``S(0) = 0``. ``X_P`` is the
        tangential gradient of ``Phi`` and the flow ascends it.

        Raises
        ------
        ValueError
            When the perceptron is not in gradient form (:meth:`gradient_weights` is None).
        """
        w = self._gradient_weights
        if w is None:
            raise ValueError("the perceptron is not in gradient form W = U^T diag(w): it has no potential")
        x = self._points(x)
        return self.sigma.antiderivative(x @ self.U.T + self.b) @ w

    def energy(self, points, weights) -> float:
        """``sum_i weights_i Phi(points_i)``: the potential energy ``int Phi dmu`` of the
        measure ``mu = sum_i weights_i delta_{points_i}``; along the flow it grows at the
        rate ``sum_i weights_i |X_P(points_i)|^2``.

        Parameters
        ----------
        points : array_like, shape (N, d)
        weights : array_like, shape (N,)
            Nonnegative masses.
        """
        x = self._points(points, "points")
        w = np.asarray(weights, dtype=float)
        if w.shape != (x.shape[0],):
            raise ValueError(f"weights must have shape ({x.shape[0]},), got {w.shape}")
        if np.any(w < 0):
            raise ValueError("weights must be nonnegative")
        return float(w @ self.potential(x))

    def describe(self) -> str:
        """One line, e.g. ``"perceptron m=4 relu (gradient form)"``."""
        form = " (gradient form)" if self._gradient_weights is not None else ""
        return f"perceptron m={self.m} {self.activation}{form}"


def gradient_residual(W: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, float]:
    """``(w, r)``: the least-squares ``w`` of ``W ~ U^T diag(w)`` (column by column) and the
    relative residual ``r = max |W - U^T diag(w)| / max |W|`` (0 for ``W = 0``)."""
    W, U = np.asarray(W, dtype=float), np.asarray(U, dtype=float)
    scale = float(np.abs(W).max())
    if scale == 0.0:
        return np.zeros(W.shape[1]), 0.0
    norms2 = np.einsum("ij,ij->i", U, U)
    dots = np.einsum("ji,ij->i", W, U)  # <W[:, i], u_i>
    w = np.divide(dots, norms2, out=np.zeros_like(dots), where=norms2 > 0)
    return w, float(np.abs(W - U.T * w).max()) / scale


def _solve_gradient_weights(W: np.ndarray, U: np.ndarray) -> np.ndarray | None:
    """``w`` with ``W = U^T diag(w)`` to ``1e-12 max |W|``, else ``None``."""
    w, residual = gradient_residual(W, U)
    return w if residual <= 1e-12 else None

"""Spectral (Fourier) backend of the nonlocal convolution on the circle S^1.

Same contract as :class:`~meanfield.fields.attention.DirectField`: ``field(targets (N, 2),
sources (M, 2), weights (M,)) -> (N, 2)`` tangent field, at *arbitrary* targets and
sources (edge points of a mesh, particle positions), in O((N + M) L) time instead of
O(N M), L the truncation (L = 29 at beta = 9, 119 at beta = 200 for the default tolerance).

The kernel in Fourier modes
---------------------------
Write ``x = (cos t, sin t)``, ``y = (cos s, sin s)`` and ``A = beta Q^T K`` (so the logit is
``x^T A y``). The product formulas for ``cos t cos s`` etc. split the logit into a part
that depends on ``t - s`` (rotation invariant) and one that depends on ``t + s``:

.. math::

    x^T A y = p \\cos(t-s) + q \\sin(t-s) + u \\cos(t+s) + v \\sin(t+s)
            = r_1 \\cos(t - s - a_1) + r_2 \\cos(t + s - a_2),

    p = (A_{11} + A_{22})/2, \\quad q = (A_{21} - A_{12})/2, \\quad
    u = (A_{11} - A_{22})/2, \\quad v = (A_{12} + A_{21})/2,

with ``r_1 e^{i a_1} = p + i q`` and ``r_2 e^{i a_2} = u + i v`` (:func:`kernel_parameters`).
That is ``A = p I + q J + u R + v S`` with ``J`` the quarter turn and ``R = diag(1, -1)``,
``S`` the other reflection; the singular values of ``A`` are ``r_1 + r_2`` and
``|r_1 - r_2|``. Rotation-invariant models (``A`` in span{I, J}) have ``u = v = 0``.

For a fixed target the logit is a cosine in ``s``:
``x^T A y = rho cos(s - phi)`` with ``rho e^{i phi} = r_1 e^{i(t - a_1)} + r_2 e^{i(a_2 - t)}``,
i.e. ``(rho cos phi, rho sin phi) = A^T x``, and ``rho(x) = |A^T x|`` is the largest logit
over the whole circle. The Jacobi--Anger expansion ``e^{rho cos z} = sum_k I_k(rho) e^{ikz}``
gives, with the source moments ``c_n = sum_j w_j e^{i n s_j}`` computed once per call,

.. math::

    Z(x) = \\sum_j w_j e^{x^T A y_j} = \\sum_n I_n(\\rho) e^{-i n \\phi} c_n, \\qquad
    \\sum_j w_j e^{x^T A y_j} \\binom{\\cos s_j}{\\sin s_j}
      = \\sum_n I_n(\\rho) e^{-i n \\phi} \\binom{(c_{n+1} + c_{n-1})/2}{(c_{n+1} - c_{n-1})/2i},

(real: ``Re(term_0 + 2 sum_{n > 0} term_n)``), and the numerator is ``V`` times the second.
Substituting ``rho, phi`` back gives the double series ``sum_{k1,k2} I_{k1}(r_1) I_{k2}(r_2)
e^{i(k1+k2) t} e^{i(k2-k1) s}``; summing it per target as above needs only
``L(||A||)`` terms and gives every target its own exact scale ``e^{rho(x)}`` (next
sections). For rotation-invariant models (and pure reflections, ``r_1 = 0``) ``rho`` is
the same at every target, the Bessel factors fold into the coefficients and the target
sum is one GEMM (attribute ``constant_rho``; taken when ``min(r_1, r_2) <= tolerance / 40``,
since using ``rho = r_1 + r_2`` perturbs the kernel by a relative ``2 min(r_1, r_2)``); otherwise ``I_n(rho(x)) e^{-rho}`` is computed per target by the
backward ratio recurrence ``I_n / I_{n-1} = 1 / (2n/rho + I_{n+1} / I_n)`` (stable, no
overflow) normalized by ``I_0 + 2 sum_{n>0} I_n = e^rho``.

Truncation and scaling
----------------------
All Bessel factors are exponentially scaled (``I_n(rho) e^{-rho}``, ``scipy.special.ive``),
so the scaled sums are bounded by the total weight ``W`` and nothing overflows for large
``beta``. SA divides the factor out; USA multiplies ``e^{rho(x)}`` back and raises
:class:`~meanfield.fields.attention.FieldOverflowError` where ``rho(x)`` exceeds
:data:`~meanfield.fields.attention.USA_LOGIT_LIMIT` (the direct backend raises when a logit between
the given points does; ``rho(x)`` is the largest logit against any point of the circle,
so for sources that cover the circle this is the same condition). Shifted USA
(``model.shift``, :attr:`~meanfield.fields.attention.AttentionModel.logit_offset` ``= beta ||Q^T K||_2
= r_1 + r_2``) multiplies ``e^{rho(x) - offset} <= 1`` back instead: nothing overflows at
any ``beta``, with the same relative accuracy (the truncation ``L ~ sqrt(beta)``: 254 at
``beta = 1000``, 803 at ``10^4`` for the default tolerance and ``Q = K = I``).

``project=False`` returns the attention average itself, ``V`` times the moment sums over
``Z`` (SA) or scaled back (USA), before the tangential projection ``P_x``: the same sums,
so the same accuracy (the SA bound ``tolerance ||V||_2`` covers the whole vector).

The truncation ``L`` (attribute ``truncation``) is the smallest order with
``2 sum_{k > L} ive(k, ||A||_2) <= delta`` (:func:`bessel_truncation`); since
``sum_k ive(k, rho) = 1`` and the tail grows with ``rho``, this bounds the truncation error
of every scaled kernel value by ``delta``. ``I_k(rho)`` decays like ``exp(-k^2 / 2 rho)``
for ``k < rho`` and super-exponentially beyond, so ``L ~ sqrt(2 rho log(1/delta))`` grows
like ``sqrt(beta)``, not like ``beta``. USA: ``delta = tolerance / 1000`` (the error bound
below is relative to ``W e^{rho} ||V||``, which can exceed ``max |X|`` by a factor
``sqrt(rho)`` or more). SA:
``delta = min(tolerance, 1e-15) / 10``, i.e. (almost) the round-off level whatever the
tolerance, because the SA quotient amplifies absolute errors by ``1 / Z_s`` (next
section): a few more modes (``L = 29`` instead of 20 for ``delta = 1e-9`` at ``beta = 9``)
buy a far smaller region where the direct fallback is needed.

Accuracy, and where SA needs the direct sums
--------------------------------------------
The scaled sums are computed to an absolute error ``eps_abs ~ (delta + eps_ro) W`` with a
round-off ``eps_ro <= 1e-15`` (measured: at most 4e-16, typically 1e-17). USA: the error
of ``X(x)`` is about ``eps_abs e^{rho(x)} ||V||_2``, i.e. ``tolerance`` relative to the
bound ``W e^{rho(x)} ||V||_2`` of ``|X(x)|``. SA: ``X = N / Z`` with ``|N| <= ||V||_2 Z``, so
the error is about ``2 eps_abs ||V||_2 / (W Z_s(x))``, ``Z_s(x) = Z(x) e^{-rho(x)} / W`` in
``(0, 1]``. Where the measure is concentrated and ``beta`` is large, ``Z_s`` is
exponentially small at targets whose preferred direction ``A^T x`` points away from the
mass (a point mass at angle ``theta`` from that direction: ``Z_s = e^{-rho (1 - cos
theta)}``), and the spectral quotient loses its accuracy there. That is cancellation in a
sum of O(1) terms, not truncation, so no ``L`` cures it. Those targets are detected
(``Z_s < z_min = 2 (delta + eps_ro) / tolerance``, 2.2e-3 for ``tolerance = 1e-12``, 2.2e-7
for 1e-8) and evaluated by :class:`~meanfield.fields.attention.DirectField` on that subset, so SA
always agrees with the direct field to ``tolerance * ||V||_2``; ``last_fallback`` counts
them. A spread-out measure never falls back. A single cluster at ``beta = 9`` (isotropic)
does at targets more than about 71 degrees from it with the default tolerance, and
nowhere for ``tolerance >= 1e-6`` (``z_min < e^{-2 beta}``); at ``beta = 200`` a cluster
makes almost every target fall back, and the call costs about a direct sum. This is
the regime of SA where the spectral backend does not pay; a fast-Gauss-transform-like
scheme (moments of the sources tilted towards each target direction) would be needed.

Cost
----
Source moments: O(M L), as a complex GEMM in the factorization ``e^{i(jb + r)s} =
e^{ijbs} e^{irs}`` (``b ~ sqrt L``; the O(M sqrt L) powers are product trees of depth
``log2 L``, no transcendental calls); targets: O(N L) likewise (general ``A``: plus the
per-target Bessel recurrence, O(N L) elementwise); plus the SA
fallback, O(N_fallback M). Memory O(block * L). :func:`spectral_cost` and
:func:`direct_cost` estimate the work in direct pair-evaluations so a caller
(``backend = "auto"``) can choose.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from .attention import (USA_LOGIT_LIMIT, USA_OVERFLOW_FIX, AttentionModel, DirectField, FieldOverflowError,
                        check_field_inputs, single_thread_blas)
from .plans import as_points
from .spectral import SpectralField

__all__ = [
    "SpectralCircleField",
    "bessel_truncation",
    "direct_cost",
    "kernel_parameters",
    "spectral_cost",
]

#: Round-off of the scaled spectral sums relative to the total weight (measured: at most
#: 4e-16 on clustered measures, beta up to 1000, random Q, K, V; typically 1e-17).
_ROUNDOFF = 1e-15
#: Floor of the truncation tolerance (the tail of ive underflows below this).
_TRUNCATION_FLOOR = 1e-18
#: Extra terms of the backward Bessel-ratio recurrence beyond the truncation.
_RECURRENCE_EXTRA = 10
#: Tokens per sub-block of the causal prefix sums (:class:`CausalPrefix`), and the most
#: sub-blocks per token block.
PREFIX_SUB = 64
PREFIX_SUBBLOCKS = 64
#: Complex numbers held per token block of :meth:`SpectralCircleField.causal_tokens`, per unit of ``block``.
_CAUSAL_ELEMENTS = 64

# Cost model, in units of one direct (target, source) pair (about 2 ns on one core),
# fitted to timings of N, M in 2^10..2^15 and L in 12..290: per call, per source,
# per source and mode, per target, per target and mode (shared / per-target Bessel factors).
_COST_FIXED = 3.0e4
_COST_SOURCE = 22.0
_COST_SOURCE_MODE = 0.15
_COST_TARGET = 64.0
_COST_TARGET_MODE = 0.4
_COST_TARGET_MODE_GENERAL = 5.0


def kernel_parameters(A) -> tuple[float, float, float, float]:
    """``(r1, a1, r2, a2)`` with ``x^T A y = r1 cos(t - s - a1) + r2 cos(t + s - a2)``.

    ``A`` is the 2 x 2 interaction matrix (``model.interaction``), ``x = (cos t, sin t)``,
    ``y = (cos s, sin s)``; ``r1 e^{i a1} = p + i q``, ``r2 e^{i a2} = u + i v`` with
    ``p = (A11 + A22)/2``, ``q = (A21 - A12)/2``, ``u = (A11 - A22)/2``, ``v = (A12 + A21)/2``.
    ``r1 + r2 = ||A||_2``.
    """
    A = np.asarray(A, dtype=float)
    if A.shape != (2, 2):
        raise ValueError(f"A must be a 2 x 2 matrix, got shape {A.shape}")
    p = 0.5 * (A[0, 0] + A[1, 1])
    q = 0.5 * (A[1, 0] - A[0, 1])
    u = 0.5 * (A[0, 0] - A[1, 1])
    v = 0.5 * (A[0, 1] + A[1, 0])
    return math.hypot(p, q), math.atan2(q, p), math.hypot(u, v), math.atan2(v, u)


def bessel_truncation(r: float, delta: float) -> int:
    """Smallest ``L >= 0`` with ``2 sum_{k > L} I_k(r) e^{-r} <= delta``.

    Since ``sum_{k in Z} I_k(r) e^{-r} = 1``, truncating the Jacobi--Anger series of
    ``e^{r cos z - r}`` to ``|k| <= L`` then errs by at most ``delta`` for every ``z``
    (and for every smaller ``r``: the tail grows with ``r``).
    """
    r = abs(float(r))
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta}")
    if r == 0.0:
        return 0
    kmax = int(math.ceil(r + 12.0 * math.sqrt(r + 1.0) + 60.0))
    while True:
        ive = special.ive(np.arange(kmax + 1), r)
        if ive[-1] < 1e-3 * delta or ive[-1] == 0.0:
            break
        kmax *= 2
    # tail[L] = 2 sum_{k > L} ive(k), accumulated from the small end.
    tail = 2.0 * np.concatenate([np.cumsum(ive[::-1])[::-1][1:], [0.0]])
    return int(np.argmax(tail <= delta))


def _check_model(model: AttentionModel, tolerance: float) -> float:
    if not isinstance(model, AttentionModel):
        raise TypeError(f"model must be an AttentionModel, got {type(model).__name__}")
    if model.d != 2:
        raise ValueError(f"the spectral circle backend needs d = 2 (the circle), got d = {model.d}")
    tolerance = float(tolerance)
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    return tolerance


def _plan(model: AttentionModel, tolerance: float) -> tuple[float, float, float, float, int, bool, float]:
    """``(r1, a1, r2, a2, L, constant_rho, delta)`` for a checked model and tolerance."""
    r1, a1, r2, a2 = kernel_parameters(model.interaction)
    if model.normalized:
        # SA divides by Z: truncate to the round-off level, so that the tolerance only
        # sets the fallback threshold z_min (see the module docstring).
        delta = max(min(0.1 * tolerance, 0.1 * _ROUNDOFF), _TRUNCATION_FLOOR)
    else:
        delta = max(1e-3 * tolerance, _TRUNCATION_FLOOR)
    # |A^T x| is the same for all x iff A is conformal (r2 = 0) or anticonformal (r1 = 0).
    # Treating |A^T x| as r1 + r2 changes every logit by at most 2 min(r1, r2), i.e. the
    # kernel by that *relative* amount, which moves X by at most twice as much times
    # ||V|| (SA) or the USA bound: harmless below tolerance / 40. (Q, K rotations give
    # min(r1, r2) ~ 1e-14 beta from rounding, not 0.)
    constant = min(r1, r2) <= tolerance / 40.0
    return r1, a1, r2, a2, bessel_truncation(r1 + r2, delta), constant, delta


def spectral_cost(model: AttentionModel, n_targets: int, n_sources: int, tol: float = 1e-12) -> float:
    """Estimated cost of one :class:`SpectralCircleField` call, in direct pair-evaluations.

    Comparable with :func:`direct_cost` (constants measured on one core). The SA direct
    fallback (concentrated measures at large beta, see the module docstring) depends on
    the data and is not included.
    """
    tol = _check_model(model, tol)
    *_, L, constant, _ = _plan(model, tol)
    per_mode = _COST_TARGET_MODE if constant else _COST_TARGET_MODE_GENERAL
    return float(_COST_FIXED + int(n_sources) * (_COST_SOURCE + _COST_SOURCE_MODE * (L + 2))
                 + int(n_targets) * (_COST_TARGET + per_mode * (L + 1)))


def direct_cost(model: AttentionModel, n_targets: int, n_sources: int, tol: float = 1e-12) -> float:
    """Cost of one :class:`~meanfield.fields.attention.DirectField` call: ``N M`` pair evaluations.

    ``model`` and ``tol`` are accepted for symmetry with :func:`spectral_cost`.
    """
    return float(int(n_targets) * int(n_sources))


def _split(n: int) -> tuple[int, int]:
    """``(b, J)`` with ``b J >= n``, ``b ~ sqrt(n)``: modes ``j b + r``, ``r < b``, ``j < J``."""
    b = max(1, int(math.ceil(math.sqrt(n))))
    return b, max(1, -(-n // b))


def _power_table(z: np.ndarray, count: int) -> np.ndarray:
    """``T[k] = z^k`` for ``k < count``, shape ``(count, len(z))``.

    ``z^k = z^{floor(k/2)} z^{ceil(k/2)}``: every power is a product tree of depth
    ``log2 k``, so the rounding error grows like ``log k``, not like ``k``.
    """
    T = np.empty((count, z.size), dtype=complex)
    T[0] = 1.0
    if count > 1:
        T[1] = z
    for k in range(2, count):
        np.multiply(T[k // 2], T[k - k // 2], out=T[k])
    return T


def _powers(z: np.ndarray, b: int, nj: int) -> tuple[np.ndarray, np.ndarray]:
    """``R[r] = z^r`` (``r < b``) and ``P[j] = z^{j b}`` (``j < nj``), rows of length ``len(z)``."""
    R = _power_table(z, b + 1)
    return R[:b], _power_table(R[b], nj)


def _ive_rows(rho: np.ndarray, L: int, nstart: int) -> np.ndarray:
    """``H[n, i] = I_n(rho_i) e^{-rho_i}`` for ``n = 0..L``: backward ratio recurrence.

    ``h_n = I_n / I_{n-1} = 1 / (2n / rho + h_{n+1})`` from ``h_{nstart+1} = 0`` (stable);
    ``I_n / I_0`` is a running product (in (0, 1], no overflow for any rho, 0 at rho = 0)
    and ``I_0 e^{-rho} = 1 / (1 + 2 sum_{n>0} I_n / I_0)``.
    """
    inv = np.divide(2.0, rho, out=np.full_like(rho, np.inf), where=rho > 0)
    H = np.empty((nstart + 1, rho.size))
    H[0] = 1.0
    h = np.zeros_like(rho)
    tmp = np.empty_like(rho)
    for n in range(nstart, 0, -1):
        np.multiply(inv, n, out=tmp)
        tmp += h
        np.divide(1.0, tmp, out=h)
        H[n] = h
    norm = np.zeros_like(rho)
    for n in range(1, nstart + 1):
        H[n] *= H[n - 1]
        norm += H[n]
    norm *= 2.0
    norm += 1.0
    H = H[: L + 1]
    H /= norm
    return H


class CausalPrefix:
    """Decayed prefix sums ``S_i = e^{-g} S_{i-1} + v_i`` over the tokens, block by block.

    The causal backends (:meth:`SpectralCircleField.causal_tokens`, and
    :meth:`~meanfield.fields.spectral_sphere.SpectralSphereField.causal_tokens`) feed the
    per-token spectral coefficients ``v (F, nb)`` (``F`` features, the tokens along the last
    axis) of consecutive token blocks; each call returns the prefix sums ``S (F, nb)`` of its
    block with the state of the earlier blocks carried in. ``g = lambda / n`` is the ALiBi
    rate (``e^{-g}`` = :func:`~meanfield.fields.causal.token_decay`); ``g = 0``: plain sums.

    The spectral quotients amplify absolute errors of the sums (module docstring: ``1 / Z_s``),
    so the prefix must not accumulate round-off along the prompt (a running sum of ``n`` terms
    errs by ``~ sqrt(n) eps`` of their total, and the powers ``fl(e^{-g})^m`` of a recursion
    by ``m eps`` relative). Three levels keep every ``S_i`` within a few ``eps`` of
    ``sum_j |v_j|`` and every decay factor within a few ``eps`` of ``e^{-g (i - j)}``, for
    any ``n``:

    1. sub-blocks of ``s = 64`` tokens: ``local_m = e^{-g m} cumsum_{m' <= m}(e^{g m'} v_{m'})``
       with the factors computed exactly (:func:`~meanfield.fields.causal.prefix_sum`,
       ``lfilter``, where ``g (s - 1) > 300`` would overflow them);
    2. the sub-block totals ``T_q`` (at most :data:`PREFIX_SUBBLOCKS` per block) by
       :func:`~meanfield.fields.causal.prefix_sum` with the decay ``e^{-g s}``;
    3. the state before the block carried in extended precision (``numpy.longdouble``) with
       the exact factor ``e^{-g nb}``,

    ``S_{q s + m} = local_{q,m} + e^{-g (m + 1)} (G_q + e^{-g q s} carry)``, ``G_q`` the
    exclusive prefix of the totals. Blocks must hold a multiple of ``s`` tokens except the
    last (which is zero-padded).
    """

    def __init__(self, features: int, rate: float, dtype=complex):
        self.rate = float(rate)
        self.dtype = np.dtype(dtype)
        self.carry = np.zeros(int(features), dtype=np.clongdouble if self.dtype.kind == "c" else np.longdouble)
        s = PREFIX_SUB
        g = self.rate
        m = np.arange(s)
        self._scaled = g == 0.0 or g * (s - 1) <= 300.0
        self._up = np.exp(g * m) if g else None
        self._down = np.exp(-g * m) if g else None
        self._down1 = np.exp(-g * (m + 1)) if g else None

    def __call__(self, v: np.ndarray) -> np.ndarray:
        from .causal import prefix_sum

        s, g = PREFIX_SUB, self.rate
        F, nb = v.shape
        nsub = -(-nb // s)
        if nsub * s != nb:
            v = np.concatenate([v, np.zeros((F, nsub * s - nb), dtype=v.dtype)], axis=1)
        v = v.reshape(F, nsub, s)
        if g == 0.0:
            local = np.cumsum(v, axis=-1)
        elif self._scaled:
            local = np.cumsum(v * self._up, axis=-1)
            local *= self._down
        else:
            local = prefix_sum(v, math.exp(-g), axis=-1)
        totals = local[:, :, -1]
        inclusive = prefix_sum(totals, math.exp(-g * s), axis=-1)
        start = np.empty((F, nsub), dtype=local.dtype)  # the state before each sub-block
        start[:, 0] = 0.0
        start[:, 1:] = inclusive[:, :-1]
        if g == 0.0:
            start += self.carry.astype(local.dtype)[:, None]
            local += start[:, :, None]
            self.carry += inclusive[:, -1]
        else:
            start += self.carry.astype(local.dtype)[:, None] * np.exp(-g * s * np.arange(nsub))
            local += start[:, :, None] * self._down1
            self.carry *= np.exp(np.longdouble(-g) * (nsub * s))
            self.carry += inclusive[:, -1]
        return local.reshape(F, nsub * s)[:, :nb]


def _phases(y: np.ndarray) -> np.ndarray:
    """``e^{i s}`` of the points ``y = r (cos s, sin s)`` (kept in a plan of the sources)."""
    return (y[:, 0] + 1j * y[:, 1]) / np.hypot(y[:, 0], y[:, 1])


class SpectralCircleField(SpectralField):
    """Fourier-series evaluation of the attention field on S^1 at arbitrary points.

    Parameters
    ----------
    model : AttentionModel
        A circle model (``d = 2``), SA or USA, any ``beta >= 0`` and ``Q, K, V``.
    tolerance : float
        Accuracy against the exact sums: ``|X - X_direct| <= tolerance * ||V||_2`` (SA) or
        ``<= tolerance * W e^{|A^T x|} ||V||_2`` (USA: the bound on ``|X(x)|``), W the
        total weight. See the module docstring for the derivation and the SA fallback.
    block : int
        Number of points processed at once; memory is O(block * L).

    Attributes
    ----------
    name : str
        ``"spectral"``.
    model : AttentionModel
    truncation : int
        Highest Fourier degree ``L`` kept (modes ``|n| <= L`` of the source angle).
    constant_rho : bool
        ``|A^T x|`` is constant (``A`` conformal or anticonformal): Bessel factors are
        shared by all targets and the target sum is one GEMM.
    z_min : float
        SA targets with scaled normalization ``Z_s < z_min`` use the direct sums.
    last_fallback : int
        Number of SA targets of the last call that did.

    Examples
    --------
    >>> import numpy as np, meanfield as mf
    >>> from meanfield.fields.spectral_circle import SpectralCircleField
    >>> model = mf.AttentionModel(d=2, beta=9.0)
    >>> f = SpectralCircleField(model)
    >>> f.truncation
    29
    >>> t = np.linspace(0, 2 * np.pi, 50, endpoint=False)
    >>> x = np.column_stack([np.cos(t), np.sin(t)])
    >>> w = 1 + np.cos(3 * t)
    >>> bool(np.abs(f(x, x, w) - mf.DirectField(model)(x, x, w)).max() < 1e-12)
    True
    """

    def __init__(self, model: AttentionModel, tolerance: float = 1e-12, block: int = 1024):
        self.tolerance = _check_model(model, tolerance)
        self.model = model
        self.block = max(1, int(block))
        r1, a1, r2, a2, L, constant, delta = _plan(model, self.tolerance)
        self.r1, self.a1, self.r2, self.a2 = r1, a1, r2, a2
        self.truncation = L
        self.constant_rho = constant
        self.z_min = 2.0 * (delta + _ROUNDOFF) / self.tolerance
        self.last_fallback = 0
        self._A = model.interaction
        self._ive = special.ive(np.arange(L + 1), r1 + r2) if constant else None
        self._direct = None

    def __repr__(self) -> str:
        m = self.model
        return (f"SpectralCircleField({m.kind}, beta={m.beta:g}, tolerance={self.tolerance:g}, "
                f"truncation={self.truncation})")

    # -----------------------------------------------------------------------------------
    def _moments(self, zs: np.ndarray, w: np.ndarray, nmax: int) -> np.ndarray:
        """``c_n = sum_j w_j zs_j^n`` for ``n = 0..nmax`` (``zs = e^{i s}``)."""
        b, nj = _split(nmax + 1)
        acc = np.zeros((nj, b), dtype=complex)
        for start in range(0, zs.size, self.block):
            sl = slice(start, start + self.block)
            R, P = _powers(zs[sl], b, nj)
            P *= w[sl]
            acc += P @ R.T  # acc[j, r] = sum w e^{i (j b + r) s}
        return acc.reshape(-1)[: nmax + 1]

    def _coefficients(self, c: np.ndarray) -> np.ndarray:
        """``D (L + 1, 3)``: per-mode coefficients of Z, the cos and the sin moments.

        ``F_f(x) = Re sum_{n=0}^{L} ive_n(rho) e^{-i n phi} D[n, f]`` (the factor 2 of the
        modes ``n > 0`` included).
        """
        L = self.truncation
        cm = np.concatenate([[np.conj(c[1])], c[: L]])  # c_{n-1}, n = 0..L
        cp = c[1 : L + 2]  # c_{n+1}
        D = np.stack([c[: L + 1], 0.5 * (cp + cm), -0.5j * (cp - cm)], axis=1)
        D[1:] *= 2.0
        return D

    def _evaluate_constant(self, zt: np.ndarray, D: np.ndarray) -> np.ndarray:
        """``Re sum_n D[n] zt^{-n}`` at every target (Bessel factors folded into D): (3, N)."""
        nm = D.shape[0]
        b, nj = _split(nm)
        Dp = np.zeros((nj * b, 3), dtype=complex)
        Dp[:nm] = D
        # Dmat[(j, f), r] = D[j b + r, f]
        Dmat = np.ascontiguousarray(Dp.reshape(nj, b, 3).transpose(0, 2, 1)).reshape(nj * 3, b)
        out = np.empty((3, zt.size))
        for start in range(0, zt.size, self.block):
            sl = slice(start, start + self.block)
            R, P = _powers(np.conj(zt[sl]), b, nj)
            T = (Dmat @ R).reshape(nj, 3, -1)
            acc = (T[0] * P[0]).real
            for j in range(1, nj):
                acc += (T[j] * P[j]).real
            out[:, sl] = acc
        return out

    def _evaluate_general(self, zt: np.ndarray, rho: np.ndarray, D: np.ndarray) -> np.ndarray:
        """``Re sum_n ive_n(rho_i) zt_i^{-n} D[n]`` with per-target Bessel factors: (3, N)."""
        L = self.truncation
        b, nj = _split(L + 1)
        Dre = np.ascontiguousarray(D.real.T)
        Dim = np.ascontiguousarray(-D.imag.T)
        out = np.empty((3, zt.size))
        for start in range(0, zt.size, self.block):
            sl = slice(start, start + self.block)
            R, P = _powers(np.conj(zt[sl]), b, nj)
            E = (P[:, None, :] * R[None, :, :]).reshape(nj * b, -1)[: L + 1]  # e^{-i n phi}
            H = _ive_rows(rho[sl], L, L + _RECURRENCE_EXTRA)
            out[:, sl] = Dre @ (H * E.real) + Dim @ (H * E.imag)
        return out

    def _target_logits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``rho = |A^T x|`` and ``zt = e^{i phi}`` of ``A^T x = rho (cos phi, sin phi)`` (kept
        in a plan of the targets)."""
        g = x @ self._A
        rho = np.hypot(g[:, 0], g[:, 1])
        zt = np.where(rho > 0, (g[:, 0] + 1j * g[:, 1]) / np.where(rho > 0, rho, 1.0), 1.0)
        return rho, zt

    # -----------------------------------------------------------------------------------
    def coefficients(self, sources, weights) -> np.ndarray:
        """The source moments ``c_n = sum_j w_j e^{i n s_j}``, ``n = 0..L+1``: linear in the
        weights, so partial sums over parts of the measure (MPI ranks) add up."""
        plan, y, w = self._measure(sources, weights, always_copy=True)
        zs = plan.prepared("source phases", _phases)
        with single_thread_blas():
            return self._moments(zs, w, self.truncation + 1)

    def evaluate(self, targets, coeffs, sources, weights, project: bool = True) -> np.ndarray:
        """The field at ``targets`` from the moments ``coeffs`` (:meth:`coefficients`) of the
        measure ``(sources, weights)``; the measure itself is used only by the SA targets
        that fall back to the direct sums. ``targets``: a plan of this field (:meth:`plan`)
        or an array. ``project=False``: the attention average before the tangential projection."""
        model = self.model
        x, y, w = check_field_inputs(self.model, as_points(targets), as_points(sources), weights)
        plan = self._plan_of(targets, x)
        c = np.asarray(coeffs)
        total = float(c[0].real)
        self.last_fallback = 0
        out = np.empty_like(x)
        if x.shape[0] == 0:
            return out
        # Per target: A^T x = rho (cos phi, sin phi), the logit is rho cos(s - phi).
        rho, zt = plan.prepared("target logits", self._target_logits)
        offset = model.logit_offset  # shifted USA: rho(x) - offset <= 0
        if not model.normalized:
            top = float(rho.max()) - offset
            if top > USA_LOGIT_LIMIT:
                raise FieldOverflowError(
                    f"USA attention overflows: beta <Qx, Ky> reaches {top:.1f} on the circle "
                    f"(exp overflows above {math.log(np.finfo(float).max):.0f}); {USA_OVERFLOW_FIX}"
                )
        if not total > 0.0:  # USA without mass
            out[:] = 0.0
            return out
        with single_thread_blas():
            D = self._coefficients(c)
            if self.constant_rho:
                F = self._evaluate_constant(zt, D * self._ive[:, None])
            else:
                F = self._evaluate_general(zt, rho, D)
        # F: scaled Z, sum w e^{logit} cos s, sum w e^{logit} sin s (factor e^{-rho(x)}).
        num = F[1:].T @ model.V.T
        if model.normalized:
            z = F[0]
            low = ~(z >= self.z_min * total)  # also catches NaN
            nlow = int(np.count_nonzero(low))
            if not nlow:
                out[:] = num / z[:, None]
            else:
                good = ~low
                out[good] = num[good] / z[good, None]
                if self._direct is None:
                    self._direct = DirectField(model)
                keep = w > 0
                out[low] = self._direct(x[low], y[keep], w[keep], project=project)
                self.last_fallback = nlow
        else:
            # Constant |A^T x|: the Bessel factors were scaled by e^{-(r1 + r2)} for all targets.
            scale = np.full_like(rho, self.r1 + self.r2) if self.constant_rho else rho
            out[:] = num * np.exp(scale - offset)[:, None]
            if not np.all(np.isfinite(out)):
                raise FieldOverflowError(f"USA attention sum overflowed double precision; {USA_OVERFLOW_FIX}")
        # Tangential projection P_x (fallback rows are tangent already; re-projecting is harmless).
        if project:
            self._project(out, x)
        return out

    # -----------------------------------------------------------------------------------
    def causal_tokens(self, x, w, alibi: float = 0.0, project: bool = True, rows=None) -> np.ndarray:
        """The causal field of ordered tokens by prefix sums of their Fourier moments.

        Token ``i`` attends to ``j <= i`` with the weights ``w_j e^{-lambda (i - j) / n}``
        (:mod:`meanfield.fields.causal`), so it sees the source moments of its own prefix,

        .. math::

            c^{(i)}_k = \\sum_{j \\le i} w_j e^{-\\lambda (i - j)/n} e^{i k s_j}
                      = e^{-\\lambda/n} c^{(i-1)}_k + w_i e^{i k s_i}, \\qquad k = 0..L+1,

        and its field is :meth:`evaluate`'s at ``x_i`` from ``c^{(i)}`` (the coefficients
        ``D^{(i)}`` of :meth:`_coefficients`, elementwise per token instead of one GEMM):
        ``O(n L)`` time and ``O(block L)`` memory instead of the ``n^2 / 2`` pairs of
        :func:`~meanfield.fields.causal.masked_direct`. The powers ``e^{i k s_j}`` are product
        trees (:func:`_power_table`), the prefix runs block by block (:class:`CausalPrefix`:
        round-off that does not grow with ``n``), the Bessel factors are shared (constant
        ``rho``) or per token (:func:`_ive_rows`). Accuracy as :meth:`evaluate`: SA tokens
        whose scaled ``Z_s`` falls below ``z_min`` times their prefix weight
        ``sum_{j <= i} w_j e^{-lambda (i - j)/n}`` (a clustered prompt at large ``beta``) are
        recomputed by the masked direct sums of those rows only (``last_fallback`` counts
        them, over all prompts); USA multiplies ``e^{rho(x_i) - offset}`` back and raises
        :class:`~meanfield.fields.attention.FieldOverflowError` where ``rho - offset`` exceeds
        :data:`~meanfield.fields.attention.USA_LOGIT_LIMIT` at a token evaluated.

        Parameters
        ----------
        x : array (n, 2) or (B, n, 2)
            Tokens in prompt order (a batch: ``B`` prompts sharing the weights).
        w : array (n,)
            Token weights (``1/n``: the empirical measure).
        alibi : float
            The ALiBi slope ``lambda >= 0``.
        project : bool
            ``False``: the attention average before ``P_x``.
        rows : int array, optional
            Increasing indices of the tokens to evaluate (default all); the prefix still runs
            over every token up to ``max(rows)``.

        Returns ``(..., len(rows), 2)``, as :func:`~meanfield.fields.causal.masked_direct`.
        """
        from .causal import _as_tokens, _check_alibi, _rows, masked_direct

        model = self.model
        x3, w, batch = _as_tokens(model, x, w)
        lam = _check_alibi(alibi)
        B, n, _ = x3.shape
        r = _rows(rows, n)
        self.last_fallback = 0
        out = np.zeros((B, r.size, 2))
        if r.size == 0 or B == 0:
            return out.reshape(batch + (r.size, 2))
        offset = model.logit_offset
        xr = x3[:, r]
        if not model.normalized:
            rho, _ = self._target_logits(xr.reshape(-1, 2))
            top = float(rho.max()) - offset
            if top > USA_LOGIT_LIMIT:
                raise FieldOverflowError(
                    f"USA attention overflows: beta <Qx, Ky> reaches {top:.1f} on the circle "
                    f"(exp overflows above {math.log(np.finfo(float).max):.0f}); {USA_OVERFLOW_FIX}"
                )
        L = self.truncation
        K = L + 2
        end = int(r[-1]) + 1
        budget = _CAUSAL_ELEMENTS * self.block
        # prompts per chunk and sub-blocks of PREFIX_SUB tokens per token block
        pb = max(1, min(B, budget // (K * PREFIX_SUB)))
        nb = PREFIX_SUB * max(1, min(PREFIX_SUBBLOCKS, budget // (K * pb * PREFIX_SUB)))
        low = np.zeros((B, r.size), dtype=bool)
        VT = model.V.T
        with single_thread_blas():
            for b0 in range(0, B, pb):
                b1 = min(B, b0 + pb)
                nbat = b1 - b0
                prefix = CausalPrefix(K * nbat, lam / n)
                for t0 in range(0, end, nb):
                    t1 = min(end, t0 + nb)
                    # per-token moments w_j e^{i k s_j}, (K, prompts, tokens), then their prefix
                    zs = _phases(x3[b0:b1, t0:t1].reshape(-1, 2))
                    T = _power_table(zs, K).reshape(K, nbat, t1 - t0)
                    T *= w[t0:t1]
                    C = prefix(T.reshape(K * nbat, t1 - t0)).reshape(K, nbat, t1 - t0)
                    lo, hi = np.searchsorted(r, [t0, t1])
                    if lo == hi:
                        continue
                    idx = r[lo:hi] - t0
                    C = C[:, :, idx].reshape(K, -1)
                    xt = x3[b0:b1, r[lo:hi]].reshape(-1, 2)
                    F = self._causal_sums(xt, C)
                    num = F[1:].T @ VT
                    if model.normalized:
                        total = C[0].real
                        bad = ~(F[0] >= self.z_min * total)  # also catches NaN and an empty prefix
                        vals = num / np.where(bad, 1.0, F[0])[:, None]
                        low[b0:b1, lo:hi] = bad.reshape(nbat, -1)
                    else:
                        rho, _ = self._target_logits(xt)
                        scale = np.full_like(rho, self.r1 + self.r2) if self.constant_rho else rho
                        vals = num * np.exp(scale - offset)[:, None]
                    out[b0:b1, lo:hi] = vals.reshape(nbat, hi - lo, 2)
        if model.normalized and low.any():
            for b in np.flatnonzero(low.any(axis=1)):
                out[b, low[b]] = masked_direct(model, x3[b], w, lam, project=False, rows=r[low[b]])
            self.last_fallback = int(np.count_nonzero(low))
        if not model.normalized and not np.all(np.isfinite(out)):
            raise FieldOverflowError(f"USA attention sum overflowed double precision; {USA_OVERFLOW_FIX}")
        if project:
            out -= np.einsum("bij,bij->bi", out, xr)[..., None] * xr
        return out.reshape(batch + (r.size, 2))

    def _causal_sums(self, xt: np.ndarray, C: np.ndarray) -> np.ndarray:
        """``F (3, N)``: the scaled ``Z``, ``sum w e^{logit} cos s`` and ``sum w e^{logit} sin s``
        at the targets ``xt (N, 2)``, target ``i`` from its own moments ``C[:, i]`` (``k =
        0..L+1``): with ``g_k = (2 - delta_k0) ive_k(rho_i) e^{-i k phi_i}``,
        ``F_0 = Re sum_k g_k c_k`` and, :meth:`_coefficients` written out,
        ``F_1 = Re(S_+ + S_-) / 2``, ``F_2 = Im(S_+ - S_-) / 2`` with
        ``S_+ = sum_k g_k c_{k+1}``, ``S_- = sum_k g_k c_{k-1}`` (``c_{-1} = conj(c_1)``)."""
        L = self.truncation
        rho, zt = self._target_logits(xt)
        G = _power_table(np.conj(zt), L + 1)
        if self.constant_rho:
            G *= self._ive[:, None]
        else:
            G *= _ive_rows(rho, L, L + _RECURRENCE_EXTRA)
        G[1:] *= 2.0
        F = np.empty((3, xt.shape[0]))
        F[0] = np.einsum("kn,kn->n", G.real, C[: L + 1].real) - np.einsum("kn,kn->n", G.imag, C[: L + 1].imag)
        plus = np.einsum("kn,kn->n", G, C[1 : L + 2])
        minus = G[0] * np.conj(C[1])
        if L:
            minus += np.einsum("kn,kn->n", G[1:], C[:L])
        F[1] = 0.5 * (plus + minus).real
        F[2] = 0.5 * (plus - minus).imag
        return F

"""The attention velocity field X[mu] -- the nonlocal convolution.

This module is the single implementation of the self-attention field used by the
finite-volume solver, the particle system, every backend and the MPI split.

For a measure ``mu = sum_j w_j delta_{y_j}`` on the unit sphere S^{d-1} in R^d,

.. math::

    X[\\mu](x) = P_x\\Big( \\frac{\\sum_j w_j e^{\\beta \\langle Qx, Ky_j\\rangle} V y_j}{Z(x)} \\Big),
    \\qquad Z(x) = \\sum_j w_j e^{\\beta \\langle Qx, Ky_j\\rangle} \\;\\text{(SA)}, \\quad Z = 1 \\;\\text{(USA)},

with ``P_x y = y - <x, y> x``.

The :class:`DirectField` backend evaluates these sums exactly, in blocks of targets, so
memory stays O(block x sources) and no N x M matrix is ever formed. It is the reference
every other backend is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import special

from .plans import PointPlan, as_points

__all__ = [
    "AttentionModel",
    "AttentionField",
    "DirectField",
    "FieldOverflowError",
    "USA_LOGIT_LIMIT",
    "USA_OVERFLOW_FIX",
    "check_field_inputs",
    "check_sources",
    "check_targets",
    "growth_rate",
    "single_thread_blas",
]


class FieldOverflowError(FloatingPointError):
    """The unnormalized (USA) field overflowed double precision."""


# ---------------------------------------------------------------------------------------
# BLAS threads: the sums are bandwidth bound, one thread per process is fastest here.
# ---------------------------------------------------------------------------------------
_CONTROLLER = None


class single_thread_blas:
    """Context manager pinning BLAS to one thread (threadpoolctl), cheap to re-enter.

    The controller that finds the loaded BLAS libraries is built once per process.
    """

    _depth = 0

    def __enter__(self):
        global _CONTROLLER
        cls = type(self)
        if cls._depth == 0:
            if _CONTROLLER is None:
                from threadpoolctl import ThreadpoolController

                _CONTROLLER = ThreadpoolController()
            self._limit = _CONTROLLER.limit(limits=1, user_api="blas")
        cls._depth += 1
        return self

    def __exit__(self, *exc):
        cls = type(self)
        cls._depth -= 1
        if cls._depth == 0:
            self._limit.restore_original_limits()
        return False


def _as_matrix(name: str, value, d: int) -> np.ndarray:
    if value is None:
        return np.eye(d)
    a = np.asarray(value, dtype=float)
    if a.shape != (d, d):
        raise ValueError(f"{name} must be a {d} x {d} matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries")
    return a


@dataclass(frozen=True)
class AttentionModel:
    """Parameters of one self-attention head on S^{d-1}.

    Parameters
    ----------
    d : int
        Ambient dimension (2: circle, 3: sphere); any ``d >= 2``.
    beta : float
        Inverse temperature, ``beta >= 0`` (``beta = 0`` is the consensus model).
    Q, K, V : array_like, shape (d, d), optional
        Query, key and value matrices; identity by default.
    normalized : bool
        ``True`` for softmax attention (SA), ``False`` for unnormalized attention (USA).
    shift : bool
        USA: use the shifted kernel ``exp(beta (<Qx, Ky> - c))``, ``c = ||Q^T K||_2``, i.e.
        the field, the growth rates and the energy times ``exp(-beta c)`` (a constant
        rescaling of time; the convention of the metastability paper's code). Every logit
        is then ``<= 0``, so nothing overflows at any ``beta``. No effect on SA, whose
        normalization cancels any constant offset of the logits (:attr:`logit_offset` is 0).
    """

    d: int
    beta: float = 1.0
    Q: np.ndarray = field(default=None)
    K: np.ndarray = field(default=None)
    V: np.ndarray = field(default=None)
    normalized: bool = True
    shift: bool = False

    def __post_init__(self):
        if int(self.d) != self.d or self.d < 2:
            raise ValueError(f"d must be an integer >= 2, got {self.d}")
        beta = float(self.beta)
        if not math.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")
        object.__setattr__(self, "d", int(self.d))
        object.__setattr__(self, "beta", beta)
        for name in "QKV":
            object.__setattr__(self, name, _as_matrix(name, getattr(self, name), self.d))
        object.__setattr__(self, "normalized", bool(self.normalized))
        object.__setattr__(self, "shift", bool(self.shift))
        offset = 0.0
        if self.shift and not self.normalized and beta > 0.0:
            offset = beta * float(np.linalg.norm(self.Q.T @ self.K, 2))
        object.__setattr__(self, "_logit_offset", offset)  # not a field: derived, read per block

    @property
    def kind(self) -> str:
        return "SA" if self.normalized else "USA"

    @property
    def logit_offset(self) -> float:
        """The constant subtracted from every logit: ``beta ||Q^T K||_2`` for shifted USA
        (so that every logit ``beta <Qx, Ky> - offset <= 0`` on the sphere), else 0 (SA
        cancels any offset in its normalization)."""
        return self._logit_offset

    @property
    def interaction(self) -> np.ndarray:
        """The bilinear form A = beta Q^T K, so that logits are <x, A y>."""
        return self.beta * (self.Q.T @ self.K)

    def isotropic(self) -> tuple[float, float] | None:
        """``(c, v)`` when ``Q^T K = c I`` and ``V = v I``, else ``None``.

        Isotropic models are rotation invariant: their field is diagonal in Fourier
        modes / spherical harmonics (Funk--Hecke).
        """
        qk = self.Q.T @ self.K
        eye = np.eye(self.d)
        c = np.trace(qk) / self.d
        v = np.trace(self.V) / self.d
        scale = max(1.0, np.abs(qk).max(), np.abs(self.V).max())
        if np.abs(qk - c * eye).max() <= 1e-14 * scale and np.abs(self.V - v * eye).max() <= 1e-14 * scale:
            return float(c), float(v)
        return None

    def rate_bound(self, max_mode: int = 64) -> float:
        """A characteristic rate (1/time) of the interaction, used to bound time steps.

        For an isotropic model this is the largest linear growth rate ``|sigma_l|``
        about the uniform density over degrees ``1..max_mode`` (exact). For general
        ``Q, K, V`` it is the same expression with ``c = ||Q^T K||_2`` and
        ``v = ||V||_2``, an estimate of the same time scale. A state far from uniform
        is additionally limited by the transport CFL condition in the solver. Shifted
        USA: the rates times ``exp(-beta ||Q^T K||_2)``, computed without overflow.
        """
        iso = self.isotropic()
        if iso is None:
            c = float(np.linalg.norm(self.Q.T @ self.K, 2))
            v = float(np.linalg.norm(self.V, 2))
        else:
            c, v = abs(iso[0]), abs(iso[1])
        ls = np.arange(1, max_mode + 1)
        shift = self.logit_offset != 0.0
        rates = np.abs(v) * np.abs(growth_rate(ls, self.beta * c, self.d, self.normalized, shift=shift))
        return float(max(rates.max(), 1e-300))


def growth_rate(l, beta: float, d: int = 2, normalized: bool = True, shift: bool = False):
    """Linear growth rate of a degree-``l`` harmonic about the uniform density.

    ``sigma_l = l (l + d - 2) a_l / beta`` with
    ``a_l = Gamma(d/2) (2/beta)^{d/2-1} I_{l+d/2-1}(beta)`` (USA); SA divides by ``a_0``.
    On S^1 this is ``k^2 I_k(beta)/beta``; on S^2 ``l(l+1) i_l(beta)/beta``. Valid for
    ``beta = 0`` (limit) and, through exponentially scaled Bessel functions, for large
    beta in SA. For a negative ``beta`` (e.g. ``c < 0`` in ``Q^T K = c I``) the same
    formula holds with ``I_nu(-x) = (-1)^{nu - d/2 + 1} I_nu(x)``.

    ``shift=True`` (USA only; SA is unchanged): the rates of the shifted kernel
    ``exp(beta (<x, y> - 1))``, i.e. the USA rates times ``exp(-|beta|)``, computed with
    scaled Bessel functions so that they stay finite for any ``beta``. (``beta`` here is
    the kernel exponent ``beta c``; for ``Q^T K = c I`` the model's offset
    ``beta ||Q^T K||_2`` is ``|beta c|``.)
    """
    l = np.asarray(l, dtype=float)
    nu = d / 2.0 - 1.0
    lam = l * (l + d - 2)
    if beta == 0.0:
        # a_l / beta -> 1/d for l = 1, 0 for l >= 2; a_0 -> 1.
        return np.where(l == 1, lam / d, 0.0)
    b = abs(beta)
    sign = np.where(np.mod(l, 2) == 1, np.sign(beta), 1.0)
    # a_l / a_0 = I_{l+nu}(b) / I_nu(b), computed with ive to avoid overflow.
    ratio = special.ive(l + nu, b) / special.ive(nu, b)
    rate = lam * ratio / beta * sign
    if normalized:
        return rate
    if shift:  # a_0 e^{-|beta|}: scaled, finite for any beta
        return rate * (math.gamma(d / 2.0) * (2.0 / b) ** nu * special.ive(nu, b))
    a0 = math.gamma(d / 2.0) * (2.0 / b) ** nu * special.iv(nu, b)
    return rate * a0


class AttentionField(Protocol):
    """What every backend of the nonlocal convolution provides.

    ``field(targets, sources, weights) -> X`` with ``targets (N, d)``, ``sources (M, d)``
    unit vectors and ``weights (M,)`` nonnegative; returns the tangent field ``(N, d)``, or
    with ``project=False`` the attention average before the projection ``P_x``. The
    package's backends also have ``plan(points)`` (:mod:`meanfield.fields.plans`): a
    :class:`~meanfield.fields.plans.PointPlan` that stands for the points in every later
    call, with what the backend precomputes for them made once; optional for other backends.
    """

    model: AttentionModel

    def __call__(self, targets: np.ndarray, sources: np.ndarray, weights: np.ndarray,
                 project: bool = True) -> np.ndarray: ...


def check_targets(model: AttentionModel, targets) -> np.ndarray:
    """Contiguous float targets ``(N, d)``, shape checked."""
    x = np.ascontiguousarray(targets, dtype=float)
    if x.ndim != 2 or x.shape[1] != model.d:
        raise ValueError(f"targets must have shape (N, {model.d}), got {x.shape}")
    return x


def check_sources(model: AttentionModel, sources, weights, partial: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous float ``(y (M, d), w (M,))``: shapes and nonnegative weights checked, and a
    positive total weight for SA unless the measure is ``partial`` (one MPI rank's part of
    the sources may carry no mass)."""
    d = model.d
    y = np.ascontiguousarray(sources, dtype=float)
    w = np.ascontiguousarray(weights, dtype=float)
    if y.ndim != 2 or y.shape[1] != d:
        raise ValueError(f"sources must have shape (M, {d}), got {y.shape}")
    if w.shape != (y.shape[0],):
        raise ValueError(f"weights must have shape ({y.shape[0]},), got {w.shape}")
    if np.any(w < 0):
        raise ValueError("weights must be nonnegative")
    if model.normalized and not partial and not w.sum() > 0:
        raise ValueError("SA field needs a positive total weight")
    return y, w


def check_field_inputs(model: AttentionModel, targets, sources, weights):
    """Contiguous float arrays ``(x, y, w)`` of a field call, checked (:func:`check_targets`,
    :func:`check_sources`)."""
    return (check_targets(model, targets),) + check_sources(model, sources, weights)


_LOG_MAX = math.log(np.finfo(float).max)
#: Largest USA logit accepted: exp of it times a sum of up to e^40 terms stays finite.
USA_LOGIT_LIMIT = _LOG_MAX - 40.0
#: What to do about a USA overflow (end of every overflow message).
USA_OVERFLOW_FIX = ("use model.shift = true (the kernel exp(beta (<Qx, Ky> - ||Q^T K||_2)), a rescaling of time), "
                    "SA (model.kind = \"SA\") or a smaller beta")


class DirectField:
    """Exact blocked sums: O(N M) time, O(block M) memory.

    Parameters
    ----------
    model : AttentionModel
    block_elements : int
        Target block size is ``max(1, block_elements // M)``; the default keeps the
        block's logit matrix at about 2 MiB so it stays in cache.
    """

    name = "direct"

    def __init__(self, model: AttentionModel, block_elements: int = 1 << 18):
        self.model = model
        self.block_elements = int(block_elements)

    def plan(self, points) -> PointPlan:
        """A :class:`~meanfield.fields.plans.PointPlan` of ``points`` (the direct sums prepare
        nothing: it holds the checked, contiguous points)."""
        return PointPlan(self, check_targets(self.model, as_points(points)))

    def __call__(self, targets, sources, weights, project: bool = True):
        """The field at ``targets``; with ``project=False`` the attention average itself,
        ``sum_j w_j e^{logit} V y_j / Z`` before the tangential projection (the authors'
        Euler scheme steps with it). Shifted USA: logits minus :attr:`AttentionModel.logit_offset`.
        ``targets`` and ``sources`` may be plans (:meth:`plan`) or arrays."""
        model = self.model
        x, y, w = check_field_inputs(model, as_points(targets), as_points(sources), weights)
        out = np.empty_like(x)
        if x.shape[0] == 0:
            return out
        if not np.all(w > 0):
            # Empty cells contribute nothing; dropping them also keeps the SA row maximum
            # over sources that carry mass (else exp could underflow to 0/0).
            keep = w > 0
            y, w = y[keep], w[keep]
        ky = y @ model.interaction.T  # logits are x . (A y)
        wvy = (y @ model.V.T) * w[:, None]
        block = max(1, self.block_elements // max(1, y.shape[0]))
        with single_thread_blas():
            for start in range(0, x.shape[0], block):
                stop = min(start + block, x.shape[0])
                out[start:stop] = self._block(x[start:stop], ky, w, wvy)
        if project:  # tangential projection P_x
            out -= np.einsum("ij,ij->i", out, x)[:, None] * x
        return out

    def bands(self, targets, sources, weights, project: bool = True) -> np.ndarray:
        """The fields of ``P`` measures on the same sources, ``weights (P, M)``: ``(P, N, d)``
        (the position bands of the causal mean field). One logit matrix per block of targets
        serves every band: ``exp`` once, then one matrix product with the ``(M, P)`` weights
        (and ``(M, P d)`` weighted values) instead of ``P`` calls. SA shifts each row by its
        largest logit over the sources any band weighs; a band whose sum underflows there
        (logits spread over more than ~700, i.e. ``beta ||Q^T K|| > 350``) is recomputed by
        :meth:`__call__` alone."""
        model = self.model
        W = np.ascontiguousarray(weights, dtype=float)
        x = check_targets(model, as_points(targets))
        y = np.ascontiguousarray(as_points(sources), dtype=float)
        if W.ndim != 2 or W.shape[1] != y.shape[0]:
            raise ValueError(f"band weights must have shape (P, {y.shape[0]}), got {W.shape}")
        for row in W:
            check_sources(model, y, row)
        P, d = W.shape[0], model.d
        out = np.empty((x.shape[0], P, d))
        if x.shape[0] and P:
            keep = np.any(W > 0, axis=0)
            if not np.all(keep):
                y, W = y[keep], W[:, keep]
            ky = y @ model.interaction.T
            vy = y @ model.V.T
            wt = np.ascontiguousarray(W.T)  # (M, P)
            wvy = (wt[:, :, None] * vy[:, None, :]).reshape(y.shape[0], P * d)
            block = max(1, self.block_elements // max(1, y.shape[0]))
            with single_thread_blas():
                for start in range(0, x.shape[0], block):
                    stop = min(start + block, x.shape[0])
                    out[start:stop] = self._block(x[start:stop], ky, wt, wvy).reshape(stop - start, P, d)
        out = np.ascontiguousarray(out.transpose(1, 0, 2))
        if model.normalized:
            bad = ~np.all(np.isfinite(out), axis=(1, 2))
            for p in np.flatnonzero(bad):  # underflow of a band's sum under the shared shift
                out[p] = self(x, as_points(sources), weights[p], project=False)
        if project:
            out -= np.einsum("pij,ij->pi", out, x)[:, :, None] * x[None]
        return out

    def batch(self, x, weights, project: bool = True) -> np.ndarray:
        """The field of each of ``B`` independent prompts on itself: ``x (B, n, d)`` (row ``b``
        the tokens of prompt ``b``, targets = sources), the same token weights ``weights (n,)``
        for every prompt; returns ``(B, n, d)``,

        .. math::

            X_b(x_{bi}) = P_{x_{bi}}\\Big( \\frac{\\sum_j w_j e^{\\langle x_{bi}, A x_{bj}\\rangle} V x_{bj}}{Z_{bi}} \\Big),
            \\qquad A = \\beta Q^T K,

        prompt ``b`` seeing only its own tokens. One vectorized pass: the logits of blocks of
        ``(prompts, rows, n)`` of about ``block_elements`` entries (``np.matmul`` over the
        prompt axis, then :meth:`_block`), so memory stays ``O(block + B n d)`` and no Python
        loop runs over single prompts (only over blocks). ``project=False``: the attention
        average before ``P_x``. Tokens of weight 0 are dropped as sources (as :meth:`__call__`)."""
        model = self.model
        x = np.ascontiguousarray(as_points(x), dtype=float)
        if x.ndim != 3 or x.shape[2] != model.d:
            raise ValueError(f"a batch of prompts must have shape (B, n, {model.d}), got {x.shape}")
        B, n, d = x.shape
        w = np.ascontiguousarray(weights, dtype=float)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), one per token of a prompt, got {w.shape}")
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError("token weights must be finite and nonnegative")
        if model.normalized and not w.sum() > 0:
            raise ValueError("SA field needs a positive total weight")
        out = np.empty_like(x)
        if B == 0 or n == 0:
            return out
        y = x
        if not np.all(w > 0):
            keep = w > 0
            y, w = x[:, keep], w[keep]
        m = y.shape[1]
        iso = model.isotropic()  # Q^T K = c I, V = v I: no d x d products (they cost as much as the logits)
        if iso is None:
            ky = y @ model.interaction.T  # (B, m, d): logits are x . (A y)
            wvy = (y @ model.V.T) * w[:, None]
        else:
            ky = (model.beta * iso[0]) * y
            wvy = y * (iso[1] * w)[:, None]
        rows = min(n, max(1, self.block_elements // max(1, m)))  # target rows per block
        pb = max(1, self.block_elements // max(1, rows * m))  # prompts per block
        with single_thread_blas():
            for b0 in range(0, B, pb):
                b1 = min(B, b0 + pb)
                for r0 in range(0, n, rows):
                    r1 = min(n, r0 + rows)
                    out[b0:b1, r0:r1] = self._block(x[b0:b1, r0:r1], ky[b0:b1], w, wvy[b0:b1])
        if project:
            out -= np.einsum("bij,bij->bi", out, x)[..., None] * x
        return out

    def _block(self, xb, ky, w, wvy, bias=None):
        """The sums of one block of targets ``xb (..., b, d)`` against the sources' ``ky = A y``,
        ``w`` and ``w V y`` (batched over leading axes); ``bias`` ``(b, m)`` is added to the
        logits (a causal mask: ``-inf`` where a source is hidden, the ALiBi bias elsewhere)."""
        logits = np.matmul(xb, np.swapaxes(ky, -1, -2))
        if bias is not None:
            logits += bias
        if self.model.normalized:
            logits -= logits.max(axis=-1, keepdims=True)
            np.exp(logits, out=logits)
            if w.ndim == 2:  # bands: w (M, P), wvy (M, P d)
                z = logits @ w
                num = (logits @ wvy).reshape(z.shape + (-1,))
                with np.errstate(invalid="ignore", divide="ignore"):
                    return num / z[..., None]
            return (logits @ wvy) / (logits @ w)[..., None]
        offset = self.model.logit_offset
        if offset:  # shifted USA: every logit <= 0 (up to rounding), nothing overflows
            logits -= offset
        top = logits.max() if logits.size else 0.0
        if top > USA_LOGIT_LIMIT:
            raise FieldOverflowError(
                f"USA attention overflows: beta <Qx, Ky> reaches {top:.1f} "
                f"(exp overflows above {_LOG_MAX:.0f}); {USA_OVERFLOW_FIX}"
            )
        np.exp(logits, out=logits)
        res = logits @ wvy
        if not np.all(np.isfinite(res)):
            raise FieldOverflowError(f"USA attention sum overflowed double precision; {USA_OVERFLOW_FIX}")
        return res

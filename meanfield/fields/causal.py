r"""Causal attention: the masked field of ordered tokens and the prefix measures of position bands.

A causal head lets the token at position ``s`` in ``[0, 1]`` attend only to positions
``s' <= s``, with an optional ALiBi bias ``-lambda (s - s')`` added to every logit:

.. math::

    X(s, x) = P_x\Big( \frac{\int_0^s \int e^{\beta \langle Qx, Ky\rangle - \lambda (s - s')}\, V y\, f(s', y)\,dy\,ds'}
                            {Z(s, x)} \Big),

``Z`` the same integral without ``V y`` (SA) or ``Z = 1`` (USA). The bias is a weight
``e^{-lambda (s - s')}`` on the source at ``s'``, so a causal field is the ordinary field of a
*prefix measure*: the sources at ``s' <= s`` weighted by it. This module holds the two ways
the package forms that measure; the field of every head is then its ordinary backend
(:mod:`meanfield.fields.attention`, the spectral backends), so the masked dynamics share
the one implementation of the attention field.

Tokens (the particles)
----------------------
``n`` tokens ``x_1..x_n`` in prompt order at ``s_i = i / n`` with weights ``w_j`` (``1/n``):
token ``i`` attends to ``j <= i`` with weight ``w_j e^{-lambda (i - j) / n}``.
:func:`causal_tokens` evaluates one head on all tokens (or on the rows ``rows`` of an MPI
split). A backend with a prefix-sum path (``backend.causal_tokens``: the spectral circle and
the isotropic sphere backends) computes per-token spectral coefficients, runs the decayed
prefix sum ``S_i = e^{-lambda/n} S_{i-1} + w_i c_i`` over them (:func:`prefix_sum`) and
evaluates each token against its own prefix: ``O(n L)`` instead of ``O(n^2)``. Every other
backend gets :func:`masked_direct`: the exact sums of
:class:`~meanfield.fields.attention.DirectField` with the mask and the bias added to the
logits, blocked so that no ``n x n`` matrix is formed, ``n^2 / 2`` pair evaluations (the
reference the prefix sums are tested against). Both take a batch of prompts ``(B, n, d)``
with the same weights.

Position bands (the mean field)
-------------------------------
The causal PDE holds a density on ``P`` bands ``[p h, (p + 1) h)`` (``h = 1 / P``) of ``s``
times the cells of the manifold: ``masses[p]`` the probability masses of band ``p``'s density
``f(s, .)`` (rows summing to 1; no transport in ``s``, so they stay so). The field of band
``p`` is taken at its centre ``s_p = (p + 1/2) h``, with ``f`` constant in ``s`` on each band,
the bias integrated exactly over the bands (:func:`band_measures`):

.. math::

    m_p = \sum_{q \le p} \omega_{pq}\, \mathrm{masses}_q, \qquad
    \omega_{pq} = \int_{[qh, (q+1)h) \cap [0, s_p]} e^{-\lambda (s_p - s')}\, ds',

i.e. ``omega_pp = (1 - e^{-lambda h/2}) / lambda`` (half of its own band) and, for ``q < p``,
``omega_pq = e^{-lambda h (p - q - 1/2)} (1 - e^{-lambda h}) / lambda`` (``h/2`` and ``h`` at
``lambda = 0``): again a decayed prefix sum over the bands, never a ``P^2`` loop. The field
of band ``p`` is the ordinary field of the measure ``m_p`` on the cells. SA needs no other
normalization (``Z`` sums the same ``m_p``); for USA ``m_p`` carries the total weight
``int_0^{s_p} e^{-lambda (s_p - s')} ds' = e^{-lambda s_p} W(s_p)``,
``W(s) = (e^{lambda s} - 1) / lambda``, as the mean field does. The midpoint in ``s`` and
the piecewise constant ``f`` make the scheme second order in ``h`` for data flat at ``s = 0``,
first order in the maximum norm otherwise (the first band; docs/causal.md: the measured
orders against the exact linearized solutions).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal

from .attention import AttentionModel, DirectField, single_thread_blas

__all__ = [
    "band_coefficients",
    "band_measures",
    "causal_tokens",
    "masked_direct",
    "prefix_sum",
    "split_rows",
    "token_decay",
]


def _check_alibi(alibi) -> float:
    if isinstance(alibi, bool) or not isinstance(alibi, (int, float, np.floating, np.integer)):
        raise ValueError(f"alibi must be a finite number >= 0, got {alibi!r}")
    alibi = float(alibi)
    if not (math.isfinite(alibi) and alibi >= 0):
        raise ValueError(f"alibi must be a finite number >= 0, got {alibi!r}")
    return alibi


def token_decay(alibi: float, n: int) -> float:
    """``e^{-lambda / n}``: the ALiBi weight between neighbouring tokens of an ``n``-token prompt."""
    return math.exp(-_check_alibi(alibi) / max(1, int(n)))


def prefix_sum(values: np.ndarray, decay: float, axis: int = 0, initial: np.ndarray | None = None) -> np.ndarray:
    """``S_i = decay S_{i-1} + values_i`` along ``axis`` (``S_{-1} = initial``, default 0).

    ``decay = 1`` is the plain cumulative sum; otherwise the recursion runs in C
    (``scipy.signal.lfilter``, real or complex), stable for ``0 <= decay <= 1``: every term
    is a convex-like combination, nothing grows.
    """
    values = np.asarray(values)
    if decay == 1.0:
        out = np.cumsum(values, axis=axis)
        if initial is not None:
            out += np.expand_dims(initial, axis)
        return out
    if initial is None:
        return signal.lfilter([1.0], [1.0, -decay], values, axis=axis)
    zi = np.expand_dims(decay * np.asarray(initial), axis)
    return signal.lfilter([1.0], [1.0, -decay], values, axis=axis, zi=zi)[0]


def band_coefficients(positions: int, alibi: float) -> tuple[float, float, float]:
    """``(a, kappa, own)`` of the band recursion ``G_p = a G_{p-1} + kappa masses_{p-1}``,
    ``m_p = G_p + own masses_p`` (module docstring): ``a = e^{-lambda h}``,
    ``kappa = e^{-lambda h/2} (1 - e^{-lambda h}) / lambda``, ``own = (1 - e^{-lambda h/2}) / lambda``."""
    P = int(positions)
    if P < 1:
        raise ValueError(f"positions must be an integer >= 1, got {positions!r}")
    lam = _check_alibi(alibi)
    h = 1.0 / P
    if lam == 0.0:
        return 1.0, h, 0.5 * h
    a = math.exp(-lam * h)
    kappa = math.exp(-0.5 * lam * h) * (-math.expm1(-lam * h)) / lam
    own = -math.expm1(-0.5 * lam * h) / lam
    return a, kappa, own


def band_measures(masses: np.ndarray, alibi: float) -> np.ndarray:
    """The prefix measures ``m (P, M)`` whose fields are the causal field of each band.

    ``masses (P, M)``: row ``p`` the probability masses of band ``p``'s density on the ``M``
    cells. Row ``p`` of the result weights the cells as band ``p``'s centre sees them (module
    docstring); ``O(P M)``.
    """
    masses = np.asarray(masses, dtype=float)
    if masses.ndim != 2:
        raise ValueError(f"masses must have shape (P, M), got {masses.shape}")
    a, kappa, own = band_coefficients(masses.shape[0], alibi)
    if masses.shape[0] == 1:
        return own * masses
    G = np.zeros_like(masses)
    G[1:] = prefix_sum(kappa * masses[:-1], a, axis=0)
    G += own * masses
    return G


def split_rows(n: int, size: int, rank: int) -> np.ndarray:
    """The token rows of rank ``rank`` of ``size`` in a causal split: contiguous, balanced by
    the pairs they sum (row ``i`` sums ``i + 1`` sources): boundaries at ``n sqrt(r / size)``."""
    bounds = np.round(int(n) * np.sqrt(np.arange(int(size) + 1) / int(size))).astype(np.intp)
    return np.arange(bounds[rank], bounds[rank + 1])


def _as_tokens(model: AttentionModel, x, w) -> tuple[np.ndarray, np.ndarray, tuple]:
    """``(x (B, n, d), w (n,), batch shape)``, checked."""
    x = np.ascontiguousarray(x, dtype=float)
    if x.ndim < 2 or x.shape[-1] != model.d:
        raise ValueError(f"tokens must have shape (..., n, {model.d}), got {x.shape}")
    n = x.shape[-2]
    w = np.ascontiguousarray(w, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), one per token, got {w.shape}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("token weights must be finite and nonnegative")
    batch = x.shape[:-2]
    return x.reshape(-1, n, model.d), w, batch


def _rows(rows, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n)
    r = np.asarray(rows, dtype=np.intp)
    if r.ndim != 1 or (r.size and (r.min() < 0 or r.max() >= n or np.any(np.diff(r) <= 0))):
        raise ValueError(f"rows must be increasing token indices in [0, {n})")
    return r


def masked_direct(model: AttentionModel, x, w, alibi: float = 0.0, project: bool = True, rows=None,
                  block_elements: int = 1 << 18) -> np.ndarray:
    """The causal field of ordered tokens by exact masked sums.

    Parameters
    ----------
    model : AttentionModel
    x : array (n, d) or (B, n, d)
        Tokens in prompt order (a batch: ``B`` prompts, the same weights).
    w : array (n,)
        Token weights (``1/n``: the empirical measure).
    alibi : float
        The ALiBi slope ``lambda``: logit bias ``-lambda (i - j) / n``.
    project : bool
        ``False``: the attention average before ``P_x``.
    rows : int array, optional
        Increasing indices of the tokens to evaluate (an MPI rank's share); default all.

    Returns ``(..., len(rows), d)``. Token ``i`` sums ``j <= i``: ``sum_i (i + 1)`` pair
    evaluations, in blocks of about ``block_elements`` logits (memory ``O(block)``). The
    kernel, overflow checks and the SA stabilization are :class:`DirectField`'s.
    """
    x3, w, batch = _as_tokens(model, x, w)
    lam = _check_alibi(alibi)
    B, n, d = x3.shape
    r = _rows(rows, n)
    out = np.empty((B, r.size, d))
    if r.size == 0 or B == 0:
        return out.reshape(batch + (r.size, d))
    kernel = DirectField(model)
    ky = x3 @ model.interaction.T  # logits are x . (A y)
    wvy = (x3 @ model.V.T) * w[:, None]
    with single_thread_blas():
        start = 0
        while start < r.size:
            # rows r[start:stop] see sources 0..r[stop-1]; grow the block while it fits
            m = int(r[start]) + 1
            nb = max(1, block_elements // max(1, B * m))
            stop = min(r.size, start + nb)
            while stop > start + 1 and B * (stop - start) * (int(r[stop - 1]) + 1) > 2 * block_elements:
                stop = start + max(1, (stop - start) // 2)
            rb = r[start:stop]
            m = int(rb[-1]) + 1
            j = np.arange(m)
            gap = rb[:, None] - j[None, :]
            bias = np.where(gap >= 0, (-lam / n) * gap, -np.inf) if lam else np.where(gap >= 0, 0.0, -np.inf)
            pb = max(1, block_elements // max(1, rb.size * m))
            for b0 in range(0, B, pb):
                b1 = min(B, b0 + pb)
                out[b0:b1, start:stop] = kernel._block(x3[b0:b1, rb], ky[b0:b1, :m], w[:m], wvy[b0:b1, :m], bias=bias)
            start = stop
    if project:
        xr = x3[:, r]
        out -= np.einsum("bij,bij->bi", out, xr)[..., None] * xr
    return out.reshape(batch + (r.size, d))


def causal_tokens(backend, x, w, alibi: float = 0.0, project: bool = True, rows=None) -> np.ndarray:
    """One head's causal field on ordered tokens: the backend's prefix-sum path
    (``backend.causal_tokens``) where it has one, else :func:`masked_direct` with its model.
    Arguments as :func:`masked_direct`."""
    fast = getattr(backend, "causal_tokens", None)
    if fast is not None:
        return fast(x, w, alibi, project=project, rows=rows)
    return masked_direct(backend.model, x, w, alibi, project=project, rows=rows)

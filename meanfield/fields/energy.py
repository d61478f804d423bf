"""The interaction energy of a weighted point set under an attention model.

``E = 1/(2 beta) sum_ij w_i w_j (exp(beta <Q x_i, K x_j>) - 1)``, summed directly in blocks
or, for rotation-invariant kernels, spectrally (the Fourier moments on S^1, the
spherical-harmonic moments of :class:`~meanfield.fields.spectral_sphere.SpectralSphereField`
on S^2). It lives apart from :mod:`meanfield.fields.attention` so that the kernel module
never imports a backend: this module imports both, one way.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from .attention import AttentionModel, single_thread_blas

__all__ = ["ENERGY_SPECTRAL_MIN_POINTS", "energy"]


#: ``energy(method="auto")`` sums directly below this many points, spectrally above (where
#: the model allows it). Measured on S^1 (shifted USA, beta 5): direct 37 / 142 / 579 ms at
#: 1024 / 2048 / 4096 points, spectral 0.5-0.7 ms, equal to 3e-16 relative.
ENERGY_SPECTRAL_MIN_POINTS = 1000


def energy(model: AttentionModel, points, weights, block_elements: int = 1 << 18, method: str = "auto",
           shifted: bool | None = None) -> float:
    """Interaction energy ``E = 1/(2 beta) sum_ij w_i w_j (exp(beta <Q x_i, K x_j>) - 1)``.

    For ``Q = K = V = I`` this is the functional that USA ascends; ``beta = 0`` gives the
    continuous limit ``<Q m, K m>/2`` with ``m = sum_i w_i x_i`` (also used when
    ``beta Q^T K`` vanishes in double precision, e.g. ``Q = 0``: then ``E = 0``).

    Shifted USA (``model.shift``): ``exp(-beta c) E`` with ``c = ||Q^T K||_2``
    (:attr:`AttentionModel.logit_offset`), the functional the shifted USA ascends, computed
    as ``1/(2 beta) sum_ij w_i w_j e^{-beta c} (e^{s_ij} - 1)`` term by term without
    overflow for any ``beta`` (``s_ij`` the logits). ``shifted`` overrides the choice:
    ``True`` gives ``exp(-beta c) E`` for any model (e.g. SA at large ``beta``, where ``E``
    itself exceeds double precision), ``False`` the unshifted ``E``; ``None`` (default)
    follows :attr:`AttentionModel.logit_offset`.

    ``method``: ``"direct"`` sums the pairs in blocks (O(n^2)); ``"spectral"`` diagonalizes
    a rotation-invariant kernel (S^1 with ``Q^T K`` in span{I, J}: ``sum_n I_n(beta r)
    cos(n phi) |c_n|^2`` over the Fourier moments ``c_n``; S^2 with ``Q^T K = c I``:
    Funk--Hecke, ``sum_l 4 pi i_l(beta c) sum_m |a_lm|^2`` over the harmonic moments computed
    by ducc0), O(n L) with ``L ~ sqrt(beta)``, relative accuracy ~1e-12 of the double sum;
    the ``-1`` of the kernel is taken out of the zeroth mode analytically (``I_0 - 1``,
    ``i_0 - 1`` by their series for small arguments), so a tiny ``beta c`` keeps its
    relative accuracy. ``"auto"`` (default) takes the spectral form from
    :data:`ENERGY_SPECTRAL_MIN_POINTS` points on where it applies.
    """
    if method not in ("auto", "direct", "spectral"):
        raise ValueError(f"unknown energy method {method!r} (choose 'auto', 'direct' or 'spectral')")
    x = np.asarray(points, dtype=float)
    w = np.asarray(weights, dtype=float)
    keep = w != 0
    x, w = x[keep], w[keep]
    beta = model.beta
    qk = model.Q.T @ model.K
    if beta == 0.0 or not beta * float(np.abs(qk).max()) > 0.0:
        m = w @ x
        return 0.5 * float(m @ qk @ m)
    if shifted is None:
        offset = model.logit_offset
    else:
        offset = beta * float(np.linalg.norm(qk, 2)) if shifted else 0.0
    if method != "direct" and (method == "spectral" or x.shape[0] >= ENERGY_SPECTRAL_MIN_POINTS):
        excess = _spectral_excess(model, qk, x, w, offset)
        if excess is not None:
            return excess / (2.0 * beta)
        if method == "spectral":
            raise ValueError("the spectral energy needs Q^T K in span{I, J} on S^1 or Q^T K = c I on S^2")
    ky = x @ qk.T
    block = max(1, block_elements // max(1, x.shape[0]))
    total = 0.0
    with single_thread_blas():
        for start in range(0, x.shape[0], block):
            s = x[start : start + block] @ ky.T
            s *= beta
            if offset:
                s = _shifted_expm1(s, offset)
            else:
                np.expm1(s, out=s)
            total += float(w[start : start + block] @ (s @ w))
    return total / (2.0 * beta)


def _shifted_expm1(s: np.ndarray, offset: float) -> np.ndarray:
    """``e^{-offset} (e^s - 1)`` elementwise for logits ``s <= offset``, without overflow and
    to full relative accuracy: ``(1 - e^{-s}) e^{s - offset}`` for ``s >= 0``,
    ``expm1(s) e^{-offset}`` below."""
    pos = s >= 0
    g = -np.expm1(-np.abs(s))
    g[~pos] *= -1.0
    np.maximum(s, 0.0, out=s)
    s -= offset
    np.exp(s, out=s)
    s *= g
    return s


def _zeroth_minus_one(r: float, offset: float, spherical: bool) -> float:
    """``e^{-offset} (f(r) - 1)`` for ``f = I_0`` (circle) or ``f = i_0`` (sphere, even in
    ``r``): the zeroth kernel mode without its constant, accurate for tiny ``r`` and finite
    for any ``r <= offset + 700``."""
    r = abs(float(r))
    if r <= 1.0:  # the series from k = 1: (r^2/4)^k / (k!)^2, resp. r^{2k} / (2k+1)!
        term, total, r2 = 1.0, 0.0, r * r
        for k in range(1, 30):
            term *= r2 / (4.0 * k * k) if not spherical else r2 / ((2.0 * k) * (2.0 * k + 1.0))
            total += term
            if term < 1e-17 * total:
                break
        return total * math.exp(-offset)
    scaled = math.sqrt(math.pi / (2.0 * r)) * special.ive(0.5, r) if spherical else special.ive(0, r)
    return float(scaled) * math.exp(r - offset) - math.exp(-offset)


def _spectral_excess(model: AttentionModel, qk: np.ndarray, x: np.ndarray, w: np.ndarray,
                     offset: float = 0.0) -> float | None:
    """``e^{-offset} sum_ij w_i w_j (exp(beta <x_i, Q^T K x_j>) - 1)`` for rotation-invariant
    kernels, else None. Needs ``beta Q^T K != 0``."""
    beta = model.beta
    scale = max(1.0, float(np.abs(qk).max()))
    total = float(w.sum())
    if model.d == 2:
        a, b = 0.5 * (qk[0, 0] + qk[1, 1]), 0.5 * (qk[1, 0] - qk[0, 1])
        if np.abs(qk - np.array([[a, -b], [b, a]])).max() > 1e-14 * scale:
            return None
        r, phi = beta * math.hypot(a, b), math.atan2(b, a)
        # modes until I_n(r) e^{-r} is negligible against I_0(r) e^{-r}
        L = 8
        while special.ive(L, r) > 1e-18 * special.ive(0, r):
            L *= 2
        ive = special.ive(np.arange(L + 1), r)
        L = int(np.flatnonzero(ive > 1e-18 * ive[0]).max()) + 1
        ive = ive[: L + 1]
        z = (x[:, 0] + 1j * x[:, 1]) / np.hypot(x[:, 0], x[:, 1])
        power = w.astype(complex)
        c = np.empty(L + 1, dtype=complex)
        for n in range(L + 1):  # c_n = sum_i w_i z_i^n
            c[n] = power.sum()
            power = power * z
        mag = np.abs(c) ** 2
        series = 2.0 * np.sum(ive[1:] * np.cos(np.arange(1, L + 1) * phi) * mag[1:])
        return float(series) * math.exp(r - offset) + total * total * _zeroth_minus_one(r, offset, False)
    if model.d == 3:
        c = float(np.trace(qk)) / 3.0
        if np.abs(qk - c * np.eye(3)).max() > 1e-14 * scale:
            return None
        from .spectral_sphere import SpectralSphereField  # here: ducc0 is imported on first use

        # Funk--Hecke: sum_ij w_i w_j e^{b <x_i, x_j>} = sum_lm lambda_l |a_lm|^2, with the
        # moments a_lm and the scaled eigenvalues lambda_l e^{-|b|} of the field backend;
        # the l = 0 term is i_0(b) W^2 (|a_00|^2 = W^2 / 4 pi), its -W^2 taken out exactly
        field = SpectralSphereField(AttentionModel(d=3, beta=beta, Q=c * np.eye(3)), tolerance=1e-13)
        alm = field.coefficients(x, w).view(complex)
        series = field.higher_power(alm)
        return series * math.exp(abs(field.b) - offset) + total * total * _zeroth_minus_one(field.b, offset, True)
    return None

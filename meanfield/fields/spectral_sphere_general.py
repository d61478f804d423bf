r"""Spectral attention field on S^2 for general ``Q, K, V``: a separable kernel expansion.

For ``mu = sum_j w_j delta_{y_j}`` the field is ``X(x) = P_x(V M(x) / Z(x))`` (SA) or
``P_x(V M(x))`` (USA) with ``Z(x) = sum_j w_j k(x, y_j)``, ``M(x) = sum_j w_j k(x, y_j) y_j``
and ``k(x, y) = exp(x^T A y)``, ``A = beta Q^T K``. :class:`GeneralSphereField` evaluates them
from a truncated expansion of the kernel in spherical harmonics of ``x`` and ``y``, built
once per model (:mod:`meanfield.fields.spectral_sphere` covers isotropic models without it).

Frames and scale
----------------
With the singular value decomposition ``A = U Sigma W^T`` and ``x' = U^T x``, ``y' = W^T y``
the logit is ``x'^T Sigma y'``, ``Sigma = diag(sigma_1 >= sigma_2 >= sigma_3 >= 0)``, and
``M = W M'`` with ``M'`` the same sum over ``y'``. For a target ``x`` the largest logit over
the sphere is ``rho(x) = |Sigma x'|``, anywhere in ``[sigma_3, sigma_1]``. The expansion is
of the *scaled* kernel ``k_s(x', y') = exp(x'^T Sigma y' - s(x')) <= 1``:

* ``s = sigma_1`` (USA, and SA when ``sigma_1 - sigma_3 <= 0.5``): the x content of ``k_s``
  is then that of ``exp(b <x, u>)`` with ``b <= sigma_1`` (Funk--Hecke), so both degrees are
  :func:`~meanfield.fields.spectral_sphere.spectral_lmax` ``(sigma_1, tolerance)``;
* ``s(x') = (sum_i sigma_i^2 x_i'^2 + a^2) / (2 a)``, ``a = (sigma_1 + sigma_3) / 2`` (SA,
  anisotropic ``A``): a quadratic upper bound of ``rho(x)`` (``sqrt(t) <= (t + a^2)/(2a)``)
  that exceeds it by at most ``(sigma_1 - sigma_3)^2 / (4 (sigma_1 + sigma_3))``. With the
  constant scale, ``Z e^{-sigma_1}`` would fall to ``e^{-(sigma_1 - sigma_3)}`` of its largest
  value for every measure (e^{-27} for ``sigma = (45, 30, 18)``) and the SA quotient would
  lose that much accuracy; the quadratic scale keeps ``e^{-2.9}`` there, for an x degree
  about 10..40% higher (found by a probe, below). USA keeps the constant scale: its error
  is relative to the largest values, ``e^{sigma_1}``, where ``s = rho`` is best.

The expansion
-------------
``k_s(x', y') = sum_{p, q} C_pq Y_p(x') Y_q(y')`` over real orthonormal harmonics
(ducc0's ``Y_lm`` with ``sqrt(2) Re``, ``-sqrt(2) Im``; :class:`_Layout`) of degree
``<= lmax_x`` in ``x`` and ``<= lmax_y`` in ``y``. Every real harmonic has a parity under
the three coordinate reflections and ``k_s`` is invariant under reflecting ``x'`` and ``y'``
together, so ``C`` is block diagonal in eight classes: ``8 sum_c P_c Q_c`` bytes, about
``(lmax_x + 1)^2 (lmax_y + 1)^2`` bytes. ``C_pq = int Y_p(x') g_q(x') dx'`` where the ``y``
integral is exact (Funk--Hecke): ``g_q(x') = 4 pi i_l(rho) e^{rho - s(x')} e^{-rho}
Y_q(Sigma x' / rho)`` with scaled Bessel functions (no overflow at any ``beta``); the ``x``
integral is a Gauss--Legendre quadrature exact to degree ``2 (lmax_x + 8) + 1`` (ducc0's
nodes and weights), folded onto the positive octant and factorized like a spherical
harmonic transform (longitudes, then rings): ``O(lmax_x^3 lmax_y^2)`` flops instead of
``O(lmax_x^4 lmax_y^2)``; evaluating the ``y`` harmonics at the quadrature points dominates.

Truncation. ``lmax_y`` from the Funk--Hecke tail (``tau_y`` per unit mass, relative to each
target's own scale). ``lmax_x`` for the quadratic scale: the x content of ``k_s(., y')`` is
measured by Gauss--Legendre analysis for 71 directions ``y'`` (the positive octant;
reflections do not change it), read down to 1e-12 and continued geometrically below, and
cut where the tail falls below ``1e-2 epsilon i_0(sigma_1) e^{-sigma_1}`` (``tau_x``).
Measured ``(lmax_x, lmax_y)``: ``(24, 15)``, ``(49, 33)``, ``(81, 56)``, ``(127, 88)`` for
``sigma = beta (1.20, 0.72, 0.05)`` at ``beta = 1, 9, 30, 80``; the reconstructed kernel agrees
with ``k_s`` to about 3e-14 at random points.

Each call
---------
:meth:`GeneralSphereField.coefficients`: four adjoint syntheses at the sources ``y'``
(ducc0, weights ``w`` and ``w y'_c``) give the real moments ``R`` (``(lmax_y + 1)^2 x 4``),
linear in the weights -- MPI ranks sum their parts. :meth:`GeneralSphereField.evaluate`:
``T = C R`` (eight GEMMs), four syntheses at the targets ``x'`` give ``Z_s = Z e^{-s}`` and
``M'_s``; then ``X = P_x(V W M'_s / Z_s)`` (SA) or ``P_x(V W M'_s e^{s(x)})`` (USA, which
raises :class:`~meanfield.fields.attention.FieldOverflowError` when ``sigma_1`` exceeds
:data:`~meanfield.fields.attention.USA_LOGIT_LIMIT` or the result is not finite). ``W``, the total
weight, is read from the coefficients (``sqrt(4 pi) R_00``). Cost: ``O((N + M) s^2 +
lmax^2 log lmax)`` for the transforms plus the GEMM (:func:`general_cost`); ``sigma_1 = 0``
(``beta = 0``) is the closed form ``P_x(V sum_j w_j y_j)`` (``/ W`` for SA).

``project=False`` returns ``V W M'_s / Z_s`` (SA) or ``V W M'_s e^{s(x)}`` (USA) before the
projection: ``M'`` is the whole vector sum, so this is the same computation minus ``P_x``,
with the same accuracy (the SA error estimate below bounds the whole vector).

Shifted USA (``model.shift``): the logit offset ``beta ||Q^T K||_2 = sigma_1``
(:attr:`~meanfield.fields.attention.AttentionModel.logit_offset`) turns the factor ``e^{s(x)}`` into
``e^{s(x) - sigma_1} = 1`` (constant scale): finite at any ``beta``. Large ``beta`` is
limited by the coefficient matrix instead (``~(lmax + 1)^4`` bytes, ``lmax ~ sqrt(beta)``:
refused from ``beta ||Q^T K||_2 ~ 550`` on at the default tolerance, earlier for anisotropic
``A``; see Limits), and
``backend = "auto"`` then takes the direct sums.

SA accuracy and the direct fallback
-----------------------------------
The transforms err by at most ``eta`` times the bounds
``B_f = sum_l sqrt((2l+1)/4pi) |T_{l,f}| + kappa |R_f|_2`` (``f`` = Z or a component of M;
the first term bounds the synthesized function everywhere, the second the moments' own
error carried through ``C``, ``kappa = sum_l sqrt((2l+1)/4pi) |C_l|_F / (lmax_y + 1)``).
Per target the estimated SA error, relative to ``||V||_2``, is

.. math::

    \mathrm{err}(x) = \frac{\eta B_M + W \tau + r\,(\eta B_Z + W \tau)}{Z_s(x)} + 10^{-14},
    \qquad r = \min(1, |M'_s(x)| / Z_s(x)), \quad \tau = \tau_x + \tau_y,

with ``eta = (2 if lmax <= 24 else 0.5) epsilon + 5e-16 (lmax + 50)`` (:func:`_transform_accuracy`;
the NUFFT accuracy ``epsilon = max(3e-13, 1e-3 tolerance)``). Measured over random,
von Mises--Fisher, clustered and point measures, random models with ``beta`` 1..80 and
``epsilon`` 3e-13..1e-9, the errors of ``Z_s`` and ``M'_s`` were at most 0.61 ``epsilon B``
(``lmax <= 24``) and 0.14 ``epsilon B`` above, so the estimate exceeds them by a factor of 3
or more (and the field error by 30 or more). Targets with ``err(x) > tolerance`` or
``Z_s(x) <= 10 (eta B_Z + W tau)`` are first recomputed by the split of the isotropic backend
(:mod:`meanfield.fields.spectral_sphere`): the heaviest sources summed directly in the target
scale (``Z_h``, ``M'_h``), the light rest transformed from its own moments, whose errors scale
with its weight (``last_split_count``); those whose estimate still exceeds the tolerance by
:class:`~meanfield.fields.attention.DirectField` (``last_fallback_count``), so SA meets
``tolerance * ||V||_2`` at every target. Since ``epsilon`` cannot go below 3e-13 and ``Z_s``
varies over the sphere with the anisotropy even for a uniform measure, ``tolerance = 1e-12``
leaves most SA targets above the tolerance once ``beta ||A||`` is large
(measured on random models, icosahedral level 3: 0..78% at ``beta = 1``, 70..100% at
``beta = 9``, all at ``beta = 30``; there the spectral values alone err by up to 2e-11 of
``max |X|``). At the default ``tolerance = 1e-10`` (the same transforms) a smooth density
needs 0..2% at ``beta = 9``; single clusters 37..71%, which the split takes (level 4: at most
1% left to the direct sums). USA has no
fallback: its error is absolute, ``~ eta ||V|| W e^{sigma_1}``, measured 2e-13 of ``max |X|``
or less.

Limits
------
The coefficient matrix grows like ``beta^2 ||A / beta||^2 log(1/tol)^2``: a model whose
matrix would exceed :data:`MAX_COEFFICIENT_BYTES` (2 GB) is refused with ``ValueError``
(a cheap lower bound first, ``(lmax_y + 1)^4`` bytes, then the planned size), and
``backend = "auto"`` then uses the direct sums (:func:`general_cost` is ``inf``).
Construction takes 70..140 ns per matrix entry on one core (0.02 s at ``beta = 9``, 0.4 s at
``beta = 30``, 4.7 s for 445 MB).
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np

from .attention import (USA_LOGIT_LIMIT, USA_OVERFLOW_FIX, AttentionModel, FieldOverflowError,
                        single_thread_blas)
from .plans import PointPlan, as_points
from .spectral import SphereSpectralField
from .spectral_sphere import SpectralSphereField, spectral_cost
from .sphere_transforms import (ABSOLUTE_FLOOR, MIN_TOLERANCE, TAIL_FRACTION, nufft_epsilon, point_angles,
                                scaled_in, spectral_lmax, tails)

__all__ = ["AMORTIZED_CALLS", "GeneralSphereField", "MAX_COEFFICIENT_BYTES", "general_cost", "general_plan",
           "real_harmonics", "spectral_sphere_cost", "spectral_sphere_field"]

#: Largest coefficient matrix (bytes) the backend builds; beyond it the constructor raises
#: ``ValueError`` and ``backend = "auto"`` uses the direct sums.
MAX_COEFFICIENT_BYTES = 2.0e9
#: ``sigma_1 - sigma_3`` below which the target scale is the constant ``sigma_1`` (SA too).
_ANISOTROPY_QUADRATIC = 0.5
#: Extra Gauss--Legendre rings beyond ``lmax_x + 1`` in the construction quadrature.
_QUADRATURE_MARGIN = 8
#: The probed x content is read down to this level (well above its round-off plateau).
_PROBE_LEVEL = 1e-12
_SQRT2 = math.sqrt(2.0)


# ---------------------------------------------------------------------------------------
# Real spherical harmonics in ducc0's convention
# ---------------------------------------------------------------------------------------
class _Layout:
    """The real orthonormal harmonics up to degree ``L`` and their reflection classes.

    Layout order: the ``(L + 1)(L + 2)/2`` "cosine" functions in ducc0's triangular ``a_lm``
    order (``m >= 0``), then the "sine" functions (``m > 0``) in the same order, where, with
    ducc0's complex ``Y_lm`` (Condon--Shortley phase), ``Y^c_l0 = Y_l0``,
    ``Y^c_lm = sqrt(2) Re Y_lm`` and ``Y^s_lm = -sqrt(2) Im Y_lm``. A real function
    ``f = sum_p t_p Y_p`` then has ``a_l0 = t^c_l0``, ``a_lm = (t^c_lm + i t^s_lm) / sqrt(2)``,
    and the adjoint synthesis ``a_lm = sum_j w_j conj(Y_lm(y_j))`` gives the real moments
    ``sum_j w_j Y_p(y_j)`` as ``Re a_l0``, ``sqrt(2) Re a_lm``, ``sqrt(2) Im a_lm``.

    Each real harmonic has a parity under the three coordinate reflections
    (``z``: ``(-1)^(l+m)``; ``y``: + for cosines, - for sines; ``x``: ``(-1)^m`` for cosines,
    ``-(-1)^m`` for sines): eight classes. A kernel invariant under reflecting ``x`` and
    ``y`` together couples only harmonics of one class. ``order`` sorts the layout by class
    (stable), ``bounds[c]:bounds[c + 1]`` is class ``c`` in that order.
    """

    def __init__(self, L: int):
        self.L = L
        m_of = np.concatenate([np.full(L + 1 - m, m) for m in range(L + 1)])
        l_of = np.concatenate([np.arange(m, L + 1) for m in range(L + 1)])
        self.nalm = nalm = l_of.size
        self.pos = m_of > 0
        self.l = np.concatenate([l_of, l_of[self.pos]])
        self.m = np.concatenate([m_of, m_of[self.pos]])
        self.kind = np.concatenate([np.zeros(nalm, dtype=int), np.ones(int(self.pos.sum()), dtype=int)])
        cls = 4 * ((self.l + self.m) % 2) + 2 * self.kind + (self.m + self.kind) % 2
        self.order = np.argsort(cls, kind="stable")
        self.bounds = np.searchsorted(cls[self.order], np.arange(9))
        self.l_sorted = self.l[self.order]
        self.m_sorted = self.m[self.order]
        self.kind_sorted = self.kind[self.order]
        self.size = self.l.size
        self._f = np.where(m_of == 0, 1.0, _SQRT2)
        self.index00 = int(np.flatnonzero(self.order == 0)[0])  # Y_00 in class order

    def to_real(self, alm: np.ndarray) -> np.ndarray:
        """Adjoint-synthesis output ``(k, nalm)`` complex -> real moments ``(size, k)``, class order."""
        R = np.concatenate([alm.real * self._f, alm.imag[:, self.pos] * _SQRT2], axis=1)
        return np.ascontiguousarray(R[:, self.order].T)

    def to_alm(self, T: np.ndarray) -> np.ndarray:
        """Real coefficients ``(size, k)`` in class order -> ducc0 ``a_lm`` ``(k, nalm)``."""
        R = np.empty((T.shape[1], self.size))
        R[:, self.order] = T.T
        alm = (R[:, : self.nalm] / self._f).astype(np.complex128)
        alm.imag[:, self.pos] = R[:, self.nalm :] / _SQRT2
        return alm

    def degree_norms(self, T: np.ndarray) -> np.ndarray:
        """``sqrt((2l + 1) / 4 pi) |t_l|`` per degree and column of ``T`` (class order):
        bounds of the degree-``l`` part of the function everywhere (addition theorem)."""
        L = self.L
        out = np.empty((L + 1, T.shape[1]))
        for k in range(T.shape[1]):
            out[:, k] = np.sqrt(np.bincount(self.l_sorted, weights=T[:, k] ** 2, minlength=L + 1))
        return out * np.sqrt((2 * np.arange(L + 1) + 1) / (4 * math.pi))[:, None]


def _legendre(z: np.ndarray, st: np.ndarray, L: int) -> np.ndarray:
    """Orthonormal associated Legendre functions ``P_lm(z)`` (``Y_lm = P_lm e^{i m phi}``,
    Condon--Shortley phase as in ducc0) in ducc0's triangular order: ``((L+1)(L+2)/2, n)``.

    The standard three-term recurrence in ``l``, all orders at once; ``st = sqrt(1 - z^2)``.
    """
    nalm = (L + 1) * (L + 2) // 2
    out = np.empty((nalm, z.size))
    ms = np.arange(L + 1)
    base = ms * (2 * L + 1 - ms) // 2
    prev1 = prev2 = None
    for l in range(L + 1):
        cur = np.empty((l + 1, z.size))
        if l == 0:
            cur[0] = 1.0 / math.sqrt(4.0 * math.pi)
        else:
            if l >= 2:
                mm = np.arange(l - 1)
                a = np.sqrt((4.0 * l * l - 1.0) / (l * l - mm * mm))
                b = np.sqrt(((l - 1.0) ** 2 - mm * mm) / (4.0 * (l - 1.0) ** 2 - 1.0))
                cur[: l - 1] = a[:, None] * (z * prev1[: l - 1] - b[:, None] * prev2[: l - 1])
            cur[l - 1] = math.sqrt(2.0 * l + 1.0) * z * prev1[l - 1]
            cur[l] = -math.sqrt((2.0 * l + 1.0) / (2.0 * l)) * st * prev1[l - 1]
        out[base[: l + 1] + l] = cur
        prev2, prev1 = prev1, cur
    return out


def _trig(L: int, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The longitude factors of the real harmonics, ``(L + 1, n)`` each: cosines ``1`` (m = 0)
    and ``sqrt(2) cos(m phi)``; sines ``-sqrt(2) sin(m phi)`` (row 0 unused)."""
    ang = np.multiply.outer(np.arange(L + 1), phi)
    cos = _SQRT2 * np.cos(ang)
    cos[0] = 1.0
    return cos, -_SQRT2 * np.sin(ang)


def real_harmonics(points: np.ndarray, L: int, degree_factor: np.ndarray | None = None) -> np.ndarray:
    """The real harmonics of :class:`_Layout` ``(L)`` at unit vectors ``points``: ``((L+1)^2, n)``
    in layout order (``P_lm`` of :func:`_legendre` times :func:`_trig`), each degree ``l``
    times ``degree_factor[l]`` (shape ``(L + 1, n)``) when given."""
    P = _legendre(points[:, 2], np.hypot(points[:, 0], points[:, 1]), L)
    if degree_factor is not None:
        start = 0
        for m in range(L + 1):
            P[start : start + L + 1 - m] *= degree_factor[m:]
            start += L + 1 - m
    cos, sin = _trig(L, np.arctan2(points[:, 1], points[:, 0]))
    nalm = P.shape[0]
    H = np.empty(((L + 1) ** 2, points.shape[0]))
    start = 0
    for m in range(L + 1):  # order m: rows start .. start + L - m, l ascending
        stop = start + L + 1 - m
        np.multiply(P[start:stop], cos[m], out=H[start:stop])
        if m:
            np.multiply(P[start:stop], sin[m], out=H[nalm + start - (L + 1) : nalm + stop - (L + 1)])
        start = stop
    return H


def _scaled_in_points(L: int, rho: np.ndarray) -> np.ndarray:
    """``i_l(rho) e^{-rho}`` for ``l = 0..L`` at every ``rho >= 0``: ``(L + 1, n)``."""
    from scipy import special

    out = np.empty((L + 1, rho.size))
    ls = np.arange(L + 1)[:, None]
    big = rho > 1.0
    if np.any(big):
        r = rho[big]
        out[:, big] = np.sqrt(np.pi / (2.0 * r)) * special.ive(ls + 0.5, r)
    if not np.all(big):
        r = rho[~big]
        out[:, ~big] = special.spherical_in(ls, r) * np.exp(-r)
    return out


# ---------------------------------------------------------------------------------------
# The plan: frame, scale, truncations
# ---------------------------------------------------------------------------------------
def _scale(xp: np.ndarray, sigma: np.ndarray, a: float | None) -> np.ndarray:
    """The target scale ``s(x)`` (rotated frame): ``sigma_1``, or the quadratic
    ``(sum_i sigma_i^2 x_i^2 + a^2) / (2 a) >= |Sigma x|``."""
    if a is None:
        return np.full(xp.shape[0], float(sigma[0]))
    return ((xp * (sigma / math.sqrt(2.0 * a))) ** 2).sum(axis=1) + 0.5 * a


def _probe_points() -> np.ndarray:
    """Directions in the closed positive octant (axes, diagonals, a spherical Fibonacci set)."""
    n = 320
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    fib = np.abs(np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1))
    special_ = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=float)
    pts = np.concatenate([special_, fib[::5]])
    return pts / np.linalg.norm(pts, axis=1, keepdims=True)


def _probe_x_degree(sigma: np.ndarray, a: float, delta: float) -> tuple[int, float]:
    """x-truncation of the scaled kernel ``exp(x.Sigma y - s(x))`` for the quadratic scale.

    The kernel's degree-``l`` content in ``x``, ``c_l = sqrt((2l+1)/4pi) |k_l(., y)|`` (a
    bound of its degree-``l`` part everywhere), by Gauss--Legendre analysis (ducc0) at the
    probe directions ``y`` (reflections do not change it, so the positive octant suffices).
    The content decays faster than geometrically until it meets the analysis round-off
    (a plateau of a few 1e-15), so it is read down to ``1e-12`` (degree ``l0``) and
    continued geometrically below with the ratio of the last two degrees,
    ``r = sqrt(c_l0 / c_{l0-2})`` (the true ratio keeps falling: conservative). Returns the
    smallest ``L`` whose continued tail ``sum_{l > L} c_l`` is at most ``delta``, and that
    tail.
    """
    import ducc0
    from ducc0.sht.experimental import analysis_2d

    s1, s3 = float(sigma[0]), float(sigma[2])
    Lp = spectral_lmax(s1 + 2.5 * (s1 - s3), 1e-13) + 16
    ys = _probe_points() * sigma
    while True:
        nt, nphi = Lp + 1, 2 * Lp + 2
        theta = ducc0.misc.GL_thetas(nt)
        phi = np.arange(nphi) * (2.0 * math.pi / nphi)
        st = np.sin(theta)[:, None]
        X = np.stack(np.broadcast_arrays(st * np.cos(phi), st * np.sin(phi), np.cos(theta)[:, None]), axis=-1)
        Xf = X.reshape(-1, 3)
        s = _scale(Xf, sigma, a)
        lay = _Layout(Lp)
        worst = np.zeros(Lp + 1)
        for u in ys:
            f = np.exp(Xf @ u - s).reshape(nt, nphi)
            alm = analysis_2d(map=f[None], spin=0, lmax=Lp, geometry="GL", nthreads=1)
            worst = np.maximum(worst, lay.degree_norms(lay.to_real(alm))[:, 0])
        below = np.flatnonzero(worst[2:] < _PROBE_LEVEL) + 2
        if below.size and below[0] < Lp - 8:
            l0 = int(below[0])
            ratio = min(math.sqrt(worst[l0] / worst[l0 - 2]), 0.9) if worst[l0 - 2] > 0 else 0.0
            extra = np.arange(1, 400)
            content = np.concatenate([worst[: l0 + 1], worst[l0] * ratio ** extra])
            tail = np.concatenate([np.cumsum(content[::-1])[::-1][1:], [0.0]])
            L = int(np.flatnonzero(tail <= delta)[0])
            return L, float(tail[L])
        Lp = int(1.5 * Lp) + 8


@functools.lru_cache(maxsize=64)
def _plan_cached(sigma: tuple, tolerance: float, normalized: bool):
    sigma = np.array(sigma)
    s1, s3 = float(sigma[0]), float(sigma[2])
    eps = nufft_epsilon(tolerance)
    Ly = spectral_lmax(s1, tolerance)
    _, tau_phi, _ = tails(Ly + 1, s1)
    tau_y = float(tau_phi[Ly])
    if not normalized or s1 - s3 <= _ANISOTROPY_QUADRATIC:
        # constant scale sigma_1: the x content of exp(x.u - sigma_1), |u| <= sigma_1, is
        # 4 pi i_l(|u|) e^{-sigma_1} (Funk--Hecke), the same bound as on the y side
        return {"a": None, "lmax_x": Ly, "lmax_y": Ly, "tau_x": tau_y, "tau_y": tau_y}
    a = 0.5 * (s1 + s3)
    delta = TAIL_FRACTION * eps * float(scaled_in(0, s1)[0])
    Lx, tau_x = _probe_x_degree(sigma, a, delta)
    return {"a": a, "lmax_x": max(Lx, 1), "lmax_y": Ly, "tau_x": tau_x, "tau_y": tau_y}


def _coefficient_entries(Lx: int, Ly: int) -> int:
    """Entries of the class-block-diagonal coefficient matrix for degrees ``Lx``, ``Ly``."""
    counts = []
    for L in (Lx, Ly):
        lay = _Layout(L)
        counts.append(np.diff(lay.bounds))
    return int(np.dot(counts[0], counts[1]))


def general_plan(model: AttentionModel, tolerance: float = 1e-12) -> dict:
    """The construction plan of :class:`GeneralSphereField` for ``model`` (no matrix built).

    Keys: ``sigma`` (singular values of ``beta Q^T K``), ``scale`` (``"constant"`` or
    ``"quadratic"``), ``lmax_x``, ``lmax_y``, ``tau_x``, ``tau_y`` (truncation tails per
    unit mass), ``bytes`` (of the coefficient matrix). ``sigma_1 = 0`` gives degrees 0.
    """
    if model.d != 3:
        raise ValueError(f"the spectral sphere backend works on S^2 (d = 3), got d = {model.d}")
    sigma = np.linalg.svd(model.interaction, compute_uv=False)
    if sigma[0] == 0.0:
        return {"sigma": sigma, "scale": "constant", "a": None, "lmax_x": 0, "lmax_y": 0, "tau_x": 0.0,
                "tau_y": 0.0, "bytes": 0}
    p = dict(_plan_cached(tuple(float(s) for s in sigma), float(tolerance), bool(model.normalized)))
    p["sigma"] = sigma
    p["scale"] = "constant" if p["a"] is None else "quadratic"
    p["bytes"] = 8 * _coefficient_entries(p["lmax_x"], p["lmax_y"])
    return p


def _prefilter_bytes(model: AttentionModel, tolerance: float) -> float:
    """A cheap lower bound of the coefficient bytes (before probing the x degree):
    ``lmax_x >= lmax_y`` and eight classes of about equal size give ``8 P^2 / 8``."""
    s1 = float(np.linalg.norm(model.interaction, 2))
    if s1 == 0.0:
        return 0.0
    Ly = spectral_lmax(s1, tolerance)
    return float((Ly + 1) ** 4)


# ---------------------------------------------------------------------------------------
# Construction of the coefficient matrix
# ---------------------------------------------------------------------------------------
def _octant_grid(L: int) -> tuple[int, int]:
    """``(n_theta, n_phi)`` of the full Gauss--Legendre grid exact for degree ``2 L + 1``
    with no ring on the equator and ``n_phi`` divisible by 4."""
    nt = L + 1
    nt += nt % 2
    return nt, 4 * (-(-(2 * L + 2) // 4))


def _build_coefficients(sigma: np.ndarray, a: float | None, lx: _Layout, ly: _Layout,
                        memory: float = 1.6e8) -> list[np.ndarray]:
    """The class blocks of ``C[p, q] = int int exp(x.Sigma y - s(x)) Y_p(x) Y_q(y) dx dy``.

    The ``y`` integral is Funk--Hecke: ``g_q(x) = 4 pi i_l(|u|) e^{-s(x)} Y_q(u / |u|)``,
    ``u = Sigma x``. The ``x`` integral is the Gauss--Legendre quadrature folded onto the
    positive octant (the integrand of a class block is invariant under the reflections:
    the full sum is 8 times the octant's), factorized as in a spherical-harmonic
    transform: longitudes first, ``G[i, m, q] = sum_j tau_mk(phi_j) g_q(theta_i, phi_j)``
    for each ring ``i``, then ``C[(l, m, k), q] = 8 sum_i w_i P_lm(theta_i) G[i, m, q]``
    (GEMMs over chunks of rings; ``memory`` bounds the chunk's harmonics ``g``, in bytes).
    ``O(lmax_x^3 lmax_y^2)`` flops against ``O(lmax_x^4 lmax_y^2)`` for the plain quadrature
    sum (same result to 2e-15; 2.7 s against 5.8 s at ``lmax_x = 127``, ``lmax_y = 88``).
    """
    import ducc0

    Lx, Ly = lx.L, ly.L
    nt, nphi = _octant_grid(Lx + _QUADRATURE_MARGIN)
    theta = ducc0.misc.GL_thetas(nt)
    wt = ducc0.misc.GL_weights(nt, nphi)
    north = theta < 0.5 * math.pi
    theta, wt = theta[north], 8.0 * wt[north]
    phi = (np.arange(nphi // 4) + 0.5) * (2.0 * math.pi / nphi)
    nr, nj = theta.size, phi.size
    P = _legendre(np.cos(theta), np.sin(theta), Lx) * wt  # (nalm_x, rings), weights folded in
    tcos, tsin = _trig(Lx, phi)
    base = np.arange(Lx + 1) * (2 * Lx + 1 - np.arange(Lx + 1)) // 2
    # per class block c: its rows grouped by order m (contiguous, l ascending in steps of 2)
    runs = []
    for c in range(8):
        mb = lx.m_sorted[lx.bounds[c] : lx.bounds[c + 1]]
        lb = lx.l_sorted[lx.bounds[c] : lx.bounds[c + 1]]
        ms, starts = np.unique(mb, return_index=True)
        stops = np.append(starts[1:], mb.size)
        runs.append([(int(m), slice(int(a), int(b)), base[m] + lb[a:b]) for m, a, b in zip(ms, starts, stops)])
    blocks = [np.zeros((lx.bounds[c + 1] - lx.bounds[c], ly.bounds[c + 1] - ly.bounds[c])) for c in range(8)]
    chunk = max(1, min(nr, int(memory // (8.0 * nj * ly.size))))
    stheta, ctheta = np.sin(theta), np.cos(theta)
    for r0 in range(0, nr, chunk):
        r1 = min(nr, r0 + chunk)
        st = stheta[r0:r1, None]
        pts = np.stack(np.broadcast_arrays(st * np.cos(phi), st * np.sin(phi), ctheta[r0:r1, None]), axis=-1)
        pts = pts.reshape(-1, 3)  # ring-major
        u = pts * sigma
        rho = np.linalg.norm(u, axis=1)
        safe = np.where(rho > 0, rho, 1.0)
        uhat = np.where((rho > 0)[:, None], u / safe[:, None], np.array([0.0, 0.0, 1.0]))
        fac = 4.0 * math.pi * np.exp(rho - _scale(pts, sigma, a))
        gy = real_harmonics(uhat, Ly, _scaled_in_points(Ly, rho) * fac)  # (q, points), layout order
        for k in (0, 1):
            for xp in (0, 1):
                mlist = [m for m in range(k, Lx + 1) if (m + k) % 2 == xp]
                if not mlist:
                    continue
                T = (tsin if k else tcos)[mlist]  # (orders, longitudes)
                index = {m: i for i, m in enumerate(mlist)}
                for c in (2 * k + xp, 4 + 2 * k + xp):  # the z-even and z-odd classes
                    q = ly.bounds[c + 1] - ly.bounds[c]
                    if q == 0 or not runs[c]:
                        continue
                    g = gy[ly.order[ly.bounds[c] : ly.bounds[c + 1]]]  # (q, rings x longitudes)
                    G = (g.reshape(-1, nj) @ T.T).reshape(q, r1 - r0, len(mlist))
                    G = np.ascontiguousarray(G.transpose(2, 1, 0))  # (orders, rings, q)
                    for m, rows, alm_rows in runs[c]:
                        blocks[c][rows] += P[alm_rows, r0:r1] @ G[index[m]]
    return blocks


# ---------------------------------------------------------------------------------------
# The field
# ---------------------------------------------------------------------------------------
def _transform_accuracy(epsilon: float, lmax: int) -> float:
    """Error of the transform chain relative to the coefficient bounds (module docstring).

    Measured (icosahedral level 3, edge midpoints against cell centres; random, von
    Mises--Fisher, clustered and point measures; random models with beta 1..80; NUFFT
    accuracies 3e-13, 1e-12, 1e-9): at most 0.61 ``epsilon`` for ``lmax <= 24`` and
    0.14 ``epsilon`` (4.3e-14 at ``epsilon = 3e-13``) above. The estimate exceeds every
    measured error by a factor of 3 or more.
    """
    return (2.0 if lmax <= 24 else 0.5) * epsilon + 5e-16 * (lmax + 50)


class GeneralSphereField(SphereSpectralField):
    """Attention field on S^2 for any 3 x 3 ``Q, K, V`` by a separable harmonic expansion.

    Implements the :class:`~meanfield.fields.attention.AttentionField` protocol, in two phases
    (:meth:`coefficients` of a measure, summable over parts; :meth:`evaluate` at targets).
    See the module docstring for the method, the accuracy model and the limits.

    Parameters
    ----------
    model : AttentionModel
        ``d = 3``, any ``beta``, ``Q``, ``K``, ``V``, SA or USA.
    tolerance : float
        At least ``1e-13``. SA: ``|X - X_direct| <= tolerance ||V||_2`` at every target (by
        the error estimate and the direct fallback). USA: sets the truncations and the NUFFT
        accuracy; the error is absolute, ``~1e-13 ||V|| W e^{sigma_1}`` at most.
    max_bytes : float, optional
        Refuse (``ValueError``) a coefficient matrix larger than this; default
        :data:`MAX_COEFFICIENT_BYTES`.

    Attributes
    ----------
    sigma : ndarray
        Singular values of ``beta Q^T K``.
    scale : str
        ``"constant"`` or ``"quadratic"`` target scale ``s(x)``.
    lmax_x, lmax_y, lmax : int
        Truncation degrees in the target and source variables, and their maximum.
    coefficient_bytes : int
        Size of the coefficient matrix; ``build_seconds`` the time it took.
    last_fallback_count : int
        SA targets recomputed by :class:`~meanfield.fields.attention.DirectField` in the last call.
    last_split_count : int
        SA targets recomputed by the split (heavy sources direct, the light rest transformed)
        in the last call.

    Examples
    --------
    >>> import numpy as np
    >>> import meanfield as mf
    >>> from meanfield.fields.spectral_sphere_general import GeneralSphereField
    >>> model = mf.AttentionModel(d=3, beta=9.0, K=[[1, -0.5, 0], [0.5, 1, 0], [0, 0, 1]],
    ...                           V=[[1, -1, 0], [1, 1, 0], [0, 0, 1]])
    >>> field = GeneralSphereField(model)
    >>> field.scale, field.lmax_x, field.lmax_y
    ('quadratic', 35, 32)
    >>> x = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    >>> w = np.array([0.5, 0.3, 0.2])
    >>> bool(np.allclose(field(x, x, w), mf.DirectField(model)(x, x, w), rtol=0, atol=1e-12))
    True
    """

    def __init__(self, model: AttentionModel, tolerance: float = 1e-12, max_bytes: float | None = None):
        import ducc0  # noqa: F401  (fail at construction, not at the first call)

        if model.d != 3:
            raise ValueError(f"the spectral sphere backend works on S^2 (d = 3), got d = {model.d}")
        tol = float(tolerance)
        if not (math.isfinite(tol) and MIN_TOLERANCE <= tol < 1.0):
            raise ValueError(f"tolerance must lie in [{MIN_TOLERANCE:g}, 1), got {tolerance!r}")
        limit = MAX_COEFFICIENT_BYTES if max_bytes is None else float(max_bytes)
        self.model = model
        self.tolerance = tol
        self.epsilon = nufft_epsilon(tol)
        self.last_fallback_count = 0
        self.max_bytes = limit
        if _prefilter_bytes(model, tol) > limit:
            raise ValueError(self._too_large(model, tol, None, limit))
        plan = general_plan(model, tol)
        if plan["bytes"] > limit:
            raise ValueError(self._too_large(model, tol, plan, limit))
        U, sigma, Wt = np.linalg.svd(model.interaction)
        self.sigma = sigma
        self._U = U  # x' = U^T x
        self._W = Wt.T  # y' = W^T y, logits x'^T Sigma y'
        self._VW = model.V @ self._W  # V M = (V W) M'
        self.v_norm = float(np.linalg.norm(model.V, 2))
        self.scale = plan["scale"]
        self._a = plan["a"]
        self.lmax_x, self.lmax_y = plan["lmax_x"], plan["lmax_y"]
        self.lmax = max(self.lmax_x, self.lmax_y)
        self._tau = plan["tau_x"] + plan["tau_y"]
        self.eta = _transform_accuracy(self.epsilon, self.lmax)
        self.coefficient_bytes = plan["bytes"]
        start = time.perf_counter()
        if sigma[0] > 0.0:
            self._lx, self._ly = _Layout(self.lmax_x), _Layout(self.lmax_y)
            with single_thread_blas():
                self._blocks = _build_coefficients(sigma, self._a, self._lx, self._ly)
            # kappa = sum_l sqrt((2l+1)/4pi) |C_l|_F / (lmax_y + 1): the bound of the function
            # C e for a moment error e spread evenly over the (lmax_y + 1)^2 moments, per |e|_2
            sq = np.zeros(self.lmax_x + 1)
            for c, block in enumerate(self._blocks):
                sq += np.bincount(self._lx.l_sorted[self._lx.bounds[c] : self._lx.bounds[c + 1]],
                                  weights=np.einsum("ij,ij->i", block, block), minlength=self.lmax_x + 1)
            ls = np.arange(self.lmax_x + 1)
            self._kappa = float(np.sqrt((2 * ls + 1) / (4 * math.pi)) @ np.sqrt(sq)) / (self.lmax_y + 1)
        self.build_seconds = time.perf_counter() - start

    @staticmethod
    def _too_large(model, tol, plan, limit) -> str:
        s1 = float(np.linalg.norm(model.interaction, 2))
        if plan is None:
            what = f"more than {limit / 1e9:.3g} GB"
        else:
            what = f"{plan['bytes'] / 1e9:.3g} GB (lmax_x = {plan['lmax_x']}, lmax_y = {plan['lmax_y']})"
        return (f"the spectral backend for general Q, K, V on S^2 would need a coefficient matrix of {what} "
                f"at beta ||Q^T K||_2 = {s1:.4g} and tolerance {tol:g}, above the limit of {limit / 1e9:.3g} GB; "
                f"use the direct backend (backend = 'direct' or 'auto')")

    def __repr__(self) -> str:
        m = self.model
        return (f"GeneralSphereField({m.kind}, beta={m.beta:g}, tolerance={self.tolerance:g}, "
                f"lmax_x={self.lmax_x}, lmax_y={self.lmax_y}, scale={self.scale})")

    # -- the protocol, in two phases -----------------------------------------------------
    @property
    def coefficient_shape(self) -> tuple[int, ...]:
        return (4,) if self.sigma[0] == 0.0 else (self._ly.size, 4)

    def coefficients(self, sources, weights) -> np.ndarray:
        """Real harmonic moments of the four measures ``w`` and ``w y'_c`` (``y' = W^T y``).

        A float64 array of shape :attr:`coefficient_shape`, linear in the weights (sum the
        parts' arrays over MPI ranks). ``sigma_1 = 0``: ``[W, sum_j w_j y_j]``.
        """
        plan, y, w = self._measure(sources, weights)
        if self.sigma[0] == 0.0:
            return np.concatenate([[w.sum()], w @ y])
        if w.size == 0:
            return np.zeros(self.coefficient_shape)
        from ducc0.sht.experimental import adjoint_synthesis_general

        yp, loc = plan.prepared("rotated sources", lambda p: self._rotated(p, self._W))
        maps = (w, w * yp[:, 0], w * yp[:, 1], w * yp[:, 2])
        alm = np.concatenate([
            adjoint_synthesis_general(map=m[None, :], spin=0, lmax=self.lmax_y, loc=loc, epsilon=self.epsilon,
                                      nthreads=1)
            for m in maps])
        return self._ly.to_real(alm)

    # -- the hooks of SphereSpectralField.evaluate ------------------------------------
    @property
    def _degenerate(self) -> bool:
        return self.sigma[0] == 0.0

    def _read_coefficients(self, coeffs) -> tuple[np.ndarray, float]:
        """The coefficients and the total weight (``sqrt(4 pi)`` times the ``Y_00`` moment of ``w``)."""
        coeffs = np.asarray(coeffs, dtype=float)
        if coeffs.shape != self.coefficient_shape:
            raise ValueError(f"coefficients must have shape {self.coefficient_shape} for this field, "
                             f"got {coeffs.shape}")
        if self._degenerate:
            return coeffs, float(coeffs[0])
        return coeffs, float(coeffs[self._ly.index00, 0]) * math.sqrt(4.0 * math.pi)

    def _constant_field(self, coeffs: np.ndarray, total: float) -> np.ndarray:
        return (self.model.V @ coeffs[1:]) / (total if self.model.normalized else 1.0)

    def _transform_field(self, plan, coeffs, total, project):
        return self._transform(plan, coeffs, total)

    @staticmethod
    def _rotated(points: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rotated points ``points R`` and their :func:`point_angles` (kept in a plan)."""
        rotated = points @ R
        return rotated, point_angles(rotated)

    # -- the transforms --------------------------------------------------------------------
    def _apply(self, coeffs: np.ndarray) -> np.ndarray:
        """``T = C R``: the x coefficients (class order) of ``Z_s`` and ``M'_s``."""
        lx, ly = self._lx, self._ly
        T = np.empty((lx.size, coeffs.shape[1]))
        for c, block in enumerate(self._blocks):
            np.matmul(block, coeffs[ly.bounds[c] : ly.bounds[c + 1]], out=T[lx.bounds[c] : lx.bounds[c + 1]])
        return T

    def _synthesize(self, plan, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``Z_s`` (N,) and ``M'_s`` (N, 3) at the targets (a plan), and the rotated targets."""
        from ducc0.sht.experimental import synthesis_general

        xp, loc = plan.prepared("rotated targets", lambda p: self._rotated(p, self._U))
        alm = self._lx.to_alm(T)
        F = np.concatenate([
            synthesis_general(alm=alm[k : k + 1], spin=0, lmax=self.lmax_x, loc=loc, epsilon=self.epsilon,
                              nthreads=1)
            for k in range(alm.shape[0])])
        return F[0], np.ascontiguousarray(F[1:].T), xp

    def _transform(self, targets, coeffs, total):
        """USA: the field; SA: the field and its estimated error relative to ``||V||_2``
        (``inf`` where ``Z_s`` is not resolved). Not projected. ``targets``: a plan of this
        field or an array."""
        plan = self._plan_of(targets, as_points(targets))
        s1 = float(self.sigma[0])
        normalized = self.model.normalized
        # shifted USA: the largest logit minus the offset beta ||Q^T K||_2 = sigma_1 is 0
        exponent = s1 - self.model.logit_offset
        if not normalized and exponent > USA_LOGIT_LIMIT:
            raise FieldOverflowError(
                f"USA attention overflows: beta ||Q^T K||_2 = {s1:.1f} exceeds the logit limit "
                f"{USA_LOGIT_LIMIT:.1f}; {USA_OVERFLOW_FIX}"
            )
        T = self._apply(coeffs)
        z, m, xp = self._synthesize(plan, T)
        num = m @ self._VW.T
        if not normalized:
            factor = np.exp(_scale(xp, self.sigma, self._a) - s1)
            with np.errstate(over="ignore", invalid="ignore"):
                out = num * (factor * math.exp(exponent))[:, None]
            if not np.all(np.isfinite(out)):
                raise FieldOverflowError(f"USA attention overflowed double precision; {USA_OVERFLOW_FIX}")
            return out
        return self._sa_quotient(z, m, num, *self._sa_errors(coeffs, T, total))

    def _sa_errors(self, coeffs, T, total) -> tuple[float, float]:
        """Absolute error bounds of the synthesized ``Z_s`` and ``M'_s`` of a measure (moments
        ``coeffs``, x coefficients ``T = C R``, total weight ``total``): ``eta`` times the bounds
        ``B_Z``, ``B_M`` plus the truncation tail of the mass."""
        bounds = self._lx.degree_norms(T).sum(axis=0)
        norms = np.linalg.norm(coeffs, axis=0)
        b_z = float(bounds[0]) + self._kappa * float(norms[0])
        b_m = float(np.hypot.reduce(bounds[1:])) + self._kappa * float(np.hypot.reduce(norms[1:]))
        return self.eta * b_z + total * self._tau, self.eta * b_m + total * self._tau

    @staticmethod
    def _sa_quotient(z, m, num, err_z, err_m):
        """SA: the field ``num / Z_s`` (``num = V W M'_s``) and its estimated error relative to
        ``||V||_2`` from the absolute errors of ``Z_s`` and ``M'_s`` (``inf`` where ``Z_s <=
        10 err_z``: not resolved)."""
        resolved = z > 10.0 * err_z
        safe = np.where(resolved, z, 1.0)
        out = num / safe[:, None]
        r = np.minimum(1.0, np.linalg.norm(m, axis=1) / safe)
        err = np.where(resolved, (err_m + r * err_z) / safe + ABSOLUTE_FLOOR, np.inf)
        return out, err

    # -- the SA split: heavy sources summed directly, the light rest transformed -------------
    def _split_cost(self, n_targets, n_sources):
        return general_cost(self.model, n_targets, n_sources, self.tolerance)

    def _split_field(self, plan, F, y, w, light, heavy, w_light, project):
        """The split of :meth:`SphereSpectralField._split
        <meanfield.fields.spectral.SphereSpectralField._split>` here: the heaviest sources summed
        directly (``Z_h``, ``M'_h`` in the target scale ``s(x')``), the light rest transformed
        (its own moments, so its errors scale with its weight)."""
        sub = PointPlan(self, plan.points[F], copy=False)
        coeffs = self.coefficients(y[light], w[light])
        T = self._apply(coeffs)
        z, m, xp = self._synthesize(sub, T)
        z_h, m_h = self._direct_sums(xp, y[heavy] @ self._W, w[heavy])
        m = m + m_h
        return self._sa_quotient(z + z_h, m, m @ self._VW.T, *self._sa_errors(coeffs, T, w_light))

    def _direct_sums(self, xp, yp, w):
        """``Z_s`` (N,) and ``M'_s`` (N, 3) of the measure ``(yp, w)`` at ``xp`` (both in the
        rotated frames), summed directly in the target scale ``s(x')`` of the transforms
        (blocks of about 2^18 pairs)."""
        sy = yp * self.sigma
        wy = np.concatenate([w[:, None], w[:, None] * yp], axis=1)
        scale = _scale(xp, self.sigma, self._a)
        sums = np.empty((xp.shape[0], 4))
        rows = max(1, 2**18 // max(1, yp.shape[0]))
        for start in range(0, xp.shape[0], rows):
            logits = xp[start : start + rows] @ sy.T
            logits -= scale[start : start + rows, None]
            np.exp(logits, out=logits)
            np.matmul(logits, wy, out=sums[start : start + rows])
        return sums[:, 0], np.ascontiguousarray(sums[:, 1:])


#: Calls over which ``general_cost`` spreads the one-off construction of the coefficients.
AMORTIZED_CALLS = 1000
#: Seconds of one direct (target, source) pair on the calibration machine (5e8 pairs/s).
_PAIR_SECONDS = 2e-9


def _transform_overhead(L: int) -> float:
    """Fixed cost of one transform at degree ``L`` (the grid FFTs and Legendre sums), pairs."""
    return 3.5 * L * L * math.log2(L + 1) + 26000.0


def general_cost(model: AttentionModel, n_targets: int, n_sources: int, tol: float = 1e-12) -> float:
    """Cost estimate of one :class:`GeneralSphereField` call, in direct pair evaluations.

    Comparable with ``n_targets * n_sources`` (:class:`~meanfield.fields.attention.DirectField`).
    The model, calibrated on one core (2 ns per direct pair; icosahedral levels 2..6,
    beta 1..80, ``lmax`` 13..110; within ~30% where the machine was quiet):

        100 M + 80 N + 30 N [SA] + 4 o(lmax_y) + 4 o(lmax_x) + 1.5 E + B / 1000

    ``o(L) = 3.5 L^2 log2(L + 1) + 26000`` the fixed cost of a transform, ``E`` the entries
    of the coefficient matrix (the per-call GEMM, memory bound), ``B`` the construction,
    ``(120 ns E + 0.02 s) / 2 ns`` (measured 57..137 ns per entry for 1.3 to 445 MB),
    spread over :data:`AMORTIZED_CALLS` calls. The SA direct fallback is not included. Returns
    ``inf`` where the backend does not apply (``d != 3``) or would refuse the model (the
    coefficient matrix above :data:`MAX_COEFFICIENT_BYTES`). Computing it runs the
    (cached) x-degree probe of the plan, up to a few tenths of a second.
    """
    if model.d != 3:
        return math.inf
    n, m = int(n_targets), int(n_sources)
    if _prefilter_bytes(model, tol) > MAX_COEFFICIENT_BYTES:
        return math.inf  # refused before the (then expensive) x-degree probe
    try:
        plan = general_plan(model, tol)
    except ValueError:
        return math.inf
    if plan["lmax_x"] == 0:
        return float(n + m)
    if plan["bytes"] > MAX_COEFFICIENT_BYTES:
        return math.inf
    entries = plan["bytes"] / 8.0
    build = (1.2e-7 * entries + 0.02) / _PAIR_SECONDS
    per_call = (100.0 * m + 80.0 * n + (30.0 * n if model.normalized else 0.0)
                + 4.0 * (_transform_overhead(plan["lmax_x"]) + _transform_overhead(plan["lmax_y"])) + 1.5 * entries)
    return float(per_call + build / AMORTIZED_CALLS)


# ---------------------------------------------------------------------------------------
# One entry point for every model on S^2
# ---------------------------------------------------------------------------------------
def spectral_sphere_field(model: AttentionModel, tolerance: float = 1e-12):
    """The spectral field for any model on S^2 (``d = 3``).

    Isotropic models (``Q^T K = c I`` and ``V = v I``):
    :class:`~meanfield.fields.spectral_sphere.SpectralSphereField` (Funk--Hecke, no
    precomputation). Any other ``Q, K, V``: :class:`GeneralSphereField` (a separable
    expansion of the kernel built once); it raises ``ValueError`` when its coefficient
    matrix would exceed :data:`MAX_COEFFICIENT_BYTES`. Both have
    ``name = "spectral"``, ``model``, ``last_fallback_count``, ``tolerance`` and the
    two-phase ``coefficients`` / ``evaluate`` API.
    """
    if model.d != 3:
        raise ValueError(f"the spectral sphere backend works on S^2 (d = 3), got d = {model.d}")
    if model.isotropic() is not None:
        return SpectralSphereField(model, tolerance)
    return GeneralSphereField(model, tolerance)


def spectral_sphere_cost(model: AttentionModel, n_targets: int, n_sources: int, tol: float = 1e-12) -> float:
    """Cost of one call of :func:`spectral_sphere_field` ``(model)``, in direct pair evaluations.

    :func:`~meanfield.fields.spectral_sphere.spectral_cost` for isotropic models,
    :func:`general_cost` otherwise (which includes a share
    of the construction); ``inf`` where no spectral backend applies (``d != 3``, or a
    coefficient matrix above the limit).
    """
    if model.d != 3:
        return math.inf
    if model.isotropic() is not None:
        return spectral_cost(model, n_targets, n_sources, tol)
    return general_cost(model, n_targets, n_sources, tol)

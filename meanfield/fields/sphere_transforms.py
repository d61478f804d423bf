"""What the two spectral backends on S^2 share (:mod:`meanfield.fields.spectral_sphere`,
:mod:`meanfield.fields.spectral_sphere_general`): the NUFFT accuracy settings, the scaled
modified spherical Bessel functions ``i_l(b) e^{-b}`` and the truncation tails of the
kernel ``exp(b <x, y>)``, the truncation degree :func:`spectral_lmax`, and the angles of
point sets for ducc0 and their local frames (:func:`point_angles`, :func:`local_frame`; kept
in the :class:`~meanfield.fields.plans.PointPlan` of a fixed point set by :func:`plan_angles`,
:func:`plan_frame`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["ABSOLUTE_FLOOR", "DUCC_EPS_FLOOR", "MIN_TOLERANCE", "SPLIT_GAIN", "SPLIT_MARGIN", "TAIL_FRACTION", "TINY_B", "local_frame",
           "nufft_epsilon", "plan_angles", "plan_frame", "point_angles", "scaled_in", "spectral_lmax", "split_sources", "tails"]

#: ducc0 refuses NUFFT accuracies at or below 2e-13 in double precision.
DUCC_EPS_FLOOR = 3e-13
#: The smallest tolerance accepted (round-off of the transforms is ~1e-14 of their scale).
MIN_TOLERANCE = 1e-13
#: Round-off floor of the field relative to |v| (the projection and the direct sums themselves).
ABSOLUTE_FLOOR = 1e-14
#: Below this |b| the modified spherical Bessel functions come from their leading series term.
TINY_B = 1e-50
#: Truncation tails are kept this far below the transform accuracy eta.
TAIL_FRACTION = 1e-2
#: The SA split leaves the transforms this fraction of the light mass at which the worst
#: resolved fallback target would just meet the tolerance.
SPLIT_MARGIN = 0.25
#: The SA split is taken when its expected cost is below this fraction of the direct fallback's.
SPLIT_GAIN = 0.75


def nufft_epsilon(tolerance: float) -> float:
    """ducc0 accuracy used for a requested tolerance: well below it, never below the floor."""
    return max(DUCC_EPS_FLOOR, 1e-3 * tolerance)


def scaled_in(lmax: int, b_abs: float) -> np.ndarray:
    """``i_l(b) e^{-b}`` for ``l = 0..lmax`` and ``b >= 0`` (no overflow for large ``b``)."""
    ls = np.arange(lmax + 1)
    if b_abs == 0.0:
        return (ls == 0).astype(float)
    if b_abs < TINY_B:
        # leading term b^l / (2l+1)!! of the series: exact in double, where scipy underflows
        return np.cumprod(np.concatenate([[1.0], b_abs / (2.0 * ls[1:] + 1.0)]))
    if b_abs <= 1.0:
        return special.spherical_in(ls, b_abs) * math.exp(-b_abs)
    # i_l(b) = sqrt(pi / (2 b)) I_{l+1/2}(b); ive(nu, b) = I_nu(b) e^{-b}
    return math.sqrt(math.pi / (2.0 * b_abs)) * special.ive(ls + 0.5, b_abs)


def tails(lmax_search: int, b_abs: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scaled ``i_l`` and the truncation tails of ``Phi_s / W`` and ``|grad Phi_s| / (W |b|)``.

    ``tau_phi[L] = sum_{l > L} i_l e^{-b} (2l+1)`` and
    ``tau_g[L] = sum_{l > L} i_l e^{-b} (2l+1) sqrt(l(l+1)) / |b|`` bound the truncation error
    of a unit mass (addition theorem: ``sum_m |Y_lm|^2 = (2l+1)/4pi``, and the same with
    ``l(l+1)`` for ``|grad Y_lm|^2``).
    """
    ls = np.arange(lmax_search + 1, dtype=float)
    il = scaled_in(lmax_search, b_abs)
    tphi = il * (2 * ls + 1)
    tg = tphi * np.sqrt(ls * (ls + 1)) / b_abs
    # tail[L] = sum over l > L: reverse cumulative sums shifted by one
    tau_phi = np.concatenate([np.cumsum(tphi[::-1])[::-1][1:], [0.0]])
    tau_g = np.concatenate([np.cumsum(tg[::-1])[::-1][1:], [0.0]])
    return il, tau_phi, tau_g


def spectral_lmax(b: float, tolerance: float = 1e-12) -> int:
    """Truncation degree for the kernel ``exp(b <x, y>)`` at a relative tolerance.

    The smallest ``L >= 1`` whose truncation tails (for a unit point mass, the worst case)
    lie below ``1e-2 eta i_0(|b|) e^{-|b|}``, ``eta`` the transform accuracy: the truncation
    error is then negligible against the transforms' own error for any measure (the mean
    of ``Phi_s`` over the sphere is ``W i_0(|b|) e^{-|b|}``). Grows like
    ``sqrt(2 |b| log(1/tol))``; ``b = 0`` gives 1 (the first moment).
    """
    b_abs = abs(float(b))
    if b_abs == 0.0:
        return 1
    target = TAIL_FRACTION * nufft_epsilon(tolerance) * float(scaled_in(0, b_abs)[0])
    search = int(12.0 * math.sqrt(b_abs) + 40)
    while True:
        _, tau_phi, tau_g = tails(search, b_abs)
        ok = np.flatnonzero((tau_phi <= target) & (tau_g <= target))
        # the last entries of a finite sum are 0 by construction: require a genuine margin
        ok = ok[ok < search - 10]
        if ok.size:
            return max(1, int(ok[0]))
        search *= 2


def point_angles(x: np.ndarray) -> np.ndarray:
    """(theta, phi) rows for ducc0: colatitude in [0, pi], longitude in [0, 2 pi)."""
    theta = np.arctan2(np.hypot(x[:, 0], x[:, 1]), x[:, 2])
    phi = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2.0 * np.pi)
    return np.ascontiguousarray(np.stack([theta, phi], axis=1))


def local_frame(loc: np.ndarray) -> tuple:
    """``(cos theta, sin theta, cos phi, sin phi)`` of the angles ``loc`` (:func:`point_angles`):
    the local frame ``(e_theta, e_phi)`` of the spin-1 transforms."""
    theta, phi = loc[:, 0], loc[:, 1]
    return (np.cos(theta), np.sin(theta), np.cos(phi), np.sin(phi))


def plan_angles(plan) -> np.ndarray:
    """The :func:`point_angles` of a plan's points, made once and kept in the plan."""
    return plan.prepared("angles", point_angles)


def plan_frame(plan) -> tuple:
    """The :func:`local_frame` of a plan's angles (:func:`plan_angles`), made once and kept."""
    return plan.prepared("frame", lambda _: local_frame(plan_angles(plan)))


def split_sources(weights: np.ndarray, estimates: np.ndarray, tolerance: float, overhead: float = 0.0):
    """The SA split's sources: ``(light, heavy, W_l)`` index arrays of the positive
    ``weights`` and the light weight, or ``None`` when there is nothing to split.

    ``estimates`` are the error estimates of the fallback targets from the transforms of the
    whole measure (``inf`` where unresolved). The transformed part's error scales with its
    weight (the bounds ``B`` are at most about the weight times those of a point mass), so a
    target of estimate ``e`` is expected to meet ``tolerance`` once the light sources weigh
    at most :data:`SPLIT_MARGIN` ``tolerance / e`` times the total. The light weight is the
    one that minimizes the expected cost, ``n_F n_heavy`` direct pairs for the split plus
    ``M`` pairs for each target it is not expected to fix (``n_F`` fallback targets, ``M``
    sources); unresolved targets count as not fixed (the direct heavy part may still
    resolve them). ``None`` too when that cost plus ``overhead`` (the transforms of the
    light part, in pairs) exceeds :data:`SPLIT_GAIN` times the direct fallback's ``n_F M``.
    """
    finite = np.sort(estimates[np.isfinite(estimates)])
    if not finite.size:
        return None
    order = np.argsort(weights)
    light_mass = np.cumsum(weights[order])
    n_light = np.searchsorted(light_mass, SPLIT_MARGIN * tolerance / finite * float(light_mass[-1]), side="right")
    m, n_f = weights.size, estimates.size
    cost = n_f * (m - n_light) + (n_f - np.arange(1, finite.size + 1)) * m
    best = int(np.argmin(cost))
    n_light = int(n_light[best])
    if n_light == 0 or cost[best] + overhead > SPLIT_GAIN * n_f * m:
        return None
    return order[:n_light], order[n_light:], float(light_mass[n_light - 1])

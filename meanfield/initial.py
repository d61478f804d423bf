"""Initial densities on S^{d-1} and their projection onto cells.

Every initial kind is a function of points ``(n, d) -> (n,)`` (:func:`density_function`)
that the mesh integrates cell by cell with a quadrature rule (basix Gauss--Jacobi on the
interval; rules on the triangle mapped to spherical triangles). Cell averages are then
normalized to total mass 1. ``points`` (an empirical measure) is binned into cells.

Kinds (``initial.kind``):

``uniform``
    ``1 / |S|``.
``modes``
    ``(1 + sum_j a_j mode_j(x)) / |S|``; on the circle ``mode = cos(k theta - phase)``;
    on the sphere ``mode = Y_lm``, the real orthonormal spherical harmonic
    (:func:`real_sph_harm`).
``vmf``
    ``sum_j w_j exp(kappa_j <c_j, x>)`` (von Mises--Fisher mixture; centres normalized).
``python``
    a user callable ``f(points (n, d)) -> densities (n,)``.
``points``
    ``sum_i w_i delta_{x_i}``, binned into the cell of the nearest centre.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import special

__all__ = ["density_function", "project", "real_sph_harm", "InitialDataError"]


class InitialDataError(ValueError):
    """The initial data cannot define a probability density on this mesh."""


def real_sph_harm(l: int, m: int, points: np.ndarray) -> np.ndarray:
    """Real orthonormal spherical harmonic ``Y_lm`` at unit points ``(n, 3)``.

    Convention (no Condon--Shortley phase in the real form):
    ``Y_l0 = Y_l^0``, ``Y_lm = sqrt(2) (-1)^m Re Y_l^m`` for ``m > 0``,
    ``Y_lm = sqrt(2) (-1)^m Im Y_l^{|m|}`` for ``m < 0``, with ``Y_l^m`` scipy's complex
    orthonormal harmonic (``scipy.special.sph_harm_y``), so ``int Y_lm Y_l'm' = delta``.
    In Cartesian terms ``Y_11 ∝ x``, ``Y_1,-1 ∝ y``, ``Y_10 ∝ z``.
    """
    if not (l >= 0 and abs(m) <= l):
        raise ValueError(f"need l >= 0 and |m| <= l, got l={l}, m={m}")
    p = np.asarray(points, dtype=float)
    polar = np.arccos(np.clip(p[:, 2], -1.0, 1.0))
    azimuth = np.arctan2(p[:, 1], p[:, 0])
    y = special.sph_harm_y(l, abs(m), polar, azimuth)
    if m == 0:
        return y.real
    sign = (-1.0) ** m
    return math.sqrt(2.0) * sign * (y.real if m > 0 else y.imag)


def _modes_function(d: int, modes: list[dict]) -> Callable:
    """``(1 + sum_j a_j mode_j(x)) / |S^{d-1}|``: circle ``cos(k theta - phase)``, sphere (d = 3)
    the real ``Y_lm``, and zonal modes ``{l, amplitude}`` (no ``m``: the zonal PDE, any d) the
    Gegenbauer polynomial ``C_l^{((d-2)/2)}(x_1)``."""
    from scipy import special

    total = {2: 2.0 * math.pi, 3: 4.0 * math.pi}.get(d) or 2.0 * math.pi ** (d / 2.0) / math.gamma(d / 2.0)

    def f(x):
        value = np.ones(x.shape[0])
        for mode in modes:
            if "k" not in mode and "m" not in mode:
                value += mode["amplitude"] * special.eval_gegenbauer(mode["l"], 0.5 * (d - 2), np.clip(x[:, 0], -1, 1))
            elif d == 2:
                theta = np.arctan2(x[:, 1], x[:, 0])
                value += mode["amplitude"] * np.cos(mode["k"] * theta - mode.get("phase", 0.0))
            else:
                value += mode["amplitude"] * real_sph_harm(mode["l"], mode["m"], x)
        return value / total

    return f


def _vmf_function(centers, kappas, weights) -> Callable:
    c = np.asarray(centers, dtype=float)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    k = np.asarray(kappas, dtype=float)
    w = np.asarray(weights, dtype=float)
    kmax = k.max()

    def f(x):
        # w_j exp(kappa_j <c_j, x>), scaled by exp(-kappa_max) against overflow.
        return np.exp(np.clip(x @ c.T * k - kmax, -745.0, 0.0)) @ w

    return f


def density_function(spec: dict, d: int) -> Callable | None:
    """The (unnormalized) initial density of a resolved ``[initial]`` table, or ``None``
    for ``points`` (an empirical measure, see :func:`project`)."""
    kind = spec["kind"]
    if kind == "uniform":
        total = {2: 2.0 * math.pi, 3: 4.0 * math.pi}.get(d) or 2.0 * math.pi ** (d / 2.0) / math.gamma(d / 2.0)
        return lambda x: np.full(x.shape[0], 1.0 / total)
    if kind == "modes":
        return _modes_function(d, spec["modes"])
    if kind == "vmf":
        return _vmf_function(spec["centers"], spec["kappas"], spec["weights"])
    if kind == "python":
        return spec["function_object"]
    if kind == "points":
        return None
    raise InitialDataError(f"unknown initial kind {kind!r}")


def project(mesh, spec: dict) -> np.ndarray:
    """Cell-averaged density of mass 1 on ``mesh`` from a resolved ``[initial]`` table."""
    f = density_function(spec, mesh.d)
    if f is None:
        from scipy.spatial import cKDTree

        pts = np.asarray(spec["points"], dtype=float)
        pts = pts / np.linalg.norm(pts, axis=1, keepdims=True)
        w = np.asarray(spec["weights"], dtype=float) if spec.get("weights") else np.full(len(pts), 1.0 / len(pts))
        _, cell = cKDTree(mesh.centers).query(pts)
        rho = np.bincount(cell, w, minlength=mesh.n_cells) / mesh.areas
    else:
        rho = mesh.cell_averages(f, spec.get("quadrature_degree", 8))
    if not np.all(np.isfinite(rho)):
        raise InitialDataError("initial density is not finite on every cell")
    if np.any(rho < 0):
        i = int(np.argmin(rho))
        hint = "; reduce the mode amplitudes" if spec["kind"] == "modes" else ""
        raise InitialDataError(f"initial density is negative (cell {i}: average {rho[i]:.3e}){hint}")
    mass = float(rho @ mesh.areas)
    if not mass > 0:
        raise InitialDataError("initial density has zero mass")
    return rho / mass

"""Exact, seeded samples of the initial densities: the starting tokens of a particle run.

:func:`sample` draws ``n`` points from the probability density of a resolved
``[initial]`` table (the same density :func:`meanfield.initial.density_function` defines
and the PDE projects onto cells), using one ``numpy.random.default_rng(seed)`` stream in
one process. The sample is a function of ``(spec, d, n, seed)`` only: it does not depend
on the mesh of the case, the number of MPI ranks or anything else, so every rank may draw
it itself (or rank 0 draws and broadcasts: the result is the same).

Methods, per ``initial.kind`` (all exact: the law of the points *is* the target density):

``uniform``
    normalized standard Gaussian vectors (any d).
``modes``
    rejection from the uniform law: accept ``x`` with probability
    ``(1 + sum_j a_j mode_j(x)) / (1 + sum_j |a_j| B_j)``, ``B_j`` a bound of ``|mode_j|``
    (circle: 1; sphere: ``|Y_lm| <= sqrt((2l + 1) / (4 pi))``, from the addition theorem).
    Acceptance rate ``1 / (1 + sum |a_j| B_j)``. A proposal where the density is negative
    raises :class:`~meanfield.initial.InitialDataError` (not a density).
``vmf``
    the density ``sum_j w_j exp(kappa_j <c_j, x>)`` is a mixture of von Mises--Fisher laws
    with probabilities ``p_j ∝ w_j Z_d(kappa_j)``, where
    ``Z_d(kappa) = ∫ exp(kappa <c, x>) dsigma = (2 pi)^{d/2} I_{d/2-1}(kappa) / kappa^{d/2-1}``
    (computed in logarithms, so kappa = 5000 is fine): note that the case weights multiply
    unnormalized exponentials, so a sharp component of weight 1 carries *less* mass than a
    broad one. Component counts are multinomial; each component is drawn with
    ``scipy.stats.vonmises_fisher`` (Wood's algorithm; ``kappa = 0``: uniform); the points
    are then shuffled.
``python``
    rejection from a piecewise-uniform proposal on a fixed internal mesh (circle: 1024
    arcs; sphere: the icosahedral mesh of level 3, 1280 triangles; d >= 4: the uniform law
    with one global bound): a point uniform in cell ``i`` is drawn with probability
    ``∝ B_i |C_i|`` and accepted with probability ``f(x) / B_i``. (A spherical triangle is
    sampled as a point ``p`` uniform in the flat triangle, projected radially, and kept
    with probability ``(h / |p|)^3``, ``h`` the distance of the flat triangle's plane to
    the origin: the inverse Jacobian of the radial map; the cell choice compensates the
    mean of that acceptance, ``h^2 |C_i| / A_i``.) ``B_i`` is 1.5 times the largest value of
    ``f`` at the cell's quadrature nodes and corners. The law is exact when ``B_i`` bounds
    ``f`` on the cell; a proposal with ``f(x) > B_i`` proves a bound wrong: that bound is
    raised to ``2 f(x)`` and the sampling restarts (on the same random stream). Passing
    ``mesh`` replaces the internal proposal mesh (the law is the same, the stream of
    points changes).
``points``
    the given points, normalized onto the sphere, with the given weights (default ``1/n``)
    normalized to sum 1; ``n`` must be ``None`` or their number, ``seed`` is unused.

Sampled kinds return weights ``1/n``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import special

from ..initial import InitialDataError, density_function, real_sph_harm

__all__ = ["sample", "sphere_measure", "vmf_log_normalizer", "uniform_sphere"]

log = logging.getLogger("meanfield")

#: Proposals per batch are at least this many (fewer, larger numpy calls).
_MIN_BATCH = 4096


def sphere_measure(d: int) -> float:
    """``|S^{d-1}| = 2 pi^{d/2} / Gamma(d/2)``."""
    return 2.0 * math.pi ** (d / 2.0) / math.gamma(d / 2.0)


def vmf_log_normalizer(kappa, d: int):
    """``log ∫_{S^{d-1}} exp(kappa <c, x>) dsigma(x)`` for ``kappa >= 0`` (array or scalar)."""
    k = np.asarray(kappa, dtype=float)
    nu = d / 2.0 - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        val = (d / 2.0) * math.log(2.0 * math.pi) + np.log(special.ive(nu, k)) + k - nu * np.log(k)
    # kappa -> 0: the measure of the sphere
    return np.where(k > 0, val, math.log(sphere_measure(d)))


def uniform_sphere(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """``n`` uniform points on S^{d-1}."""
    g = rng.standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def sample(initial_spec: dict, d: int, n: int | None, seed, mesh=None, causal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points ``(n, d)`` on S^{d-1} drawn from the initial density, and their weights.

    Parameters
    ----------
    initial_spec : dict
        A resolved ``[initial]`` table (:func:`meanfield.io.case.resolve_case`).
    d : int
        Ambient dimension (2: circle, 3: sphere; ``uniform``, ``vmf``, ``python`` and
        ``points`` accept any ``d >= 2``, ``modes`` only 2 and 3).
    n : int
        Number of points (``points``: ``None`` or the number given).
    seed : int or None
        Seed of ``numpy.random.default_rng``; the sample depends only on
        ``(initial_spec, d, n, seed)``.
    mesh : Mesh, optional
        ``python`` only: the proposal mesh (default: a fixed internal one).
    causal : bool
        A causal case (``model.mask = "causal"``): the points are tokens in prompt order, token
        ``i`` at position ``s_i = i/n``, and a ``python`` density is ``f(s, x)``: token ``i`` is
        drawn from ``f(s_i, .)`` (:func:`_sample_python_causal`). Every other kind is the same at
        every position: its draws are already in an order that carries no information.

    Returns
    -------
    points : ndarray, shape (n, d)
        Unit vectors.
    weights : ndarray, shape (n,)
        Summing to 1 (``1/n`` except for ``points`` with given weights).
    """
    if int(d) != d or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    d = int(d)
    kind = initial_spec["kind"]
    if kind == "points":
        return _given_points(initial_spec, d, n)
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        x = uniform_sphere(rng, n, d)
    elif kind == "modes":
        x = _sample_modes(rng, initial_spec["modes"], d, n)
    elif kind == "vmf":
        x = _sample_vmf(rng, initial_spec["centers"], initial_spec["kappas"], initial_spec.get("weights") or None, d, n)
    elif kind == "python" and causal:
        x = _sample_python_causal(rng, density_function(initial_spec, d), d, n, mesh)
    elif kind == "python":
        x = _sample_python(rng, density_function(initial_spec, d), d, n, mesh)
    else:
        raise InitialDataError(f"unknown initial kind {kind!r}")
    return x, np.full(n, 1.0 / n)


def _given_points(spec: dict, d: int, n) -> tuple[np.ndarray, np.ndarray]:
    x = np.array(spec["points"], dtype=float)
    if x.ndim != 2 or x.shape[1] != d or x.shape[0] == 0:
        raise InitialDataError(f"initial.points must have shape (n, {d}), got {x.shape}")
    if n is not None and _check_n(n) != x.shape[0]:
        raise ValueError(f"initial.kind = \"points\" gives {x.shape[0]} points, but n = {n} were asked for")
    r = np.linalg.norm(x, axis=1)
    if not np.all(np.isfinite(r)) or np.any(r == 0):
        raise InitialDataError("initial.points must be finite nonzero vectors")
    x /= r[:, None]
    w = spec.get("weights") or None
    if w is None:
        w = np.full(x.shape[0], 1.0 / x.shape[0])
    else:
        w = np.array(w, dtype=float)
        if w.shape != (x.shape[0],) or np.any(w < 0) or not w.sum() > 0:
            raise InitialDataError(f"initial.weights must be {x.shape[0]} nonnegative numbers with a positive sum")
        w = w / math.fsum(w)
    return x, w


def _rejection(rng, n: int, propose, accept_prob, rate: float) -> np.ndarray:
    """Draw proposals in batches, keep each with probability ``accept_prob(x)``, return
    the first ``n`` kept (in proposal order)."""
    kept, count = [], 0
    rate = max(rate, 1e-6)
    while count < n:
        batch = max(_MIN_BATCH, int(1.1 * (n - count) / rate) + 16)
        x = propose(batch)
        p = accept_prob(x)
        ok = rng.random(batch) < p
        kept.append(x[ok])
        count += int(ok.sum())
    return np.concatenate(kept)[:n]


def _sample_modes(rng, modes: list, d: int, n: int) -> np.ndarray:
    zonal = all("k" not in m and "m" not in m for m in modes)  # Gegenbauer modes {l, amplitude}, any d
    if zonal and d >= 3:
        return _sample_zonal_modes(rng, modes, d, n)
    if d not in (2, 3):
        raise InitialDataError(f"initial.kind = \"modes\" with {{k}} or {{l, m}} entries is defined on the circle "
                               f"and the sphere (d = 2, 3), not d = {d}; on S^{d - 1} give zonal modes {{l, amplitude}}")
    if d == 2:
        bound = 1.0 + sum(abs(m["amplitude"]) for m in modes)
    else:
        bound = 1.0 + sum(abs(m["amplitude"]) * math.sqrt((2 * m["l"] + 1) / (4.0 * math.pi)) for m in modes)

    def shape(x):  # 1 + sum a_j mode_j(x)
        g = np.ones(x.shape[0])
        if d == 2:
            theta = np.arctan2(x[:, 1], x[:, 0])
            for m in modes:
                g += m["amplitude"] * np.cos(m["k"] * theta - m.get("phase", 0.0))
        else:
            for m in modes:
                g += m["amplitude"] * real_sph_harm(m["l"], m["m"], x)
        if np.any(g < 0):
            i = int(np.argmin(g))
            raise InitialDataError(f"the modes density is negative at {np.array2string(x[i], precision=4)} "
                                   f"(1 + sum amplitude * mode = {g[i]:.3e}); reduce the mode amplitudes")
        return g / bound

    return _rejection(rng, n, lambda m: uniform_sphere(rng, m, d), shape, 1.0 / bound)


def _sample_zonal_modes(rng, modes: list, d: int, n: int) -> np.ndarray:
    """``1 + sum_j a_j C_{l_j}^{(alpha)}(x_1)``, ``alpha = (d - 2)/2``, by rejection from the
    uniform law with the bound ``1 + sum_j |a_j| C_{l_j}^{(alpha)}(1)`` (``|C_l^{(alpha)}| <=
    C_l^{(alpha)}(1)`` on [-1, 1] for ``alpha > 0``)."""
    alpha = 0.5 * (d - 2)
    bound = 1.0 + sum(abs(m["amplitude"]) * float(special.eval_gegenbauer(m["l"], alpha, 1.0)) for m in modes)

    def shape(x):
        g = np.ones(x.shape[0])
        for m in modes:
            g += m["amplitude"] * special.eval_gegenbauer(m["l"], alpha, np.clip(x[:, 0], -1.0, 1.0))
        if np.any(g < 0):
            i = int(np.argmin(g))
            raise InitialDataError(f"the modes density is negative at x_1 = {x[i, 0]:.4f} ({g[i]:.3e}); "
                                   "reduce the mode amplitudes")
        return g

    return _rejection(rng, n, lambda k: uniform_sphere(rng, k, d), lambda x: shape(x) / bound, 1.0 / bound)


def _sample_vmf(rng, centers, kappas, weights, d: int, n: int) -> np.ndarray:
    from scipy import stats

    c = np.asarray(centers, dtype=float)
    if c.ndim != 2 or c.shape[1] != d:
        raise InitialDataError(f"initial.centers must have shape (k, {d}), got {c.shape}")
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    k = np.asarray(kappas, dtype=float)
    w = np.ones(len(c)) if weights is None else np.asarray(weights, dtype=float)
    if k.shape != (len(c),) or w.shape != (len(c),):
        raise InitialDataError("initial.kappas and initial.weights need one entry per centre")
    with np.errstate(divide="ignore"):
        logp = np.log(w) + vmf_log_normalizer(k, d)
    p = np.exp(logp - logp.max())
    p /= p.sum()
    counts = rng.multinomial(n, p)
    parts = []
    for cj, kj, nj in zip(c, k, counts):
        if nj == 0:
            continue
        if kj == 0:
            parts.append(uniform_sphere(rng, int(nj), d))
        else:
            parts.append(np.atleast_2d(stats.vonmises_fisher(cj, kj).rvs(int(nj), random_state=rng)))
    x = np.concatenate(parts)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[rng.permutation(n)]


# -- python: rejection from a piecewise-uniform proposal ---------------------------------------
def _proposal_mesh(d: int):
    if d == 2:
        from ..geometry.mesh import CircleMesh

        return CircleMesh(1024)
    if d == 3:
        from ..geometry.sphere import load_icosahedral

        return load_icosahedral(3)
    return None


def _evaluate(f, x: np.ndarray) -> np.ndarray:
    v = np.asarray(f(x), dtype=float)
    if v.shape != (x.shape[0],):
        raise InitialDataError(f"initial.function must return an array of shape ({x.shape[0]},), got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InitialDataError("initial.function returned non-finite values")
    if np.any(v < 0):
        i = int(np.argmin(v))
        raise InitialDataError(f"initial.function is negative ({v[i]:.3e}) at {np.array2string(x[i], precision=4)}")
    return v


def _probe_points(mesh) -> np.ndarray:
    """``(cells, probes, d)``: the points where a density is probed for the bounds of its
    proposal cells: each cell's degree-6 quadrature nodes and its corners."""
    pts, _ = mesh.cell_quadrature(6)
    if getattr(mesh, "manifold", "") == "circle":
        ends = [mesh.edge_points[mesh.cell_edges[:, k]] for k in (0, 1)]
        return np.concatenate([pts, *ends], axis=1)
    if hasattr(mesh, "triangles"):
        return np.concatenate([pts, mesh.vertices[mesh.triangles]], axis=1)
    return pts


def _sample_python(rng, f, d: int, n: int, mesh=None) -> np.ndarray:
    mesh = mesh if mesh is not None else _proposal_mesh(d)
    if mesh is None or mesh.d != d or not hasattr(mesh, "cell_quadrature"):
        return _sample_python_uniform(rng, f, d, n)
    probe = _probe_points(mesh)
    values = _evaluate(f, probe.reshape(-1, d)).reshape(probe.shape[:2])
    bounds = 1.5 * values.max(axis=1)
    if not bounds.sum() > 0:
        raise InitialDataError("initial.function vanishes at every probe point: it has no mass to sample")
    scale, draw_in_cell = _cell_sampler(mesh)
    while True:
        mass = bounds * scale
        cdf = np.cumsum(mass)
        cdf /= cdf[-1]
        rate = float(np.sum(values.mean(axis=1) * mesh.areas) / mass.sum())
        kept, count, violated = [], 0, None
        while count < n:
            batch = max(_MIN_BATCH, int(1.1 * (n - count) / max(rate, 1e-6)) + 16)
            cell = np.minimum(np.searchsorted(cdf, rng.random(batch), side="right"), mesh.n_cells - 1)
            x, geometric = draw_in_cell(rng, cell)
            fx = _evaluate(f, x)
            over = fx > bounds[cell]
            if np.any(over):
                violated = (cell[over], fx[over])
                break
            ok = rng.random(batch) * bounds[cell] < geometric * fx
            kept.append(x[ok])
            count += int(ok.sum())
        if violated is None:
            return np.concatenate(kept)[:n]
        log.debug("python sampler: density exceeds the bound of %d proposal cell(s); bound raised, restarting",
                  np.unique(violated[0]).size)
        np.maximum.at(bounds, violated[0], 2.0 * violated[1])


def _evaluate_causal(f, s: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``f(s, x)`` checked like :func:`_evaluate`."""
    return _evaluate(lambda pts: f(s, pts), x)


#: Positions at which a causal ``f(s, x)`` is probed for the bounds of its sampler.
_S_PROBES = 33


def _sample_python_causal(rng, f, d: int, n: int, mesh=None) -> np.ndarray:
    """Tokens ``x_i ~ f(s_i, .)`` (``s_i = i/n``) by rejection: the proposal of
    :func:`_sample_python` (a point uniform in a cell chosen with probability ``∝ B_j |C_j|``;
    the uniform law with one bound for ``d >= 4``) with bounds ``B_j`` 1.5 times the largest
    value of ``f`` over the cell's probe points at 33 positions in ``[0, 1]``. Every round
    proposes ``k`` candidates to each token still without a point (``k`` from the acceptance
    rate) and gives each token its first accepted one. Exact for each token where the bounds
    hold; a proposal above its bound raises that bound (to twice the value) and the sampling
    restarts on the same stream, as :func:`_sample_python` does."""
    positions = np.arange(1, n + 1) / n
    s_probe = np.linspace(0.0, 1.0, _S_PROBES)
    mesh = mesh if mesh is not None else _proposal_mesh(d)
    if mesh is None or mesh.d != d or not hasattr(mesh, "cell_quadrature"):
        probe = uniform_sphere(np.random.default_rng(20240401), 1 << 12, d)[None]  # one "cell": the sphere

        def draw_in_cell(rng_, cell):
            return uniform_sphere(rng_, cell.size, d), 1.0

        scale, areas = np.ones(1), np.array([sphere_measure(d)])
    else:
        probe = _probe_points(mesh)
        scale, draw_in_cell = _cell_sampler(mesh)
        areas = mesh.areas
    flat = probe.reshape(-1, d)
    values = np.stack([_evaluate_causal(f, np.full(flat.shape[0], sv), flat).reshape(probe.shape[:2])
                       for sv in s_probe])  # (S, cells, probes)
    bounds = 1.5 * values.max(axis=(0, 2))
    if not bounds.sum() > 0:
        raise InitialDataError("initial.function vanishes at every probe point: it has no mass to sample")
    while True:
        mass = bounds * scale
        cdf = np.cumsum(mass)
        cdf /= cdf[-1]
        rate = float(np.min(np.sum(values.mean(axis=2) * areas, axis=1)) / mass.sum())
        k = int(min(256, max(1, math.ceil(1.5 / max(rate, 1e-6)))))
        x = np.empty((n, d))
        remaining = np.arange(n)
        violated = None
        while remaining.size:
            idx = np.repeat(remaining, k)
            cell = np.minimum(np.searchsorted(cdf, rng.random(idx.size), side="right"), bounds.size - 1)
            xc, geometric = draw_in_cell(rng, cell)
            fx = _evaluate_causal(f, positions[idx], xc)
            over = fx > bounds[cell]
            if np.any(over):
                violated = (cell[over], fx[over])
                break
            ok = (rng.random(idx.size) * bounds[cell] < geometric * fx).reshape(remaining.size, k)
            has = ok.any(axis=1)
            first = np.argmax(ok, axis=1)
            x[remaining[has]] = xc.reshape(remaining.size, k, d)[has, first[has]]
            remaining = remaining[~has]
        if violated is None:
            return x
        log.debug("causal python sampler: density exceeds the bound of %d proposal cell(s); bound raised, restarting",
                  np.unique(violated[0]).size)
        np.maximum.at(bounds, violated[0], 2.0 * violated[1])


def _cell_sampler(mesh):
    """``(scale (N,), draw)``: ``draw(rng, cells) -> (points, g)`` proposes one point in
    each given cell; accepting it with probability ``g`` makes it uniform on the cell, and
    a cell proposed with probability ``∝ scale_i`` and then accepted with probability
    ``g`` is accepted with probability ``∝ |C_i|`` overall.

    Spherical triangle: ``p`` uniform in the flat triangle (area ``A``, plane at distance
    ``h`` from the origin), ``x = p / |p|``; the solid angle element is
    ``h dA / |p|^3``, so ``g = (h / |p|)^3 <= 1`` makes ``x`` uniform on the cell, with mean
    acceptance ``h^2 |C| / A``; hence ``scale = A / h^2``."""
    if getattr(mesh, "manifold", "") == "circle":
        h = 2.0 * math.pi / mesh.n_cells

        def draw(rng, cell):
            theta = (cell + rng.random(cell.size)) * h
            return np.stack([np.cos(theta), np.sin(theta)], axis=1), 1.0

        return mesh.areas, draw
    a, b, c = (mesh.vertices[mesh.triangles[:, k]] for k in range(3))
    normal = np.cross(b - a, c - a)
    twice_area = np.linalg.norm(normal, axis=1)
    height = np.abs(np.einsum("ij,ij->i", a, normal)) / twice_area  # plane to origin

    def draw(rng, cell):
        u, v = rng.random(cell.size), rng.random(cell.size)
        flip = u + v > 1.0
        u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
        p = a[cell] + u[:, None] * (b[cell] - a[cell]) + v[:, None] * (c[cell] - a[cell])
        r = np.linalg.norm(p, axis=1)
        return p / r[:, None], (height[cell] / r) ** 3

    return 0.5 * twice_area / height**2, draw


def _sample_python_uniform(rng, f, d: int, n: int) -> np.ndarray:
    probe = uniform_sphere(np.random.default_rng(20240401), 1 << 15, d)  # fixed: independent of seed
    bound = 2.0 * float(_evaluate(f, probe).max())
    if not bound > 0:
        raise InitialDataError("initial.function vanishes at every probe point: it has no mass to sample")
    while True:
        kept, count, violated = [], 0, None
        while count < n:
            batch = _MIN_BATCH
            x = uniform_sphere(rng, batch, d)
            fx = _evaluate(f, x)
            if np.any(fx > bound):
                violated = float(fx.max())
                break
            ok = rng.random(batch) * bound < fx
            kept.append(x[ok])
            count += int(ok.sum())
        if violated is None:
            return np.concatenate(kept)[:n]
        log.debug("python sampler: density exceeds the global bound; bound raised, restarting")
        bound = 2.0 * violated

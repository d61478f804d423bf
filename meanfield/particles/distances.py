"""Distances between a PDE state and an empirical measure of particles.

The PDE state is given by its cell ``masses (N,)`` on a mesh (cell averages of the density
times the cell measures); the particles by ``points (n, d)`` and ``weights (n,)`` (default
``1/n``). Both are normalized to probability measures. The ground cost is the geodesic
distance ``d(x, y) = 2 arcsin(|x - y| / 2)`` (computed from the chord ``|x - y|``, which
keeps its accuracy for nearby points where ``arccos <x, y>`` loses half the digits);
every distance is in radians. :func:`distance` dispatches on the metric name
(``compare --metric``). Cost and bias of each:

``w1``, ``w2`` -- exact W_1, W_2.
    *Circle*: between the piecewise-constant density itself and the particles, from
    quantile functions (below): O((N + n) log(N + n)) per evaluation, about 80
    evaluations, memory O(N + n); no bias (round-off, ~1e-15 relative).
    ``representation="atoms"`` puts the masses at the cell centres instead (bias up to
    h/4 for W_1, h/sqrt(12) for W_2).
    *Sphere, any d >= 3*: masses as atoms at the cell centres (``quadrature_degree=q``: at
    the cells' quadrature nodes), POT's network simplex ``ot.emd2`` on the dense N x n
    cost matrix: memory about 3 x 8 N n bytes (refused above ``max_entries`` = 2e7), time
    ~3.5 s for N = 5120, n = 4096 (1 s of it for the cost matrix). Bias: the atoms move
    each cell's mass by at most the cell radius, so the error is at most the largest cell
    radius (icosahedral level 4: ~0.02 rad).
``sinkhorn`` -- entropic transport cost ``(<P, d^p>)^(1/p)``, ``P`` the entropic plan
    with ``reg = blur^p`` (default p = 2, blur = 0.1 rad), log-domain Sinkhorn: POT's
    ``ot.sinkhorn2(..., method="sinkhorn_log")`` when N n <= ``max_entries``, else a
    blockwise solver (eps-scaling, the cost recomputed in row blocks, memory O(block n),
    time O(N n) per iteration). Bias: ``>= W_p`` (``P`` is a feasible plan, up to the
    marginal tolerance ``tol``); the excess shrinks fast with ``blur`` (in the tests, 80
    atoms vs 30 points: +0.36, +0.08, +0.008, +0.0005 at blur 0.8, 0.4, 0.2, 0.1 on
    W_2 = 0.45) but the iterations grow like ``1/reg``: ~3e3 at blur 0.1 and ~5e4 at
    blur 0.05 on that small problem. For sizes where the cost matrix fits in memory,
    ``w1``/``w2`` are exact *and* faster; ``sinkhorn`` is the memory-bounded option.
``sliced`` -- spherical sliced Wasserstein SSW_p (Bonet et al. 2023), the mean over
    ``n_projections`` (200) random great circles of the circle W_p^p of the projected
    measures; PDE side: atoms at the cell centres. O(P (N + n) log(N + n)), memory
    O(chunk (N + n)). A different metric, not an estimate of W: ``SSW_1 <= W_1`` (with
    equality for two Diracs); Monte Carlo error ~ 0.85 / sqrt(P) relative. On the circle
    there is one great circle, the circle itself: exact ``w1``/``w2`` of the density.
``mmd`` -- maximum mean discrepancy ``sqrt(aKa - 2 aKb + bKb)``, kernel ``"energy"``
    (default; ``k = -|x - y|``, chordal, which makes ``mmd^2`` the energy distance
    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``, parameter free) or ``"gaussian"``
    (``exp(-|x - y|^2 / (2 bandwidth^2))``). O((N + n)^2 d) time in row blocks, never an
    N x n matrix, memory O(block (N + n)). PDE side: atoms at the cell centres (or
    quadrature nodes); no bias between the two discrete measures (a V-statistic). Against
    the true density its expectation is ~ c / sqrt(n) (the empirical fluctuation).
``tv`` -- ``1/2 sum_i |m_i - h_i|``, ``h`` the histogram of the particles binned into the
    cells (circle: by angle; spherical triangles: exact point location). O(n log N).
    A distance of histograms, not of measures: n particles give ~ sqrt(N / (2 pi n)) from
    sampling noise alone, so it decays only when n >> N.

Exact W_p on the circle. Angles in turns (circumference 1). For measures mu, nu with
quantile functions ``F^{-1}``, ``G^{-1}`` extended by ``G^{-1}(t + 1) = G^{-1}(t) + 1``
(Delon, Salomon, Sobolevski 2010; Rabin, Delon, Gousseau 2011)::

    W_p^p(mu, nu) = min_theta  ∫_0^1 |F^{-1}(t) - G^{-1}(t + theta)|^p dt,

a convex function of the shift ``theta`` with its minimum in ``[-1, 1]``. A
piecewise-constant density has a piecewise-linear quantile function, the particles a
piecewise-constant one: for each ``theta`` the integrand is linear between merged
breakpoints and integrated exactly; the minimum is found by golden-section search to
1e-15 and polished at the kinks nearby (shifts where two breakpoints meet). The result is
multiplied by ``2 pi`` (radians). POT's ``ot.wasserstein_circle`` gives the same for two
discrete measures (its binary search stops at 1e-6).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.spatial.distance import cdist

__all__ = [
    "METRICS",
    "bin_particles",
    "circle_wasserstein",
    "distance",
    "emd",
    "geodesic",
    "mmd",
    "mmd_measures",
    "sinkhorn",
    "sinkhorn_measures",
    "sliced",
    "tv",
    "w1",
    "w2",
]

#: Largest N x n for dense transport (the cost matrix and POT's plan: ~ 3 x 8 N n bytes).
MAX_DENSE_ENTRIES = 20_000_000
_TWO_PI = 2.0 * math.pi


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def _probability(w, n: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name} must be finite and nonnegative")
    total = math.fsum(w)
    if not total > 0:
        raise ValueError(f"{name} must have a positive sum")
    return w / total


def _inputs(mesh, masses, particles, weights):
    m = _probability(masses, mesh.n_cells, "masses")
    x = np.asarray(particles, dtype=float)
    if x.ndim != 2 or x.shape[1] != mesh.d or x.shape[0] == 0:
        raise ValueError(f"particles must have shape (n, {mesh.d}), got {x.shape}")
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return m, x, _probability(weights, x.shape[0], "weights")


def geodesic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Geodesic distances ``(len(x), len(y))`` between unit vectors, ``2 arcsin(|x - y| / 2)``."""
    return 2.0 * np.arcsin(np.minimum(cdist(x, y) * 0.5, 1.0))


def _pde_atoms(mesh, m: np.ndarray, quadrature_degree=None):
    """The PDE measure as atoms: cell centres, or every cell's quadrature nodes."""
    if quadrature_degree is None:
        keep = m > 0
        return mesh.centers[keep], m[keep]
    pts, wts = mesh.cell_quadrature(int(quadrature_degree))
    a = (wts / wts.sum(axis=1, keepdims=True)) * m[:, None]
    pts, a = pts.reshape(-1, mesh.d), a.reshape(-1)
    keep = a > 0
    return pts[keep], a[keep]


def _is_circle(mesh) -> bool:
    return getattr(mesh, "manifold", "") == "circle" and mesh.d == 2


# ---------------------------------------------------------------------------------------
# exact W_p on the circle
# ---------------------------------------------------------------------------------------
def _atoms_quantile(theta: np.ndarray, w: np.ndarray):
    """Quantile pieces ``(t_start (K+1,), value (K,), slope (K,))`` in turns of atoms."""
    s = np.mod(np.asarray(theta, dtype=float) / _TWO_PI, 1.0)
    s[s >= 1.0] = 0.0
    order = np.argsort(s, kind="stable")
    s, w = s[order], w[order]
    keep = w > 0
    s, w = s[keep], w[keep]
    t = np.concatenate([[0.0], np.cumsum(w)])
    t /= t[-1]
    return t, s, np.zeros_like(s)


def _density_quantile(masses: np.ndarray):
    """Quantile pieces of the piecewise-constant density with ``masses`` on the uniform
    arcs ``[i/N, (i+1)/N)`` (turns) of a :class:`~meanfield.geometry.mesh.CircleMesh`."""
    n = masses.size
    idx = np.flatnonzero(masses > 0)
    m = masses[idx] / math.fsum(masses[idx])
    t = np.concatenate([[0.0], np.cumsum(m)])
    t /= t[-1]
    return t, idx / n, (1.0 / n) / m


def _quantile_at(q, u: np.ndarray):
    """Piece index, value and slope of the periodic quantile ``G^{-1}(u)`` (any real u)."""
    t, v, s = q
    k = np.floor(u)
    f = u - k
    j = np.minimum(np.searchsorted(t, f, side="right") - 1, v.size - 1)
    j = np.maximum(j, 0)
    return v[j] + s[j] * (f - t[j]) + k, s[j]


def _shift_cost(q1, q2, theta: float, p: int) -> float:
    """``∫_0^1 |Q1(t) - Q2(t + theta)|^p dt`` exactly (both quantiles piecewise linear)."""
    t1 = q1[0]
    b2 = np.mod(q2[0][:-1] - theta, 1.0)
    grid = np.unique(np.concatenate([t1, b2, [0.0, 1.0]]))
    grid = grid[(grid >= 0.0) & (grid <= 1.0)]
    lo, hi = grid[:-1], grid[1:]
    width = hi - lo
    mid = 0.5 * (lo + hi)
    i = np.minimum(np.searchsorted(t1, mid, side="right") - 1, q1[1].size - 1)
    v1 = q1[1][i] + q1[2][i] * (mid - t1[i])
    v2, s2 = _quantile_at(q2, mid + theta)
    slope = q1[2][i] - s2
    diff = v1 - v2
    l0 = diff - 0.5 * width * slope
    l1 = diff + 0.5 * width * slope
    if p == 2:
        return float(np.sum(width * (l0 * l0 + l0 * l1 + l1 * l1)) / 3.0)
    same = l0 * l1 >= 0
    denom = np.where(same, 1.0, np.abs(l1 - l0))
    val = np.where(same, np.abs(diff), (l0 * l0 + l1 * l1) / (2.0 * denom))
    return float(np.sum(width * val))


def _golden_min(f, lo: float, hi: float, tol: float = 1e-15) -> tuple[float, float]:
    """``(min, argmin)`` of a convex function on ``[lo, hi]`` by golden-section search."""
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    best = min((fc, c), (fd, d), (f(lo), lo), (f(hi), hi))
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
        best = min(best, (fc, c), (fd, d))
        if c >= d:  # interval at round-off
            break
    return best


def _kinks_near(q1, q2, theta: float, window: float = 1e-9, most: int = 16) -> np.ndarray:
    """Shifts within ``window`` of ``theta`` at which a breakpoint of ``Q2(. + shift)``
    meets one of ``Q1``: where the convex cost can have a kink (its minimum, often)."""
    t1, t2 = q1[0][:-1], q2[0][:-1]
    u = np.mod(t1 + theta, 1.0)
    j = np.searchsorted(t2, u)
    shift = np.concatenate([t2[np.mod(j - 1, t2.size)], t2[np.mod(j, t2.size)]]) - np.concatenate([t1, t1])
    shift -= np.round(shift - theta)  # the representative nearest theta
    shift = np.unique(shift[np.abs(shift - theta) < window])
    return shift[np.argsort(np.abs(shift - theta))[:most]]


def _circle_wp(q1, q2, p: int) -> float:
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2 on the circle, got {p!r}")

    def cost(th):
        return _shift_cost(q1, q2, th, p)

    best = _golden_min(cost, -1.0, 1.0)
    # The golden section leaves |theta - theta*| ~ 1e-16; at a kink that is a cost error of
    # the same size, which the p-th root amplifies for tiny distances: try the kinks nearby.
    for th in _kinks_near(q1, q2, best[1]):
        best = min(best, (cost(th), th))
    return _TWO_PI * max(best[0], 0.0) ** (1.0 / p)


def circle_wasserstein(theta_a, a, theta_b, b, p: int = 1) -> float:
    """Exact W_p (p = 1, 2; radians) between two discrete measures on the circle given by
    angles ``theta_a (n,)``, ``theta_b (m,)`` and weights (``None``: uniform)."""
    ta, tb = np.atleast_1d(np.asarray(theta_a, float)), np.atleast_1d(np.asarray(theta_b, float))
    qa = _atoms_quantile(ta, _probability(a, ta.size, "a"))
    qb = _atoms_quantile(tb, _probability(b, tb.size, "b"))
    return _circle_wp(qa, qb, p)


def _circle_distance(mesh, m, x, w, p: int, representation: str) -> float:
    theta = np.arctan2(x[:, 1], x[:, 0])
    qb = _atoms_quantile(theta, w)
    if representation == "density":
        qa = _density_quantile(m)
    elif representation == "atoms":
        qa = _atoms_quantile(np.arctan2(mesh.centers[:, 1], mesh.centers[:, 0]), m)
    else:
        raise ValueError(f"representation must be 'density' or 'atoms', got {representation!r}")
    return _circle_wp(qa, qb, p)


# ---------------------------------------------------------------------------------------
# exact discrete optimal transport (POT network simplex)
# ---------------------------------------------------------------------------------------
def _check_dense(n1: int, n2: int, max_entries: int, what: str) -> None:
    if n1 * n2 > max_entries:
        raise ValueError(
            f"{what} needs a dense {n1} x {n2} cost matrix ({n1 * n2:.3g} entries > max_entries = "
            f"{max_entries:.3g}); use the metric 'sinkhorn' (blockwise), 'sliced' or 'mmd', a coarser mesh, "
            "or fewer particles"
        )


def emd(x, a, y, b, p: int = 1, max_entries: int = MAX_DENSE_ENTRIES, num_iter_max: int = 10_000_000) -> float:
    """Exact W_p (radians) between discrete measures ``(x (n, d), a)`` and ``(y (m, d), b)``
    on the sphere with geodesic ground cost, by POT's network simplex (``ot.emd2``)."""
    import ot

    _check_dense(len(x), len(y), max_entries, "exact optimal transport")
    cost = geodesic(x, y) ** p
    val = ot.emd2(np.ascontiguousarray(a / a.sum()), np.ascontiguousarray(b / b.sum()), cost,
                  numItermax=num_iter_max)
    return float(max(val, 0.0)) ** (1.0 / p)


def zonal_wasserstein(mesh, masses, particles, weights=None, p: int = 1) -> float:
    """Exact W_p (p = 1, 2; radians) between the laws of the polar angle ``phi`` (``x_1 = cos
    phi``): the zonal PDE's (``masses`` on the bands of ``mesh``, uniform in ``phi`` within a
    band) and the particles' (any points on S^{d-1}). For two zonal measures this is their W_p
    on the sphere (a rotation-equivariant coupling moves along meridians); for particles it is
    the distance of their polar-angle law to the PDE's. By quantile functions:
    ``W_p^p = int_0^1 |Q_pde(u) - Q_tokens(u)|^p du``, ``Q_pde`` piecewise linear, ``Q_tokens`` a
    step, integrated exactly on the merged breakpoints."""
    m = np.asarray(masses, dtype=float)
    m = m / m.sum()
    x = np.asarray(particles, dtype=float)
    w = _probability(weights, x.shape[0], "weights") if weights is not None else np.full(x.shape[0], 1.0 / x.shape[0])
    phi = np.arccos(np.clip(x[:, 0] / np.linalg.norm(x, axis=1), -1.0, 1.0))
    order = np.argsort(phi, kind="stable")
    phi, w = phi[order], w[order]
    h = math.pi / m.size
    cm = np.concatenate([[0.0], np.cumsum(m)])
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cm[-1] = cw[-1] = 1.0
    u = np.unique(np.concatenate([cm, cw]))
    u0, u1 = u[:-1], u[1:]
    mid = 0.5 * (u0 + u1)
    band = np.clip(np.searchsorted(cm, mid, side="right") - 1, 0, m.size - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(m[band] > 0, h / m[band], 0.0)
    q0 = band * h + (u0 - cm[band]) * slope  # the PDE's quantile at u0 (linear on [u0, u1])
    atom = phi[np.clip(np.searchsorted(cw, mid, side="right") - 1, 0, phi.size - 1)]
    a, b, L = q0 - atom, slope, u1 - u0
    if p == 2:
        return float(math.sqrt(max(np.sum(L * (a * a + a * b * L + b * b * L * L / 3.0)), 0.0)))
    if p != 1:
        raise ValueError(f"p must be 1 or 2, got {p}")
    end = a + b * L
    same = a * end >= 0
    whole = np.abs(a + 0.5 * b * L) * L
    with np.errstate(divide="ignore", invalid="ignore"):
        split = 0.5 * (a * a + end * end) / np.abs(b)  # |f| integrates to two triangles
    return float(np.sum(np.where(same, whole, split)))


def _wasserstein(mesh, masses, particles, weights, p, representation=None, quadrature_degree=None,
                 max_entries=MAX_DENSE_ENTRIES):
    m, x, w = _inputs(mesh, masses, particles, weights)
    if getattr(mesh, "manifold", "") == "zonal":
        return zonal_wasserstein(mesh, m, x, w, p)
    if _is_circle(mesh) and quadrature_degree is None:
        return _circle_distance(mesh, m, x, w, p, representation or "density")
    if representation not in (None, "atoms"):
        raise ValueError(f"representation {representation!r} is only available on the circle; the sphere uses atoms")
    y, b = _pde_atoms(mesh, m, quadrature_degree)
    keep = w > 0
    return emd(y, b, x[keep], w[keep], p, max_entries)


def w1(mesh, masses, particles, weights=None, *, representation=None, quadrature_degree=None,
       max_entries: int = MAX_DENSE_ENTRIES) -> float:
    """Exact W_1 (geodesic, radians) between the PDE state and the particles.

    Circle: ``representation="density"`` (default, the piecewise-constant density) or
    ``"atoms"`` (masses at the cell centres). Sphere: atoms at the cell centres, or at the
    cells' quadrature nodes of ``quadrature_degree``; POT ``ot.emd2``.
    """
    return _wasserstein(mesh, masses, particles, weights, 1, representation, quadrature_degree, max_entries)


def w2(mesh, masses, particles, weights=None, *, representation=None, quadrature_degree=None,
       max_entries: int = MAX_DENSE_ENTRIES) -> float:
    """Exact W_2 (geodesic cost squared; radians); as :func:`w1`."""
    return _wasserstein(mesh, masses, particles, weights, 2, representation, quadrature_degree, max_entries)


# ---------------------------------------------------------------------------------------
# entropic optimal transport
# ---------------------------------------------------------------------------------------
def _lse_rows(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1)
    top = np.where(np.isfinite(top), top, 0.0)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


def _sinkhorn_blockwise(x, a, y, b, p, reg, tol, max_iter, block):
    """Log-domain Sinkhorn with eps-scaling, the cost recomputed in row blocks of ``x``."""
    la, lb = np.log(a), np.log(b)
    f = np.zeros(len(x))
    g = np.zeros(len(y))
    rows = [(s, min(s + block, len(x))) for s in range(0, len(x), block)]

    def cost(s, e):
        return geodesic(x[s:e], y) ** p

    def update_f(eps):
        for s, e in rows:
            f[s:e] = -eps * _lse_rows((g[None, :] - cost(s, e)) / eps + lb[None, :])

    def update_g(eps):
        top = np.full(len(y), -np.inf)
        acc = np.zeros(len(y))
        for s, e in rows:
            z = (f[s:e, None] - cost(s, e)) / eps + la[s:e, None]
            zmax = z.max(axis=0)
            new = np.maximum(top, zmax)
            acc = acc * np.exp(top - new) + np.exp(z - new[None, :]).sum(axis=0)
            top = new
        g[:] = -eps * (top + np.log(acc))

    def column_error(eps):
        col = np.zeros(len(y))
        for s, e in rows:
            col += np.exp((f[s:e, None] + g[None, :] - cost(s, e)) / eps + la[s:e, None] + lb[None, :]).sum(axis=0)
        return float(np.abs(col - b).sum())

    eps = max(reg, math.pi**p)
    converged = False
    while True:
        for it in range(max_iter if eps == reg else 20):
            update_g(eps)
            update_f(eps)
            if eps == reg and it % 10 == 9 and column_error(eps) < tol:
                converged = True
                break
        if eps == reg:
            break
        eps = max(reg, eps / 4.0)
    if not converged:
        warnings.warn(f"blockwise Sinkhorn did not reach the marginal tolerance {tol:g} in {max_iter} iterations "
                      f"(reg = {reg:g}); take a larger blur or more iterations", RuntimeWarning, stacklevel=3)
    total = 0.0
    for s, e in rows:
        c = cost(s, e)
        total += float(np.sum(np.exp((f[s:e, None] + g[None, :] - c) / reg + la[s:e, None] + lb[None, :]) * c))
    return total


def sinkhorn_measures(x, a, y, b, p: int = 2, blur: float = 0.1, reg: float | None = None, tol: float = 1e-6,
                      max_iter: int = 20_000, max_entries: int = MAX_DENSE_ENTRIES, block: int | None = None) -> float:
    """``(<P, d^p>)^(1/p)`` for the entropic plan ``P`` between two discrete measures
    (``reg = blur^p`` unless ``reg`` is given). Dense POT ``ot.sinkhorn2(...,
    method="sinkhorn_log")`` up to ``max_entries``, else the blockwise solver."""
    a = a / a.sum()
    b = b / b.sum()
    reg = float(blur) ** p if reg is None else float(reg)
    if not reg > 0:
        raise ValueError(f"the regularization must be > 0, got {reg!r}")
    if len(x) * len(y) <= max_entries and block is None:
        import ot

        cost = geodesic(x, y) ** p
        val = float(ot.sinkhorn2(a, b, cost, reg, method="sinkhorn_log", numItermax=max_iter, stopThr=tol))
    else:
        block = block or max(1, (1 << 20) // max(1, len(y)))
        val = _sinkhorn_blockwise(x, a, y, b, p, reg, tol, max_iter, block)
    return max(val, 0.0) ** (1.0 / p)


def sinkhorn(mesh, masses, particles, weights=None, *, p: int = 2, blur: float = 0.1, reg: float | None = None,
             quadrature_degree=None, tol: float = 1e-6, max_iter: int = 20_000,
             max_entries: int = MAX_DENSE_ENTRIES, block: int | None = None) -> float:
    """Entropic transport cost ``(<P, d^p>)^(1/p)`` (radians) between the PDE state (atoms
    at the cell centres) and the particles; ``>= W_p``, tending to it as ``blur -> 0``."""
    m, x, w = _inputs(mesh, masses, particles, weights)
    y, b = _pde_atoms(mesh, m, quadrature_degree)
    keep = w > 0
    return sinkhorn_measures(y, b, x[keep], w[keep], p, blur, reg, tol, max_iter, max_entries, block)


# ---------------------------------------------------------------------------------------
# sliced
# ---------------------------------------------------------------------------------------
def _circle_w1_rows(u: np.ndarray, a: np.ndarray, v: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact W_1 (turns) on the circle for every row: positions ``u (P, N)``, ``v (P, n)`` in
    ``[0, 1)`` with weights ``a (N,)``, ``b (n,)`` (probabilities).

    ``W_1 = min_alpha ∫_0^1 |F(s) - G(s) - alpha| ds`` (the CDF difference is piecewise
    constant between the merged points; alpha is its median under the length measure)."""
    z = np.concatenate([u, v], axis=1)
    wts = np.concatenate([a, -b])
    order = np.argsort(z, axis=1, kind="stable")
    zs = np.take_along_axis(z, order, axis=1)
    diff = np.cumsum(wts[order], axis=1)  # F - G on [z_k, z_{k+1})
    diff[:, -1] = 0.0  # after the last point (and before the first): F - G = 0
    length = np.empty_like(zs)
    length[:, :-1] = np.diff(zs, axis=1)
    length[:, -1] = 1.0 - zs[:, -1] + zs[:, 0]
    srt = np.argsort(diff, axis=1, kind="stable")
    d_sorted = np.take_along_axis(diff, srt, axis=1)
    cum = np.cumsum(np.take_along_axis(length, srt, axis=1), axis=1)
    k = np.argmax(cum >= 0.5 * cum[:, -1:], axis=1)
    alpha = d_sorted[np.arange(len(k)), k]
    return np.sum(length * np.abs(diff - alpha[:, None]), axis=1)


def _circle_coordinates(x: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Coordinates in ``[0, 1)`` (turns) of the projections ``U^T x / |U^T x|`` of the rows
    of ``x`` on the great circles ``proj (P, d, 2)``: shape ``(P, len(x))``."""
    z = np.einsum("nd,pdk->pnk", x, proj)
    s = np.mod(np.arctan2(z[..., 1], z[..., 0]) / _TWO_PI, 1.0)
    s[s >= 1.0] = 0.0
    return s


def sliced(mesh, masses, particles, weights=None, *, p: int = 1, n_projections: int = 200, seed=0,
           quadrature_degree=None, chunk: int | None = None) -> float:
    """Spherical sliced Wasserstein distance SSW_p (radians), Bonet et al. (2023).

    ``SSW_p^p = E_U W_p^p(P_U mu, P_U nu)`` over great circles ``U`` (``(d, 2)`` orthonormal,
    uniform on the Stiefel manifold, ``P_U x = U^T x / |U^T x|``), estimated with
    ``n_projections`` circles drawn from ``numpy.random.default_rng(seed)`` (QR of Gaussian
    matrices, as POT's ``get_projections_sphere``). ``p = 1``: the circle W_1 of every
    projection exactly (CDF-median formula, vectorized); ``p = 2``: POT's
    ``ot.sliced_wasserstein_sphere`` with the same projections (binary search to 1e-6).
    PDE side: atoms at the cell centres. On the circle there is one great circle, the
    circle itself: exact ``w1`` / ``w2`` with the density.

    ``SSW_1 <= W_1`` always (for two points, ``E_U d(P_U x, P_U y) = d(x, y)``, so the
    projections of an optimal plan cost W_1 on average), with equality for two Diracs.
    ``SSW_2`` is *not* bounded by ``W_2``: for two Diracs at distance ``t`` it is about
    1.2 t (t = 1), 1.6 t (t = 0.1), 1.8 t (t = 0.01), since projections near the poles of a
    great circle stretch distances without bound.
    """
    m, x, w = _inputs(mesh, masses, particles, weights)
    if _is_circle(mesh) and quadrature_degree is None:
        return _circle_distance(mesh, m, x, w, p, "density")
    y, b = _pde_atoms(mesh, m, quadrature_degree)
    rng = np.random.default_rng(seed)
    proj, _ = np.linalg.qr(rng.standard_normal((int(n_projections), mesh.d, 2)))
    if p == 1:
        chunk = chunk or max(1, (1 << 21) // (len(y) + len(x)))
        total = 0.0
        for s in range(0, len(proj), chunk):
            pr = proj[s:s + chunk]
            total += float(_circle_w1_rows(_circle_coordinates(y, pr), b, _circle_coordinates(x, pr), w).sum())
        return _TWO_PI * total / len(proj)
    import ot

    val = ot.sliced_wasserstein_sphere(y, x, b, w, n_projections=int(n_projections), p=p, projections=proj)
    return _TWO_PI * float(val)


# ---------------------------------------------------------------------------------------
# MMD
# ---------------------------------------------------------------------------------------
def _kernel(kernel: str, bandwidth: float):
    if kernel == "energy":
        return lambda x, y: -cdist(x, y)
    if kernel == "gaussian":
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth!r}")
        s = -0.5 / bandwidth**2
        return lambda x, y: np.exp(s * cdist(x, y, "sqeuclidean"))
    raise ValueError(f"kernel must be 'energy' or 'gaussian', got {kernel!r}")


def _pair_sum(k, x, a, y, b, block: int) -> float:
    total = 0.0
    for s in range(0, len(x), block):
        total += float(a[s:s + block] @ (k(x[s:s + block], y) @ b))
    return total


def mmd_measures(x, a, y, b, kernel: str = "energy", bandwidth: float = 0.25, block: int | None = None) -> float:
    """``sqrt(aKa - 2 aKb + bKb)`` between discrete measures, summed in row blocks."""
    k = _kernel(kernel, bandwidth)
    a = a / a.sum()
    b = b / b.sum()
    block = block or max(1, (1 << 18) // max(1, len(x), len(y)))
    val = _pair_sum(k, x, a, x, a, block) - 2.0 * _pair_sum(k, x, a, y, b, block) + _pair_sum(k, y, b, y, b, block)
    return math.sqrt(max(val, 0.0))


def mmd(mesh, masses, particles, weights=None, *, kernel: str = "energy", bandwidth: float = 0.25,
        quadrature_degree=None, block: int | None = None) -> float:
    """MMD between the PDE state (atoms at the cell centres) and the particles.

    ``kernel="energy"``: ``k(x, y) = -|x - y|`` (chordal), so that ``mmd^2`` is the energy
    distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``; ``"gaussian"``:
    ``exp(-|x - y|^2 / (2 bandwidth^2))``. Computed in blocks of rows: O(block (N + n)) memory.
    """
    m, x, w = _inputs(mesh, masses, particles, weights)
    y, b = _pde_atoms(mesh, m, quadrature_degree)
    return mmd_measures(y, b, x, w, kernel, bandwidth, block)


# ---------------------------------------------------------------------------------------
# total variation of histograms
# ---------------------------------------------------------------------------------------
def bin_particles(mesh, points, weights=None) -> np.ndarray:
    """Particle weights summed per cell, ``(N,)``.

    Circle: cell ``floor(theta / h)``; zonal bands: ``floor(phi / h)``, ``phi`` the polar angle
    about e_1. Spherical triangles: the triangle containing the
    point (``x . (a x b) >= 0`` for its three edges), searched among the cells of the
    nearest centres; a point on an edge goes to the first such cell. Other meshes: the
    cell of the nearest centre.
    """
    x = np.asarray(points, dtype=float)
    w = _probability(weights, x.shape[0], "weights") if weights is not None else np.full(x.shape[0], 1.0 / x.shape[0])
    n = mesh.n_cells
    if getattr(mesh, "manifold", "") == "zonal":  # bands of the polar angle about e_1
        phi = np.arccos(np.clip(x[:, 0] / np.linalg.norm(x, axis=1), -1.0, 1.0))
        cell = np.minimum((phi / (math.pi / n)).astype(np.intp), n - 1)
        return np.bincount(cell, w, minlength=n)
    if _is_circle(mesh):
        theta = np.mod(np.arctan2(x[:, 1], x[:, 0]), _TWO_PI)
        cell = np.minimum((theta / (_TWO_PI / n)).astype(np.intp), n - 1)
        return np.bincount(cell, w, minlength=n)
    from scipy.spatial import cKDTree

    tree = cKDTree(mesh.centers)
    if not hasattr(mesh, "triangles"):
        return np.bincount(tree.query(x)[1], w, minlength=n)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    tri = mesh.triangles
    v = mesh.vertices
    cell = np.full(x.shape[0], -1, dtype=np.intp)
    todo = np.arange(x.shape[0])
    for k in (8, 32, 128):
        k = min(k, n)
        _, cand = tree.query(x[todo], k=k)
        cand = cand.reshape(len(todo), k)
        found = np.full(len(todo), -1, dtype=np.intp)
        for j in range(k - 1, -1, -1):  # the nearest candidate last, so it wins
            c = cand[:, j]
            a, b, cc = v[tri[c, 0]], v[tri[c, 1]], v[tri[c, 2]]
            p = x[todo]
            inside = ((np.einsum("ij,ij->i", p, np.cross(a, b)) >= 0)
                      & (np.einsum("ij,ij->i", p, np.cross(b, cc)) >= 0)
                      & (np.einsum("ij,ij->i", p, np.cross(cc, a)) >= 0))
            found[inside] = c[inside]
        cell[todo] = found
        todo = todo[found < 0]
        if todo.size == 0 or k == n:
            break
    if todo.size:  # numerically on no triangle (round-off at a vertex): nearest centre
        cell[todo] = tree.query(x[todo])[1]
    return np.bincount(cell, w, minlength=n)


def tv(mesh, masses, particles, weights=None) -> float:
    """Total variation ``1/2 sum_i |m_i - h_i|`` between the cell masses and the histogram of
    the particles binned into the cells (:func:`bin_particles`)."""
    m, x, w = _inputs(mesh, masses, particles, weights)
    return 0.5 * math.fsum(np.abs(m - bin_particles(mesh, x, w)))


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------
METRICS = {"w1": w1, "w2": w2, "sinkhorn": sinkhorn, "sliced": sliced, "mmd": mmd, "tv": tv}


def distance(metric: str, mesh, masses, particles, weights=None, **opts) -> float:
    """The distance ``metric`` (a key of :data:`METRICS`) between the PDE state (cell
    ``masses`` on ``mesh``) and the particles ``(points (n, d), weights (n,))``; ``opts``
    go to the metric's function."""
    try:
        fn = METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}") from None
    return fn(mesh, masses, particles, weights, **opts)

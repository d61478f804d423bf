"""Diagnostics of a density on a mesh: mass, extremes, energy, order parameter, clusters.

Clusters (``n_clusters``) are defined as follows. Let ``rho_u = 1/|S|`` be the uniform
density. A *cluster* is a connected set of cells (through the mesh's neighbour relation)
on which ``rho > contrast * rho_u`` (``diagnostics.cluster_contrast``, default 2), whose
mass is at least ``diagnostics.cluster_mass`` (default 0.01). A small perturbation of the
uniform density therefore has no cluster; a density concentrated near k well separated
points has k. The centre of a cluster is its normalized mass-weighted mean position.

Particle clusters (:func:`find_particle_clusters`) are counted from the tokens themselves,
not from a histogram: the tokens are split into groups of angular diameter at most
``delta = diagnostics.cluster_distance`` (default ``arccos(0.999)``, the threshold of the
authors' count ``rank(<x_i, x_j> >= 0.999)``) by a greedy complete-linkage cover
(:func:`particle_groups`), and a group of mass at least ``diagnostics.cluster_mass`` is a
cluster. See docs/particles.md ("Particle clusters") for why this linkage and not single
linkage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .fields.attention import AttentionModel
from .dynamics.model import as_velocity_model
from .fields.energy import energy

__all__ = ["ClusterCriterion", "find_clusters", "find_particle_clusters", "particle_groups", "compute"]

COLUMNS = (
    "t",
    "mass",
    "min_density",
    "max_density",
    "energy",
    "order_parameter",
    "n_clusters",
    "max_speed",
    "steps",
)


#: Default ``diagnostics.cluster_distance`` (radians): arccos(0.999) = 0.0447, the angle of
#: the threshold <x_i, x_j> >= 0.999 of the authors' cluster count.
CLUSTER_DISTANCE = math.acos(0.999)


@dataclass(frozen=True)
class ClusterCriterion:
    """``contrast`` and ``mass``: clusters of a density (:func:`find_clusters`); ``distance``
    (an angle) and ``mass``: clusters of particles (:func:`find_particle_clusters`)."""

    contrast: float = 2.0
    mass: float = 0.01
    distance: float = CLUSTER_DISTANCE


def find_clusters(mesh, rho: np.ndarray, criterion: ClusterCriterion = ClusterCriterion()):
    """Clusters of a cell density: ``(masses (k,), centers (k, d))``, heaviest first."""
    level = criterion.contrast / mesh.total_measure
    above = rho > level
    idx = np.flatnonzero(above)
    if idx.size == 0:
        return np.zeros(0), np.zeros((0, mesh.d))
    local = -np.ones(mesh.n_cells, dtype=np.intp)
    local[idx] = np.arange(idx.size)
    nb = mesh.neighbors[idx]
    rows = np.repeat(np.arange(idx.size), nb.shape[1])
    cols = local[nb.ravel()]
    keep = cols >= 0
    graph = coo_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(idx.size, idx.size))
    n, labels = connected_components(graph, directed=False)
    m = rho[idx] * mesh.areas[idx]
    masses = np.bincount(labels, m, minlength=n)
    centers = np.stack([np.bincount(labels, m * mesh.centers[idx, j], minlength=n) for j in range(mesh.d)], axis=1)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    order = np.argsort(-masses)
    order = order[masses[order] >= criterion.mass]
    return masses[order], centers[order]


def particle_groups(x: np.ndarray, distance: float) -> np.ndarray:
    """Group labels ``(n,)`` (0, 1, ...) of the unit vectors ``x (n, d)``: every group has
    angular diameter at most ``distance`` (all pairs ``<x_i, x_j> >= cos(distance)``).

    Greedy complete-linkage cover: visit the tokens in their order; an unassigned token
    ``a`` opens a group, which takes the unassigned tokens within ``distance`` of ``a`` in
    order of closeness to ``a``, each only if it is within ``distance`` of every token
    taken so far. Where the relation "within ``distance``" is an equivalence (groups of
    diameter <= ``distance`` that are farther than ``distance`` apart) the groups are its
    classes, so their number is the rank of the thresholded Gram matrix
    ``[<x_i, x_j> >= cos(distance)]``; elsewhere (tokens spread over more than
    ``distance``) it tracks complete linkage cut at ``distance`` and never chains.

    Scales to n ~ 1e5 (no n x n matrix): tokens closer than ``distance / 32`` (one cell of
    a grid of that size) are first merged into atoms, which a k-d tree finds; the
    diameter bound holds between atoms, so between tokens to within ``distance / 16``.
    """
    x = np.asarray(x, dtype=float)
    n, d = x.shape
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    if distance >= math.pi:
        return np.zeros(n, dtype=np.intp)
    cos_d, cos_half = math.cos(distance), math.cos(distance / 2)
    chord = 2 * math.sin(distance / 2)
    # atoms: tokens in one grid cell of side chord / (32 sqrt d), numbered by first token
    h = max(chord / (32 * math.sqrt(d)), 1e-12)
    _, first, atom_of = np.unique(np.floor(x / h).astype(np.int64), axis=0, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.intp)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    atom_of = rank[np.ravel(atom_of)]
    m = first.size
    pos = np.stack([np.bincount(atom_of, x[:, j], minlength=m) for j in range(d)], axis=1)
    pos /= np.linalg.norm(pos, axis=1, keepdims=True)
    tree = cKDTree(pos)
    group = np.full(m, -1, dtype=np.intp)
    k = 0
    for a in range(m):
        if group[a] >= 0:
            continue
        cand = np.asarray(tree.query_ball_point(pos[a], chord * (1 + 1e-9) + 1e-12), dtype=np.intp)
        cand = cand[group[cand] < 0]
        s = pos[cand] @ pos[a]
        keep = s >= cos_d
        cand, s = cand[keep], s[keep]
        order = np.argsort(-s, kind="stable")
        cand, s = cand[order], s[order]
        # within distance / 2 of a: pairwise within distance (triangle inequality), all taken
        n_in = int(np.searchsorted(-s, -cos_half, side="right"))
        n_in = max(n_in, 1)  # a itself (s = 1)
        taken = list(cand[:n_in])
        outer = cand[n_in:]
        if outer.size:
            p_out = pos[outer]
            ok = np.ones(outer.size, dtype=bool)
            inner = pos[cand[:n_in]]
            for i0 in range(0, outer.size, 4096):
                for j0 in range(0, n_in, 1024):
                    blk = p_out[i0:i0 + 4096] @ inner[j0:j0 + 1024].T
                    ok[i0:i0 + 4096] &= (blk >= cos_d).all(axis=1)
            j = int(ok.argmax())  # the next admissible candidate, in order of closeness to a
            while ok[j]:
                taken.append(outer[j])
                ok[j] = False
                ok[j + 1:] &= p_out[j + 1:] @ p_out[j] >= cos_d
                j = int(ok.argmax())
        group[np.asarray(taken, dtype=np.intp)] = k
        k += 1
    return group[atom_of]


def find_particle_clusters(x: np.ndarray, weights: np.ndarray, criterion: ClusterCriterion = ClusterCriterion()):
    """Clusters of the tokens ``x (n, d)`` with ``weights (n,)``: ``(masses (k,), centers (k, d))``,
    heaviest first (ties in the order of :func:`particle_groups`).

    The groups of :func:`particle_groups` at ``criterion.distance`` whose mass (sum of
    weights) is at least ``criterion.mass`` and holds more tokens than a uniform sample
    would put into a ball of that diameter, by the contrast and beyond chance: ``N >=
    contrast * lam + CHANCE_SIGMAS * sqrt(lam)`` with ``lam`` the expected count
    (:func:`uniform_ball_mass` times n; n = 1 / sum w^2 for unequal weights) -- the particle
    form of the density criterion, so that a uniform sample has no cluster whatever n (on
    the circle at the default distance a ball holds 0.7% of the mass: groups of 2000
    uniform tokens, 14 expected, reach ``criterion.mass`` = 20 tokens by chance). With ``criterion.mass = 0`` every group counts (the authors' convention). A
    centre is the group's weighted mean position normalized onto the sphere (the
    plain mean for a group of zero weight).
    """
    x = np.asarray(x, dtype=float)
    w = np.asarray(weights, dtype=float)
    labels = particle_groups(x, criterion.distance)
    k = int(labels.max()) + 1 if labels.size else 0
    masses = np.bincount(labels, w, minlength=k)
    centers = np.stack([np.bincount(labels, w * x[:, j], minlength=k) for j in range(x.shape[1])], axis=1)
    plain = np.stack([np.bincount(labels, x[:, j], minlength=k) for j in range(x.shape[1])], axis=1)
    bad = ~(np.linalg.norm(centers, axis=1) > 0)
    centers[bad] = plain[bad]
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    order = np.argsort(-masses, kind="stable")
    least = 0.0  # cluster_mass = 0: every group counts (the authors' Gram-rank convention)
    if criterion.mass > 0 and w.size:
        total = float(w.sum())
        n_eff = total**2 / float(w @ w) if total > 0 else 0.0  # n for equal weights
        lam = uniform_ball_mass(criterion.distance, x.shape[1]) * n_eff  # tokens a uniform sample puts in a ball
        chance = (criterion.contrast * lam + CHANCE_SIGMAS * math.sqrt(lam)) / max(n_eff, 1e-300) * total
        least = max(criterion.mass, min(chance, total))  # (all the mass in one group is a cluster)
    order = order[masses[order] >= least]
    return masses[order], centers[order]


#: Poisson standard deviations a group must exceed the uniform count by (particle clusters).
CHANCE_SIGMAS = 4.0


def uniform_ball_mass(diameter: float, d: int) -> float:
    """Fraction of the uniform measure on S^{d-1} in a geodesic ball of the given
    ``diameter`` (radius r = diameter / 2): ``I_{sin^2 r}((d-1)/2, 1/2) / 2`` for r <= pi/2
    (circle: r / pi; sphere: (1 - cos r) / 2)."""
    from scipy.special import betainc

    r = min(0.5 * float(diameter), math.pi)
    if r <= 0.5 * math.pi:
        return 0.5 * float(betainc(0.5 * (d - 1), 0.5, math.sin(r) ** 2))
    return 1.0 - 0.5 * float(betainc(0.5 * (d - 1), 0.5, math.sin(r) ** 2))


def max_speed(velocity: np.ndarray) -> float:
    """``max_i |v_i|`` without overflow in the squares (USA speeds reach 1e155 and more)."""
    v = np.asarray(velocity, dtype=float)
    if v.size == 0:
        return 0.0
    scale = float(np.abs(v).max())
    if not (scale > 0 and np.isfinite(scale)):
        return scale
    u = v / scale
    return scale * float(np.sqrt(np.max(np.einsum("ij,ij->i", u, u))))


def run_energy(model, points, weights, t: float = 0.0) -> float | None:
    """The ``energy`` column at time ``t``.

    One head of weight 1 (an :class:`AttentionModel`, or a velocity model that is just that):
    :func:`~meanfield.fields.energy.energy`, shifted (``exp(-beta c) E``) when ``model.shift``
    is set -- for USA the functional it ascends, for SA (whose dynamics the shift does not
    change) the way to keep the column finite at large beta, where ``E`` exceeds double
    precision. Composite terms (:class:`~meanfield.dynamics.model.Terms`): the functional
    they ascend where they are a gradient flow (:meth:`Terms.gradient_weights`: USA heads
    with ``Q^T K`` symmetric and ``V = s Q^T K``, a perceptron ``W = U^T diag(w)``),
    ``sum_h s_h w_h E_h + int Phi dmu``; ``None`` (an empty column: undefined, not a
    number) otherwise, and for every causal model. An overflow gives ``inf``, which the
    run-health check reports."""
    if not isinstance(model, AttentionModel) and as_velocity_model(model).causal:
        return None  # a masked field is no gradient: the tokens ascend no functional of the measure
    single = model if isinstance(model, AttentionModel) else as_velocity_model(model).single_head
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            if single is not None:
                return energy(single, points, weights, shifted=True if single.shift else None)
            terms = as_velocity_model(model).terms_at(t)
            form = terms.gradient_weights()
            if form is None:
                return None
            scales, _ = form
            total = math.fsum(_head_energy(h.attention, s, points, weights) for h, s in zip(terms.heads, scales) if s)
            if terms.perceptron is not None:
                total += terms.perceptron.energy(points, weights)
            return float(total)
        except (OverflowError, FloatingPointError):
            return float("inf")


def _head_energy(head: AttentionModel, scale: float, points, weights) -> float:
    """``scale E_h``: the head's energy (``beta = 0``: ``<m, V m> / 2``, ``m = sum_i w_i x_i``,
    whose gradient is the field ``P_x V m``)."""
    if head.beta == 0.0:
        m = np.asarray(weights, dtype=float) @ np.asarray(points, dtype=float)
        return 0.5 * scale * float(m @ head.V @ m)
    return scale * energy(head, points, weights)


def compute(mesh, model, rho: np.ndarray, velocity: np.ndarray, t: float, steps: int,
            criterion: ClusterCriterion = ClusterCriterion(), clusters=None) -> dict:
    """One row of ``diagnostics.csv`` for the state ``rho`` at time ``t`` (``clusters``: the
    result of :func:`find_clusters` if already computed)."""
    m = rho * mesh.areas
    masses, _ = clusters if clusters is not None else find_clusters(mesh, rho, criterion)
    zonal = getattr(mesh, "manifold", "") == "zonal"  # cells are rings about e_1, not points
    return {
        "t": float(t),
        "mass": float(m.sum()),
        "min_density": float(rho.min()),
        "max_density": float(rho.max()),
        "energy": None if zonal else run_energy(model, mesh.centers, m, t),
        "order_parameter": float(np.linalg.norm(mesh.mean(m) if zonal else m @ mesh.centers)),
        "n_clusters": int(masses.size),
        "max_speed": max_speed(velocity),
        "steps": int(steps),
    }


@dataclass(frozen=True)
class Target:
    """A target measure ``sum_j w_j delta_{y_j}`` (``diagnostics.target_points``,
    ``target_weights``): the ``w1_target`` column is the exact W1 distance to it."""

    points: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_case(cls, diagnostics: dict) -> "Target | None":
        pts = diagnostics.get("target_points") or []
        if not pts:
            return None
        y = np.asarray(pts, dtype=float)
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        w = np.asarray(diagnostics.get("target_weights") or [1.0] * len(y), dtype=float)
        return cls(y, w / w.sum())

    def distance_to_cells(self, mesh, masses: np.ndarray) -> float:
        """W1 from a cell density (circle: the piecewise-constant density; sphere: masses at
        the cell centres) to the target."""
        from .particles.distances import w1

        return float(w1(mesh, masses, self.points, self.weights))

    def distance_to_points(self, x: np.ndarray, w: np.ndarray) -> float:
        """W1 from the particles ``(x, w)`` to the target."""
        from .particles.distances import circle_wasserstein, emd

        keep = w > 0
        x, w = x[keep], w[keep]
        if x.shape[1] == 2:
            return float(circle_wasserstein(np.arctan2(x[:, 1], x[:, 0]), w,
                                            np.arctan2(self.points[:, 1], self.points[:, 0]), self.weights))
        return float(emd(x, w, self.points, self.weights))

"""Diagnostics of a density on a mesh: mass, extremes, energy, order parameter, clusters.

Clusters (``n_clusters``) are defined as follows. Let ``rho_u = 1/|S|`` be the uniform
density. A *cluster* is a connected set of cells (through the mesh's neighbour relation)
on which ``rho > contrast * rho_u`` (``diagnostics.cluster_contrast``, default 2), whose
mass is at least ``diagnostics.cluster_mass`` (default 0.01). A small perturbation of the
uniform density therefore has no cluster; a density concentrated near k well separated
points has k. The centre of a cluster is its normalized mass-weighted mean position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .attention import AttentionModel, energy

__all__ = ["ClusterCriterion", "find_clusters", "compute"]

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


@dataclass(frozen=True)
class ClusterCriterion:
    contrast: float = 2.0
    mass: float = 0.01


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


def compute(mesh, model: AttentionModel, rho: np.ndarray, velocity: np.ndarray, t: float, steps: int,
            criterion: ClusterCriterion = ClusterCriterion(), clusters=None) -> dict:
    """One row of ``diagnostics.csv`` for the state ``rho`` at time ``t`` (``clusters``: the
    result of :func:`find_clusters` if already computed)."""
    m = rho * mesh.areas
    masses, _ = clusters if clusters is not None else find_clusters(mesh, rho, criterion)
    return {
        "t": float(t),
        "mass": float(m.sum()),
        "min_density": float(rho.min()),
        "max_density": float(rho.max()),
        "energy": energy(model, mesh.centers, m),
        "order_parameter": float(np.linalg.norm(m @ mesh.centers)),
        "n_clusters": int(masses.size),
        "max_speed": float(np.sqrt(np.max(np.sum(velocity**2, axis=1)))),
        "steps": int(steps),
    }

"""Finite-volume meshes of the unit sphere S^{d-1}: the geometry the solver needs.

A :class:`Mesh` is data: cells with centres and exact measures, edges with quadrature
points, weights and unit normals in the tangent plane, and cell neighbours. The
finite-volume scheme (:mod:`meanfield.pde.finite_volume`) only talks to this interface, so
the circle (:class:`CircleMesh`) and triangulated spheres share one solver.

Conventions
-----------
* ``edge_cells[e] = (left, right)``; the normals of edge ``e`` point from ``left`` into
  ``right``, so a positive normal velocity moves mass from ``left`` to ``right``.
* ``edge_weights[e, q]`` is the quadrature weight times the edge measure (on S^1 an
  edge is a point and its weight is 1).
* Densities are with respect to the surface measure; ``masses = density * areas``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Mesh", "CircleMesh", "log_map", "morton_order"]


def log_map(base: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Riemannian logarithm on the unit sphere: tangent vectors at ``base`` pointing to
    ``points`` with length the geodesic distance. Broadcasts over leading axes."""
    cos = np.clip(np.sum(base * points, axis=-1, keepdims=True), -1.0, 1.0)
    tang = points - cos * base
    sin = np.linalg.norm(tang, axis=-1, keepdims=True)
    angle = np.arctan2(sin, cos)
    scale = np.divide(angle, sin, out=np.ones_like(sin), where=sin > 1e-300)
    return tang * scale


class Mesh:
    """Base class of finite-volume meshes on the sphere S^{d-1}.

    Subclasses set, in ``__init__``, the arrays

    ``centers (N, d)``, ``areas (N,)``, ``edge_cells (E, 2)``, ``edge_points (E, q, d)``,
    ``edge_weights (E, q)``, ``edge_normals (E, q, d)``, ``neighbors (N, k)``,
    ``cell_edges (N, f)`` and ``cell_edge_sign (N, f)`` (+1 where the cell is the edge's
    left cell, -1 where it is the right cell),

    and implement :meth:`cell_quadrature`. Everything derived (reconstruction operators,
    CFL geometry) is computed here once.
    """

    manifold: str
    d: int
    total_measure: float

    centers: np.ndarray
    areas: np.ndarray
    edge_cells: np.ndarray
    edge_points: np.ndarray
    edge_weights: np.ndarray
    edge_normals: np.ndarray
    neighbors: np.ndarray
    cell_edges: np.ndarray
    cell_edge_sign: np.ndarray

    @property
    def n_cells(self) -> int:
        return self.centers.shape[0]

    @property
    def n_edges(self) -> int:
        return self.edge_cells.shape[0]

    @property
    def max_degree(self) -> int:
        """Highest harmonic degree the mesh resolves (about two cells per wavelength)."""
        raise NotImplementedError

    def cell_quadrature(self, degree: int) -> tuple[np.ndarray, np.ndarray]:
        """Points ``(N, n, d)`` on the sphere and weights ``(N, n)`` integrating exactly
        enough over each cell; the weights of a cell sum to its area."""
        raise NotImplementedError

    def cell_averages(self, density, degree: int = 8) -> np.ndarray:
        """Cell averages of ``density(points (n, d)) -> (n,)`` by quadrature."""
        pts, wts = self.cell_quadrature(degree)
        values = np.asarray(density(pts.reshape(-1, self.d)), dtype=float).reshape(wts.shape)
        return np.sum(values * wts, axis=1) / self.areas

    # -- derived geometry, computed once -------------------------------------------------
    def _finalize(self) -> None:
        """Precompute reconstruction and CFL geometry from the primitive arrays."""
        c = self.centers
        # Least-squares gradient operator in the tangent plane: g_i = G_i @ (rho_nb - rho_i).
        disp = log_map(c[:, None, :], c[self.neighbors])  # (N, k, d)
        gram = np.einsum("nkd,nke->nde", disp, disp)
        # Regularize the normal direction (zero rows of disp) so the system is invertible;
        # the resulting gradient has no normal component.
        gram += np.einsum("nd,ne->nde", c, c)
        self.grad_operator = np.einsum("nde,nke->ndk", np.linalg.inv(gram), disp)
        # Displacement from each cell centre to the quadrature points of its edges.
        pts = self.edge_points[self.cell_edges]  # (N, f, q, d)
        self.face_displacement = log_map(c[:, None, None, :], pts)
        # CFL geometry: boundary measure of each cell.
        self.perimeter = np.sum(self.edge_weights[self.cell_edges], axis=(1, 2))

    def neighborhood_extrema(self, rho: np.ndarray, cells=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Smallest and largest average over each cell of ``cells`` (an index array or a
        slice; default all) and the cells around it: the bounds of the slope limiter.
        Default: the cells across the edges."""
        nb = rho[self.neighbors[cells]]
        own = rho[cells]
        return np.minimum(own, nb.min(axis=1)), np.maximum(own, nb.max(axis=1))

    def sfc_order(self) -> np.ndarray | None:
        """Cells in the order of a space-filling curve (for the MPI split: a contiguous run
        of this order is a compact patch), or ``None`` when the cells are numbered that way
        already. Default: the Morton (Z-order) curve of the cell centres, 21 bits per axis."""
        return morton_order(self.centers)

    def validate(self) -> None:
        """Consistency checks every mesh must pass (used by tests and loaders)."""
        if not np.isclose(self.areas.sum(), self.total_measure, rtol=1e-12, atol=0):
            raise ValueError(f"cell measures sum to {self.areas.sum()!r}, expected {self.total_measure!r}")
        if np.any(self.areas <= 0):
            raise ValueError(f"{int(np.sum(self.areas <= 0))} cells have nonpositive measure")


class CircleMesh(Mesh):
    """The circle S^1 in R^2 cut into ``cells`` uniform arcs.

    Cell ``i`` is the arc ``[i h, (i+1) h]`` of angles, ``h = 2 pi / cells``; its centre is
    at angle ``(i + 1/2) h``. Edge ``e`` is the point at angle ``e h`` between cells
    ``e - 1`` (left) and ``e`` (right); its normal is the unit tangent
    ``(-sin, cos)`` (direction of increasing angle).
    """

    manifold = "circle"
    d = 2
    total_measure = 2.0 * math.pi

    def __init__(self, cells: int):
        if int(cells) != cells or cells < 3:
            raise ValueError(f"the circle needs an integer number of cells >= 3, got {cells}")
        m = int(cells)
        self.h = 2.0 * math.pi / m
        self.angles = (np.arange(m) + 0.5) * self.h
        self.centers = _unit(self.angles)
        self.areas = np.full(m, self.h)
        idx = np.arange(m)
        self.edge_angles = idx * self.h
        self.edge_cells = np.stack([(idx - 1) % m, idx], axis=1)
        self.edge_points = _unit(self.edge_angles)[:, None, :]
        self.edge_weights = np.ones((m, 1))
        self.edge_normals = _tangent(self.edge_angles)[:, None, :]
        self.neighbors = np.stack([(idx - 1) % m, (idx + 1) % m], axis=1)
        self.cell_edges = np.stack([idx, (idx + 1) % m], axis=1)
        self.cell_edge_sign = np.stack([-np.ones(m), np.ones(m)], axis=1)
        self._finalize()

    def cell_quadrature(self, degree: int) -> tuple[np.ndarray, np.ndarray]:
        import basix

        ref_pts, ref_wts = basix.make_quadrature(
            basix.CellType.interval, int(degree), rule=basix.QuadratureType.gauss_jacobi
        )
        theta = (np.arange(self.n_cells)[:, None] + ref_pts[None, :, 0]) * self.h
        return _unit(theta), np.broadcast_to(ref_wts * self.h, theta.shape).copy()

    @property
    def max_degree(self) -> int:
        return self.n_cells // 2

    def sfc_order(self) -> None:
        """Cells are numbered along the circle already."""
        return None

    def tangent(self, points: np.ndarray) -> np.ndarray:
        """Unit tangent (direction of increasing angle) at points of the circle."""
        return np.stack([-points[..., 1], points[..., 0]], axis=-1)


def morton_order(points: np.ndarray) -> np.ndarray:
    """The permutation sorting ``points`` (in [-1, 1]^d, d <= 3) along the Morton
    (Z-order) curve: coordinates quantized to 21 bits and their bits interleaved."""
    pts = np.asarray(points, dtype=float)
    q = np.clip(((pts + 1.0) * 0.5 * (1 << 21)).astype(np.int64), 0, (1 << 21) - 1).astype(np.uint64)
    d = pts.shape[1]
    key = np.zeros(pts.shape[0], dtype=np.uint64)
    for bit in range(21):
        for axis in range(d):
            key |= ((q[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(bit * d + axis)
    return np.argsort(key, kind="stable")


def _unit(theta: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(theta), np.sin(theta)], axis=-1)


def _tangent(theta: np.ndarray) -> np.ndarray:
    return np.stack([-np.sin(theta), np.cos(theta)], axis=-1)

"""Triangulated meshes of the unit sphere S^2 for the finite-volume solver.

Cells are *spherical* triangles: the vertices lie on the unit sphere and the edges are
great-circle arcs, so the cells tile the sphere exactly and their areas (spherical
excess) sum to 4 pi.

:class:`SphereMesh`
    any closed, consistently oriented triangulation (vertices are projected onto the
    sphere; triangles counter-clockwise seen from outside).
:func:`icosahedral`, :func:`load_icosahedral`
    the icosahedral geodesic meshes. Level 0 is the icosahedron (20 triangles); level
    ``L + 1`` splits every triangle of level ``L`` into 4 at the edge midpoints projected
    onto the sphere, so level ``L`` has ``20 * 4**L`` triangles and ``10 * 4**L + 2``
    vertices (level 6: 81,920 triangles).

    **Ordering.** The children of triangle ``i`` of level ``L`` are triangles
    ``4i, 4i+1, 4i+2, 4i+3`` of level ``L + 1`` (corner at the parent's first, second,
    third vertex, then the middle triangle), and they tile the parent exactly (the
    projected midpoints lie on the parent's great-circle edges). Restriction of cell
    masses from level ``L + 1`` to level ``L`` is therefore
    ``masses.reshape(-1, 4).sum(axis=1)``, and the mesh of level ``L`` is ordered along
    a quadtree (the descendants of every coarser cell are contiguous); the 20 base
    triangles follow a Hamiltonian path of the icosahedron's face graph (consecutive base
    triangles share an edge). Contiguous blocks of cells (e.g. one MPI rank's share) are
    therefore compact, although this is not a continuous space-filling curve. The
    vertices of level ``L`` are the first vertices of level ``L + 1``.

    Levels 0..6 are shipped in ``meshes/icosahedral_L.npz`` (written by
    ``meshes/make_icosahedral.py``); higher levels are generated on demand and cached in
    ``$MEANFIELD_CACHE`` (default ``~/.cache/meanfield``).
:func:`load_mesh`
    a user's surface mesh from a file read by pyvista.
:func:`parse_mesh_spec`
    the case-file value ``domain.mesh``: ``"icosahedral:LEVEL"`` or a file path.

Every problem with a mesh raises :class:`MeshError` (a ``ValueError``) saying what is
wrong and where (triangle, edge and vertex indices).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path

import numpy as np

from .mesh import Mesh

__all__ = [
    "MAX_ICOSAHEDRAL_LEVEL",
    "MeshError",
    "SphereMesh",
    "icosahedral",
    "icosahedral_arrays",
    "icosahedral_counts",
    "load_icosahedral",
    "load_icosahedral_arrays",
    "load_mesh",
    "latitude_longitude",
    "parse_mesh_spec",
    "perturbed_icosahedral",
    "read_surface",
    "refine",
]

#: Highest level accepted by ``"icosahedral:LEVEL"`` (level 10: 20,971,520 triangles).
MAX_ICOSAHEDRAL_LEVEL = 10
#: Generating a level from this one on is logged (level 7: 327,680 triangles, ~0.3 s), and
#: building the geometry of one from the next (level 8: 1,310,720 triangles, ~10 s, ~3 GB).
LOG_LEVEL_FROM = 7
#: Levels shipped in ``meshes/``.
SHIPPED_LEVELS = range(0, 7)
#: The shipped mesh files (next to the package in a source checkout).
MESH_DIR = Path(__file__).resolve().parents[2] / "meshes"

_LIST = 5  # offenders listed in an error message

log = logging.getLogger("meanfield")


class MeshError(ValueError):
    """A mesh (file) is unusable; the message says what is wrong and where."""


# ---------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------
def _triple(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``det[a, b, c]`` computed as ``a . ((b - a) x (c - a))``: accurate for small
    triangles (the differences of nearby unit vectors are exact, no cancellation)."""
    return np.einsum("...d,...d->...", a, np.cross(b - a, c - a))


def spherical_areas(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Signed areas of the spherical triangles ``(a, b, c)`` of unit vectors (positive
    when counter-clockwise seen from outside): the Van Oosterom--Strackee formula
    ``tan(E / 2) = det[a, b, c] / (1 + a.b + b.c + c.a)``."""
    det = _triple(a, b, c)
    den = 1.0 + np.einsum("...d,...d->...", a, b) + np.einsum("...d,...d->...", b, c) + np.einsum("...d,...d->...", c, a)
    return 2.0 * np.arctan2(det, den)


def _arc(a: np.ndarray, b: np.ndarray):
    """Arc lengths ``theta`` and unit normals ``a x b / |a x b|`` of the great-circle
    arcs from ``a`` to ``b``."""
    cross = np.cross(a, b - a)  # = a x b, accurate for nearby points
    s = np.linalg.norm(cross, axis=-1)
    theta = np.arctan2(s, np.einsum("...d,...d->...", a, b))
    return theta, cross / s[..., None]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _fmt_pt(p) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in p) + ")"


def _more(count: int, what: str, idx=None, where: str = "") -> str:
    """``"; 7 such edges in triangles 1, 2, ..."`` when there is more than one offender."""
    if count <= 1:
        return ""
    s = f"; {count} {what} in all"
    if idx is not None:
        s += f" ({where + ' ' if where else ''}{_list(idx, brief=True)})"
    return s


def _list(idx, brief: bool = False) -> str:
    idx = [int(i) for i in idx]
    s = ", ".join(map(str, idx[:_LIST]))
    if len(idx) > _LIST:
        s += ", ..." if brief else f", ... ({len(idx)} in all)"
    return s


# ---------------------------------------------------------------------------------------
# topology
# ---------------------------------------------------------------------------------------
def _check_duplicate_triangles(tri: np.ndarray) -> None:
    """Two triangles with the same three vertices (run when an edge is over-used)."""
    srt = np.sort(tri, axis=1)
    _, inv, cnt = np.unique(srt, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    if np.any(cnt > 1):
        dup = np.flatnonzero(cnt[inv] > 1)
        i, j = (int(k) for k in np.flatnonzero(inv == inv[dup[0]])[:2])
        raise MeshError(
            f"the surface is not a manifold: triangles {i} and {j} are duplicates "
            f"(both use vertices {sorted(tri[i].tolist())})" + _more(dup.size, "duplicated triangles", dup)
        )


def _edge_structure(tri: np.ndarray, n_vertices: int, vertices: np.ndarray | None = None) -> dict:
    """Unique edges of a closed, consistently oriented triangulation.

    Local edge ``k`` of triangle ``t`` is ``(tri[t, k], tri[t, (k + 1) % 3])``. An edge is
    stored as ``(lo, hi)`` with ``lo < hi``; its *left* cell is the triangle that
    traverses it from ``lo`` to ``hi``. Edges are numbered in order of first appearance
    (triangle by triangle). Raises :class:`MeshError` for open, non-manifold or
    inconsistently oriented triangulations.
    """
    t = tri.shape[0]
    src = tri.reshape(-1)
    dst = tri[:, [1, 2, 0]].reshape(-1)
    lo = np.minimum(src, dst).astype(np.int64)
    hi = np.maximum(src, dst).astype(np.int64)
    key = lo * np.int64(n_vertices) + hi
    order = np.argsort(key, kind="stable")
    skey = key[order]
    start = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])
    counts = np.diff(np.r_[start, skey.size])

    def where(group):
        h = order[start[group]]
        e = (int(lo[h]), int(hi[h]))
        s = f"edge ({e[0]}, {e[1]})"
        if vertices is not None:
            s += f" [{_fmt_pt(vertices[e[0]])} - {_fmt_pt(vertices[e[1]])}]"
        return s

    bad = np.flatnonzero(counts == 1)
    if bad.size:
        g = bad[0]
        raise MeshError(
            f"the surface is not closed: {where(g)} belongs to only one triangle "
            f"({int(order[start[g]] // 3)})"
            + _more(bad.size, "boundary edges", np.unique(order[start[bad]] // 3), "triangles")
        )
    bad = np.flatnonzero(counts > 2)
    if bad.size:
        _check_duplicate_triangles(tri)
        g = bad[0]
        tris = order[start[g]:start[g] + counts[g]] // 3
        raise MeshError(
            f"the surface is not a manifold: {where(g)} is shared by {counts[g]} triangles "
            f"({_list(tris)})" + _more(bad.size, "such edges")
        )
    # every edge is used exactly twice: the two half-edges must run in opposite directions
    h1 = order[start]
    h2 = order[start + 1]
    fwd = src < dst
    same = np.flatnonzero(fwd[h1] == fwd[h2])
    if same.size:
        g = same[0]
        raise MeshError(
            f"the triangles are inconsistently oriented: {where(g)} is traversed in the same "
            f"direction by triangles {int(h1[g] // 3)} and {int(h2[g] // 3)}"
            + _more(same.size, "such edges", np.unique(np.r_[h1[same], h2[same]] // 3), "triangles")
        )
    # number edges by first appearance
    first = np.minimum(h1, h2)
    perm = np.argsort(first, kind="stable")
    n_e = perm.size
    rank = np.empty(n_e, dtype=np.intp)
    rank[perm] = np.arange(n_e)
    he_edge = np.empty(3 * t, dtype=np.intp)
    he_edge[h1] = rank
    he_edge[h2] = rank
    left_he = np.where(fwd[h1], h1, h2)[perm]
    right_he = np.where(fwd[h1], h2, h1)[perm]
    edge_vertices = np.stack([lo[left_he], hi[left_he]], axis=1)
    edge_cells = np.stack([left_he // 3, right_he // 3], axis=1)
    cell_edges = he_edge.reshape(t, 3)
    sign = np.where(fwd, 1.0, -1.0).reshape(t, 3)
    neighbors = np.where(sign > 0, edge_cells[cell_edges, 1], edge_cells[cell_edges, 0])
    return {
        "edge_vertices": edge_vertices,
        "edge_cells": edge_cells,
        "cell_edges": cell_edges,
        "cell_edge_sign": sign,
        "neighbors": neighbors,
    }


def _check_indices(vertices: np.ndarray, tri: np.ndarray) -> None:
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise MeshError(f"vertices must have shape (V, 3), got {vertices.shape}")
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise MeshError(f"triangles must have shape (T, 3), got {tri.shape}")
    if tri.shape[0] < 4:
        raise MeshError(f"a closed triangulated sphere needs at least 4 triangles, got {tri.shape[0]}")
    bad = np.flatnonzero(~np.all(np.isfinite(vertices), axis=1))
    if bad.size:
        raise MeshError(f"vertices {_list(bad)} have non-finite coordinates")
    out = np.flatnonzero(np.any((tri < 0) | (tri >= vertices.shape[0]), axis=1))
    if out.size:
        raise MeshError(
            f"triangles {_list(out)} refer to vertices outside 0..{vertices.shape[0] - 1} "
            f"(triangle {int(out[0])}: {tri[out[0]].tolist()})"
        )
    rep = np.flatnonzero((tri[:, 0] == tri[:, 1]) | (tri[:, 1] == tri[:, 2]) | (tri[:, 2] == tri[:, 0]))
    if rep.size:
        raise MeshError(
            f"degenerate triangle {int(rep[0])} (vertices {tri[rep[0]].tolist()}) repeats a vertex"
            + _more(rep.size, "such triangles", rep)
        )


# ---------------------------------------------------------------------------------------
# the mesh
# ---------------------------------------------------------------------------------------
class SphereMesh(Mesh):
    """A closed triangulation of the unit sphere S^2 with great-circle edges.

    Parameters
    ----------
    vertices : (V, 3) array
        Vertex positions; projected radially onto the unit sphere.
    triangles : (T, 3) integer array
        Vertex indices, counter-clockwise seen from outside (outward normals).
    edge_points : int
        Number ``q`` of Gauss--Legendre points per edge (1: the arc midpoint).
    check : bool
        Run every check of :meth:`validate`. Without it the duplicate-vertex search
        (a k-d tree, O(V log V)) and the test that the areas sum to 4 pi are skipped; the
        checks without which the arrays make no sense (closed, manifold, consistently
        oriented, no degenerate or inverted triangles, V - E + F = 2) always run.

    Arrays (besides those of :class:`~meanfield.geometry.mesh.Mesh`): ``vertices (V, 3)``,
    ``triangles (T, 3)``, ``edge_vertices (E, 2)`` (``lo < hi``; the left cell traverses
    the edge from ``lo`` to ``hi``), ``edge_lengths (E,)`` (arc lengths).

    Local edge ``k`` of cell ``t`` joins ``triangles[t, k]`` and ``triangles[t, (k+1) % 3]``;
    ``cell_edges[t, k]`` is its edge and ``neighbors[t, k]`` the cell across it. The edge
    normal is constant along a great-circle arc: ``(hi x lo) / |hi x lo|``, the unit normal
    of the arc's plane, pointing away from the left cell's third vertex.
    ``centers`` are the spherical centroids (``∫_T x dsigma``, normalized), computed exactly
    from the edges: ``∫_T x dsigma = 1/2 sum_edges theta_e (a_e x b_e) / |a_e x b_e|``
    (Stokes, counter-clockwise edges ``a_e -> b_e`` of arc length ``theta_e``).
    """

    manifold = "sphere"
    d = 3
    total_measure = 4.0 * math.pi

    def __init__(self, vertices, triangles, edge_points: int = 1, check: bool = True):
        v = np.array(vertices, dtype=np.float64, copy=True)
        tri_in = np.asarray(triangles)
        if tri_in.size and not np.issubdtype(tri_in.dtype, np.integer):
            if not np.all(tri_in == np.round(tri_in)):
                raise MeshError("triangle vertex indices must be integers")
        tri = tri_in.astype(np.int64)
        _check_indices(v, tri)
        r = np.linalg.norm(v, axis=1)
        used = np.zeros(v.shape[0], dtype=bool)
        used[tri.reshape(-1)] = True
        zero = np.flatnonzero(used & ~(r > 1e-300))
        if zero.size:
            raise MeshError(
                f"vertices {_list(zero)} lie at the origin (the centre of the sphere) and cannot be "
                "projected onto the sphere"
            )
        r[~used & ~(r > 1e-300)] = 1.0
        self.vertices = v / r[:, None]
        self.triangles = tri
        self.n_vertices_used = int(used.sum())
        q = int(edge_points)
        if q != edge_points or q < 1:
            raise MeshError(f"edge_points must be a positive integer, got {edge_points!r}")
        self.edge_quadrature_points = q

        topo = _edge_structure(tri, v.shape[0], v)  # messages give the input coordinates
        self.edge_vertices = topo["edge_vertices"]
        self.edge_cells = topo["edge_cells"]
        self.cell_edges = topo["cell_edges"]
        self.cell_edge_sign = topo["cell_edge_sign"]
        self.neighbors = topo["neighbors"]

        a, b, c = (self.vertices[tri[:, k]] for k in range(3))
        self.areas = spherical_areas(a, b, c)
        self._check_geometry()
        if check:
            self._check_duplicate_vertices()
        self._check_euler()

        # spherical centroids, exactly: 1/2 sum over the ccw edges of theta * unit normal
        moment = np.zeros_like(a)
        for p, s in ((a, b), (b, c), (c, a)):
            theta, m = _arc(p, s)
            moment += theta[:, None] * m
        self.centers = _unit_rows(moment)

        # edge quadrature: Gauss-Legendre points mapped by arc length (slerp)
        import basix

        ref, wref = basix.make_quadrature(
            basix.CellType.interval, 2 * q - 1, rule=basix.QuadratureType.gauss_jacobi
        )
        s = ref[:, 0]
        ea = self.vertices[self.edge_vertices[:, 0]]
        eb = self.vertices[self.edge_vertices[:, 1]]
        theta, m = _arc(ea, eb)
        self.edge_lengths = theta
        st = np.sin(theta)[:, None]
        ca = np.sin((1.0 - s)[None, :] * theta[:, None]) / st
        cb = np.sin(s[None, :] * theta[:, None]) / st
        pts = _unit_rows(ca[:, :, None] * ea[:, None, :] + cb[:, :, None] * eb[:, None, :])
        self.edge_points = pts
        self.edge_weights = wref[None, :] * theta[:, None]
        # normal into the right cell: -m (m = lo x hi points to the left cell's side);
        # remove the round-off normal component at each point and renormalize
        n = np.broadcast_to(-m[:, None, :], pts.shape)
        n = n - np.einsum("eqd,eqd->eq", n, pts)[..., None] * pts
        self.edge_normals = _unit_rows(n)

        self._finalize()
        if check:
            self._check_total()

    # -- Mesh interface --------------------------------------------------------------------
    @property
    def n_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def max_degree(self) -> int:
        """``int(sqrt(T / 2))``: the spherical harmonics of degree <= L number
        ``(L + 1)**2``, about half the number ``T`` of cells, i.e. about two cells per
        harmonic degree of freedom (icosahedral level 4: 50, level 6: 202)."""
        return int(math.isqrt(self.n_cells // 2))

    def neighborhood_extrema(self, rho: np.ndarray, cells=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Extrema over every cell sharing a vertex with each cell of ``cells`` (index array
        or slice; default all): the limiter's stencil."""
        if isinstance(cells, slice) and cells == slice(None):
            around = rho[self.vertex_cells]  # (V, valence): extrema per vertex, then per cell
            vmin, vmax = _column_extrema(around)
            tri = self.triangles
            lo, hi = vmin[tri[:, 0]], vmax[tri[:, 0]]
            for k in (1, 2):
                np.minimum(lo, vmin[tri[:, k]], out=lo)
                np.maximum(hi, vmax[tri[:, k]], out=hi)
            return lo, hi
        # a part of the mesh (one MPI rank's cells): only the vertices those cells touch
        # (found once per index array; the solver passes the same one at every stage)
        cached = getattr(self, "_part_vertices", None)
        if cached is None or cached[0] is not cells:
            verts, corner = np.unique(self.triangles[cells], return_inverse=True)
            cached = (cells, self.vertex_cells[verts], corner.reshape(-1, 3))
            self._part_vertices = cached
        _, around, corner = cached
        vmin, vmax = _column_extrema(rho[around])
        lo, hi = vmin[corner[:, 0]], vmax[corner[:, 0]]
        for k in (1, 2):
            np.minimum(lo, vmin[corner[:, k]], out=lo)
            np.maximum(hi, vmax[corner[:, k]], out=hi)
        return lo, hi

    @property
    def vertex_cells(self) -> np.ndarray:
        """``(V, k)``: the cells around each vertex, padded by repeating the first one."""
        if getattr(self, "_vertex_cells", None) is None:
            flat = self.triangles.ravel()
            order = np.argsort(flat, kind="stable")
            counts = np.bincount(flat, minlength=self.n_vertices)
            k = max(int(counts.max()), 1)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rank = np.arange(flat.size) - np.repeat(starts, counts)
            table = np.empty((self.n_vertices, k), dtype=np.int64)
            cell_of = order // 3
            table[:] = np.where(counts > 0, cell_of[np.minimum(starts, flat.size - 1)], 0)[:, None]
            table[flat[order], rank] = cell_of
            self._vertex_cells = table
        return self._vertex_cells

    def sfc_order(self) -> np.ndarray | None:
        """``None`` for icosahedral meshes (their cells are numbered along the refinement
        tree: the children of cell i are 4i..4i+3, a space-filling curve); the Morton order
        of the cell centres otherwise."""
        if getattr(self, "icosahedral_level", None) is not None:
            return None
        return super().sfc_order()

    def cell_quadrature(self, degree: int, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Points ``(N, n, 3)`` and weights ``(N, n)`` of a quadrature on every cell.

        The basix triangle rule of ``degree`` (Xiao--Gimbutas) on the flat triangle
        ``p = a + s (b - a) + t (c - a)`` is mapped radially, ``x = p / |p|``; the area
        element of that map is ``det[a, b, c] / |p|^3 ds dt``. The map is smooth, so the
        rule converges quickly: at degree 8 the weight sums match the exact areas to
        2e-5 (relative) on icosahedral level 0, 5e-8 on level 1, 6e-11 on level 2, 6e-14 on
        level 3 and round-off from level 4 on. With ``normalize`` (default) the weights of each cell are
        scaled by ``area / sum(weights)`` (a relative change of that size), so constants
        are integrated exactly and :meth:`cell_averages` of a constant is that constant.
        """
        import basix

        ref, wref = basix.make_quadrature(basix.CellType.triangle, int(degree))
        tri = self.triangles
        a, b, c = (self.vertices[tri[:, k]] for k in range(3))
        det = _triple(a, b, c)
        p = (a[:, None, :] + ref[None, :, 0, None] * (b - a)[:, None, :] + ref[None, :, 1, None] * (c - a)[:, None, :])
        r = np.linalg.norm(p, axis=-1)
        w = wref[None, :] * det[:, None] / r**3
        if normalize:
            w *= (self.areas / w.sum(axis=1))[:, None]
        return p / r[..., None], w

    # -- checks ----------------------------------------------------------------------------
    def _check_geometry(self, min_shape: float = 1e-10) -> None:
        """Degenerate (zero or nearly zero area for their size) and inverted triangles."""
        tri = self.triangles
        v = self.vertices
        longest = np.zeros(tri.shape[0])
        for k in range(3):
            longest = np.maximum(longest, np.linalg.norm(v[tri[:, (k + 1) % 3]] - v[tri[:, k]], axis=1))
        tiny = np.flatnonzero(np.abs(self.areas) <= min_shape * longest**2)
        if tiny.size:
            i = int(tiny[0])
            raise MeshError(
                f"degenerate triangle {i} (vertices {tri[i].tolist()}) has area "
                f"{self.areas[i]:.3e} for a longest edge of {longest[i]:.3e} (collinear or coincident "
                f"vertices on the sphere)" + _more(tiny.size, "such triangles", tiny)
            )
        inv = np.flatnonzero(self.areas < 0)
        if inv.size == tri.shape[0]:
            raise MeshError(
                "all triangles are inverted: they are clockwise seen from outside (inward normals); "
                "reverse the vertex order of every triangle"
            )
        if inv.size:
            i = int(inv[0])
            raise MeshError(
                f"inverted triangle {i} (vertices {tri[i].tolist()}) is clockwise seen "
                f"from outside while the others are counter-clockwise (the surface folds over itself "
                f"after projection onto the sphere: is it centred at the origin?)"
                + _more(inv.size, "inverted triangles", inv)
            )

    def _check_euler(self) -> None:
        chi = self.n_vertices_used - self.edge_cells.shape[0] + self.triangles.shape[0]
        if chi != 2:
            raise MeshError(
                f"the surface is not a single sphere: Euler characteristic V - E + F = "
                f"{self.n_vertices_used} - {self.edge_cells.shape[0]} + {self.triangles.shape[0]} = {chi}, expected 2 "
                "(several components, handles, or vertices shared by separate fans)"
            )

    def _check_duplicate_vertices(self, tol: float = 1e-10) -> None:
        from scipy.spatial import cKDTree

        used = np.unique(self.triangles)
        pairs = cKDTree(self.vertices[used]).query_pairs(tol, output_type="ndarray")
        if len(pairs):
            i, j = (int(used[k]) for k in pairs[0])
            raise MeshError(
                f"duplicate vertices: vertices {i} and {j} coincide on the sphere "
                f"(at {_fmt_pt(self.vertices[i])}, distance < {tol:g})" + _more(len(pairs), "such pairs")
            )

    def validate(self) -> None:
        """All checks: closed, manifold, consistently oriented, no degenerate or inverted
        triangles, no duplicate vertices, a single sphere (V - E + F = 2), exact areas
        summing to 4 pi. Raises :class:`MeshError` naming the offending indices."""
        _check_indices(self.vertices, self.triangles)
        _edge_structure(self.triangles, self.n_vertices, self.vertices)
        self._check_geometry()
        self._check_duplicate_vertices()
        self._check_euler()
        self._check_total()

    def _check_total(self) -> None:
        try:
            super().validate()
        except ValueError as exc:
            raise MeshError(str(exc)) from None

    # -- conveniences ----------------------------------------------------------------------
    def to_pyvista(self):
        """The mesh as a ``pyvista.PolyData`` (flat triangles through the vertices)."""
        import pyvista as pv

        return pv.PolyData.from_regular_faces(self.vertices, self.triangles)

    def __repr__(self) -> str:
        return f"SphereMesh({self.n_cells} triangles, {self.n_vertices} vertices, {self.n_edges} edges)"


# ---------------------------------------------------------------------------------------
# icosahedral geodesic meshes
# ---------------------------------------------------------------------------------------
def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """The icosahedron: 12 unit vertices, 20 outward triangles, faces ordered along a
    Hamiltonian path of the face-adjacency graph."""
    phi = (1.0 + math.sqrt(5.0)) / 2.0
    raw = []
    for s1 in (-1.0, 1.0):
        for s2 in (-1.0, 1.0):
            raw += [(0.0, s1, s2 * phi), (s1, s2 * phi, 0.0), (s2 * phi, 0.0, s1)]
    v = np.array(raw)
    # faces: triples of mutually adjacent vertices (edge length 2 before normalization)
    d2 = np.sum((v[:, None, :] - v[None, :, :]) ** 2, axis=-1)
    adj = np.abs(d2 - 4.0) < 1e-9
    faces = []
    for i in range(12):
        for j in range(i + 1, 12):
            for k in range(j + 1, 12):
                if adj[i, j] and adj[j, k] and adj[i, k]:
                    if np.dot(v[i], np.cross(v[j], v[k])) < 0:
                        faces.append((i, k, j))
                    else:
                        faces.append((i, j, k))
    faces = np.array(faces, dtype=np.int64)
    v = _unit_rows(v)
    # order faces along a Hamiltonian path (depth-first search, smallest index first)
    topo = _edge_structure(faces, 12)
    nb = np.sort(topo["neighbors"], axis=1)

    def extend(path, seen):
        if len(path) == len(faces):
            return path
        for f in nb[path[-1]]:
            if f not in seen:
                seen.add(f)
                found = extend(path + [int(f)], seen)
                if found:
                    return found
                seen.discard(f)
        return None

    path = extend([0], {0})
    return v, faces[path]


def refine(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split every triangle ``(a, b, c)`` into four at its edge midpoints projected onto
    the sphere: children ``4i .. 4i+3`` are ``(a, ab, ca), (ab, b, bc), (ca, bc, c),
    (ab, bc, ca)``. The old vertices keep their indices; the new ones follow, numbered by
    first appearance of their edge (triangle by triangle, local edges ab, bc, ca)."""
    tri = np.asarray(triangles, dtype=np.int64)
    nv = vertices.shape[0]
    src = tri.reshape(-1)
    dst = tri[:, [1, 2, 0]].reshape(-1)
    lo = np.minimum(src, dst)
    hi = np.maximum(src, dst)
    key = lo * np.int64(nv) + hi
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    perm = np.argsort(first, kind="stable")
    rank = np.empty(perm.size, dtype=np.int64)
    rank[perm] = np.arange(perm.size)
    mid = (nv + rank[inv.reshape(-1)]).reshape(-1, 3)  # ab, bc, ca per triangle
    h = first[perm]
    new = _unit_rows(vertices[lo[h]] + vertices[hi[h]])
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, bc, ca = mid[:, 0], mid[:, 1], mid[:, 2]
    children = np.stack(
        [
            np.stack([a, ab, ca], axis=1),
            np.stack([ab, b, bc], axis=1),
            np.stack([ca, bc, c], axis=1),
            np.stack([ab, bc, ca], axis=1),
        ],
        axis=1,
    ).reshape(-1, 3)
    return np.concatenate([vertices, new]), children


def _check_level(level) -> int:
    try:
        ok = int(level) == level
    except (TypeError, ValueError):
        ok = False
    if not ok or not 0 <= int(level) <= MAX_ICOSAHEDRAL_LEVEL:
        raise MeshError(f"icosahedral level must be an integer in 0..{MAX_ICOSAHEDRAL_LEVEL}, got {level!r}")
    return int(level)


def _column_extrema(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row minima and maxima of a 2-d array with few columns (column by column: faster
    than a reduction along a short axis)."""
    lo, hi = a[:, 0].copy(), a[:, 0].copy()
    for j in range(1, a.shape[1]):
        np.minimum(lo, a[:, j], out=lo)
        np.maximum(hi, a[:, j], out=hi)
    return lo, hi


def icosahedral_arrays(level: int, base: tuple[np.ndarray, np.ndarray] | None = None, base_level: int = 0):
    """Vertices ``(10 * 4**level + 2, 3)`` float64 and triangles ``(20 * 4**level, 3)``
    int32 of the icosahedral geodesic mesh, generated from scratch (or by refining
    ``base``, the arrays of ``base_level``: the result is the same)."""
    level = _check_level(level)
    v, t = _icosahedron() if base is None else (np.asarray(base[0], np.float64), np.asarray(base[1], np.int64))
    for _ in range(base_level if base is not None else 0, level):
        v, t = refine(v, t)
    return v, t.astype(np.int32)


def icosahedral_counts(level: int) -> tuple[int, int, int]:
    """``(triangles, edges, vertices)`` of the icosahedral mesh of ``level``:
    ``20 * 4**level``, ``30 * 4**level``, ``10 * 4**level + 2`` (nothing is generated; for
    sizing a run before its mesh exists, :mod:`meanfield.budget`)."""
    level = _check_level(level)
    return 20 * 4**level, 30 * 4**level, 10 * 4**level + 2


def _cache_dir() -> Path:
    env = os.environ.get("MEANFIELD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "meanfield"


def _read_npz(path: Path, level: int):
    try:
        with np.load(path) as z:
            v, t = np.asarray(z["vertices"], np.float64), np.asarray(z["triangles"], np.int64)
    except (OSError, KeyError, ValueError, EOFError):
        return None
    if v.shape != (10 * 4**level + 2, 3) or t.shape != (20 * 4**level, 3):
        return None
    return v, t


def _write_npz_atomic(path: Path, vertices: np.ndarray, triangles: np.ndarray) -> None:
    import io

    from ..io.output import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, vertices=vertices.astype(np.float64), triangles=triangles.astype(np.int32))
    atomic_write(path, buf.getvalue())


def load_icosahedral_arrays(level: int) -> tuple[np.ndarray, np.ndarray]:
    """The arrays of :func:`icosahedral_arrays`, from ``meshes/`` (levels 0..6), from the
    cache, or generated (from the finest shipped level) and cached (atomically; a cache
    that cannot be written is skipped)."""
    level = _check_level(level)
    name = f"icosahedral_{level}.npz"
    if level in SHIPPED_LEVELS:
        got = _read_npz(MESH_DIR / name, level)
        if got is not None:
            return got
        return icosahedral_arrays(level)
    cached = _cache_dir() / name
    got = _read_npz(cached, level)
    if got is not None:
        log.debug("icosahedral level %d read from the cache %s", level, cached)
        return got
    top = max(SHIPPED_LEVELS)
    base = _read_npz(MESH_DIR / f"icosahedral_{top}.npz", top)
    loud = level >= LOG_LEVEL_FROM
    cells, _, vertices = icosahedral_counts(level)
    if loud:
        log.info("generating icosahedral level %d (%s cells, %s vertices) from level %d ...", level, f"{cells:,}",
                 f"{vertices:,}", top if base is not None else 0)
    start = time.perf_counter()
    v, t = icosahedral_arrays(level, base=base, base_level=top if base is not None else 0)
    took = time.perf_counter() - start
    try:
        _write_npz_atomic(cached, v, t)
    except OSError as exc:
        if loud:
            log.info("generated icosahedral level %d in %.2g s; not cached (%s)", level, took, exc)
        return v, t
    if loud:
        try:
            size = cached.stat().st_size
        except OSError:
            size = 0
        log.info("generated icosahedral level %d in %.2g s; cached in %s (%.0f MB; $MEANFIELD_CACHE sets the "
                 "folder, deleting the file is safe)", level, took, cached, size / 1e6)
    return v, t


def load_icosahedral(level: int, edge_points: int = 1, check: bool = False) -> SphereMesh:
    """The icosahedral mesh of ``level`` (0..10) from the shipped / cached files."""
    v, t = load_icosahedral_arrays(level)
    loud = level > LOG_LEVEL_FROM
    if loud:
        log.info("building the geometry of icosahedral level %d (%s cells, %d edge point%s per edge) ...", level,
                 f"{t.shape[0]:,}", edge_points, "" if edge_points == 1 else "s")
        start = time.perf_counter()
    mesh = SphereMesh(v, t, edge_points=edge_points, check=check)
    mesh.icosahedral_level = level
    if loud:
        log.info("icosahedral level %d ready in %.2g s", level, time.perf_counter() - start)
    return mesh


def icosahedral(level: int, edge_points: int = 1, check: bool = False) -> SphereMesh:
    """The icosahedral geodesic mesh of ``level``, generated from scratch (same arrays as
    :func:`load_icosahedral`, which is faster for levels shipped or cached)."""
    v, t = icosahedral_arrays(level)
    mesh = SphereMesh(v, t, edge_points=edge_points, check=check)
    mesh.icosahedral_level = level
    return mesh


def perturbed_icosahedral(level: int, amplitude: float = 0.3, seed: int = 0, edge_points: int = 1) -> SphereMesh:
    """The icosahedral mesh of ``level`` with every vertex moved tangentially by up to
    ``amplitude`` times the mean edge length ``h`` (uniform direction, distance
    ``amplitude h sqrt(U)``, seeded) and projected back onto the sphere: a user-like mesh
    with no structure (non-nested levels, obtuse and non-Delaunay triangles; at
    ``amplitude = 0.3`` and ``seed = level``, levels 2-5 have 1.3-1.9 % of their edges
    non-Delaunay and angles of 18-138 degrees). For tests of discretizations that must not
    rely on the regularity of the icosahedral meshes."""
    v, t = load_icosahedral_arrays(level)
    a, b = v[t[:, 0]], v[t[:, 1]]  # the first edge of every triangle: a sample of the edges
    h = float(np.mean(np.arccos(np.clip(np.sum(a * b, axis=1), -1.0, 1.0))))
    rng = np.random.default_rng(seed)
    g = rng.normal(size=v.shape)
    g -= np.sum(g * v, axis=1, keepdims=True) * v
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    r = float(amplitude) * h * np.sqrt(rng.uniform(size=(v.shape[0], 1)))
    return SphereMesh(_unit_rows(v + r * g), t, edge_points=edge_points, check=True)


def latitude_longitude(n_lat: int, n_lon: int, edge_points: int = 1) -> SphereMesh:
    """The "UV sphere" most surface tools write: ``n_lat`` bands of equal polar angle, ``n_lon``
    of equal longitude, quads split into two triangles, a fan at each pole (cells of aspect
    ratio about ``n_lon / pi`` there). A user mesh that is not shape regular under
    refinement."""
    if n_lat < 2 or n_lon < 3:
        raise MeshError(f"a latitude-longitude mesh needs n_lat >= 2 and n_lon >= 3, got {n_lat}, {n_lon}")
    polar = np.pi * np.arange(1, n_lat) / n_lat
    lon = 2 * np.pi * np.arange(n_lon) / n_lon
    ring = np.stack([np.outer(np.sin(polar), np.cos(lon)), np.outer(np.sin(polar), np.sin(lon)),
                     np.outer(np.cos(polar), np.ones(n_lon))], axis=-1).reshape(-1, 3)
    v = np.concatenate([[[0.0, 0.0, 1.0]], ring, [[0.0, 0.0, -1.0]]])
    south = v.shape[0] - 1
    j = np.arange(n_lon)
    k = (j + 1) % n_lon
    tris = [np.stack([np.zeros(n_lon, dtype=np.int64), 1 + j, 1 + k], axis=1)]
    for i in range(n_lat - 2):
        top, bot = 1 + i * n_lon, 1 + (i + 1) * n_lon
        tris.append(np.stack([top + j, bot + j, bot + k], axis=1))
        tris.append(np.stack([top + j, bot + k, top + k], axis=1))
    last = 1 + (n_lat - 2) * n_lon
    tris.append(np.stack([last + j, np.full(n_lon, south), last + k], axis=1))
    return SphereMesh(v, np.concatenate(tris), edge_points=edge_points, check=True)


# ---------------------------------------------------------------------------------------
# user meshes
# ---------------------------------------------------------------------------------------
SUPPORTED_SUFFIXES = (".vtk", ".vtu", ".vtp", ".stl", ".obj", ".ply", ".msh")


def read_surface(path: Path):
    """``(points (n, 3), triangles (T, 3))`` of the surface in a file (pyvista)."""
    import logging
    import warnings

    import pyvista as pv

    suffix = path.suffix.lower()
    if suffix == ".msh":
        try:
            import meshio  # noqa: F401
        except ImportError:
            raise MeshError(f"{path}: reading gmsh .msh files needs the optional package meshio (pip install meshio)") from None

    class _Mute(logging.Filter):
        def filter(self, record):  # VTK reader errors are reported through our exception
            return False

    root = logging.getLogger()
    mute = _Mute()
    root.addFilter(mute)
    try:
        with warnings.catch_warnings(record=True) as caught, pv.vtk_verbosity("off"):
            warnings.simplefilter("always")
            try:
                data = pv.read(str(path))
            except Exception as exc:  # pyvista raises OSError, RuntimeError, ValueError, ...
                text = str(exc).strip()
                msg = text.splitlines()[0] if text else type(exc).__name__
                raise MeshError(f"{path}: cannot read the mesh file ({msg})") from None
        errors = [str(w.message) for w in caught if "raised an error while reading" in str(w.message)]
        if errors:
            raise MeshError(f"{path}: cannot read the mesh file (VTK: {errors[0].splitlines()[-1].strip()})")
        if isinstance(data, pv.MultiBlock):
            data = data.combine()
        if data is None or data.n_points == 0 or data.n_cells == 0:
            raise MeshError(f"{path}: the file holds no cells")
        with warnings.catch_warnings(), pv.vtk_verbosity("off"):
            warnings.simplefilter("ignore")
            surf = data.extract_surface(algorithm="dataset_surface").triangulate()
    finally:
        root.removeFilter(mute)
    if surf.n_cells == 0:
        raise MeshError(f"{path}: the surface has no triangles (the file holds no 2-D or 3-D cells)")
    if not surf.is_all_triangles:
        raise MeshError(f"{path}: the surface could not be triangulated")
    return np.asarray(surf.points, dtype=np.float64), np.asarray(surf.regular_faces, dtype=np.int64)


def load_mesh(path, edge_points: int = 1) -> SphereMesh:
    """A user's closed surface mesh (centred at the origin) as a :class:`SphereMesh`.

    The file is read by pyvista (``.vtk``, ``.vtu``, ``.vtp``, ``.stl``, ``.obj``,
    ``.ply``; gmsh ``.msh`` when meshio is installed); the surface of the data set is
    extracted and its polygons triangulated (quads: 2 triangles each); points with
    identical coordinates are merged; the vertices are projected radially onto the unit
    sphere. If every triangle is oriented inward the orientation is reversed. Then the
    checks of :meth:`SphereMesh.validate` run. Problems raise :class:`MeshError` naming
    the file; triangle indices are those of the triangulated surface, vertex indices
    those after merging (the coordinates are given too).
    """
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"{path}: no such mesh file")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise MeshError(f"{path}: unsupported mesh format {path.suffix!r} (use one of {', '.join(SUPPORTED_SUFFIXES)})")
    pts, tri = read_surface(path)
    # merge points with identical coordinates (like vtkCleanPolyData with tolerance 0, but
    # keeping degenerate triangles so that they are reported) and drop unused points
    uniq, inv = np.unique(pts, axis=0, return_inverse=True)
    tri = inv.reshape(-1)[tri]
    used = np.unique(tri)
    remap = np.full(uniq.shape[0], -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    vertices = uniq[used]
    tri = remap[tri]
    try:
        r = np.linalg.norm(vertices, axis=1)
        zero = np.flatnonzero(r <= 1e-12 * max(float(r.max()), 1e-300))
        if zero.size:
            raise MeshError(
                f"point {_fmt_pt(vertices[zero[0]])} is at the origin: the mesh must surround the origin "
                "(the centre of the sphere) to be projected onto the sphere"
            )
        u = vertices / r[:, None]
        ok = np.all(np.diff(np.sort(tri, axis=1), axis=1) > 0, axis=1)
        det = np.zeros(tri.shape[0])
        det[ok] = _triple(u[tri[ok, 0]], u[tri[ok, 1]], u[tri[ok, 2]])
        if np.sum(det < 0) > np.sum(det > 0):
            # inward (all, or mostly: the remaining outward ones are then reported as
            # inconsistently oriented): reverse every triangle
            tri = tri[:, [0, 2, 1]]
        return SphereMesh(vertices, tri, edge_points=edge_points, check=True)
    except MeshError as exc:
        raise MeshError(f"{path}: {exc}") from None


def parse_mesh_spec(spec: str, base_dir=None, edge_points: int = 1) -> SphereMesh:
    """``"icosahedral:LEVEL"`` (LEVEL an integer 0..10) or a mesh file path (relative to
    ``base_dir``, default the working directory) -> :class:`SphereMesh`."""
    if not isinstance(spec, str) or not spec.strip():
        raise MeshError(f"mesh must be \"icosahedral:LEVEL\" or a file path, got {spec!r}")
    if spec.startswith("icosahedral"):
        head, sep, level = spec.partition(":")
        if head == "icosahedral":
            text = level.strip()
            if not sep or re.fullmatch(r"[0-9]+", text) is None or not 0 <= int(text) <= MAX_ICOSAHEDRAL_LEVEL:
                raise MeshError(
                    f"mesh {spec!r}: expected \"icosahedral:LEVEL\" with LEVEL an integer in 0..{MAX_ICOSAHEDRAL_LEVEL}"
                )
            return load_icosahedral(int(text), edge_points=edge_points)
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else ".") / path
    return load_mesh(path, edge_points=edge_points)

"""Finite-volume discretization of d/dt rho + div_S(rho X[rho]) = 0 on a :class:`~meanfield.geometry.mesh.Mesh`.

Unknowns are cell averages ``rho_i`` of the density; the cell masses ``m_i = rho_i |C_i|``
are the weights of the discrete measure ``sum_i m_i delta_{c_i}`` from which the attention
field is evaluated at every edge quadrature point (one call to the field per stage). The
flux through an edge is ``sum_q w_q u_q rho_q^{upwind}`` with ``u_q = X . n_q``.

Schemes (``solver.scheme``), registered in :data:`SCHEMES`:

``upwind``
    first order: the upwind state is the cell average.
``muscl``
    second order: a least-squares gradient in the tangent plane of each cell, limited
    (Barth--Jespersen) so that every face value lies between the smallest and largest
    average of the cell and the cells around it (:meth:`Mesh.neighborhood_extrema`: on
    triangle meshes every cell sharing a vertex, so that linear data is not clipped at
    Gauss points near the corners) and in ``[0, 2 rho_i]``. On the circle this is exactly
    the monotonized-central (MC) limiter.

Positivity: face values are nonnegative and at most ``2 rho_i``, so a forward-Euler
step keeps ``rho >= 0`` when ``dt * sum_edges w |u| / |C_i| <= 1/2`` (``<= 1`` for
upwind). The time integrator checks the exact per-stage condition (the third value
returned by :meth:`FiniteVolume.rhs`) and rejects a step that would violate it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..dynamics.velocity import as_velocity
from ..fields.plans import make_plan
from ..geometry.mesh import Mesh

__all__ = ["FiniteVolume", "SCHEMES", "register_scheme"]

#: name -> face-state function ``(fv, rho, cells) -> values (n, f, q)`` at the edge points of
#: the cells ``cells`` (an index array or a slice; all cells by default).
SCHEMES: dict[str, Callable] = {}


def register_scheme(name: str, positivity_cfl: float):
    """Register a reconstruction; ``positivity_cfl`` is the CFL number up to which a
    forward-Euler step is guaranteed to keep densities nonnegative."""

    def deco(fn):
        fn.scheme_name = name
        fn.positivity_cfl = positivity_cfl
        SCHEMES[name] = fn
        return fn

    return deco


@register_scheme("upwind", positivity_cfl=1.0)
def _upwind(fv: "FiniteVolume", rho: np.ndarray, cells=slice(None)) -> np.ndarray:
    own = rho[cells]
    return np.broadcast_to(own[:, None, None], (own.shape[0],) + fv.mesh.face_displacement.shape[1:3])


@register_scheme("muscl", positivity_cfl=0.5)
def _muscl(fv: "FiniteVolume", rho: np.ndarray, cells=slice(None)) -> np.ndarray:
    mesh = fv.mesh
    own = rho[cells]
    nb = rho[mesh.neighbors[cells]]  # (n, k)
    grad = np.einsum("ndk,nk->nd", mesh.grad_operator[cells], nb - own[:, None])
    delta = np.einsum("nd,nfqd->nfq", grad, mesh.face_displacement[cells])
    low, high = mesh.neighborhood_extrema(rho, cells)
    hi = np.minimum(high, 2.0 * own) - own  # >= 0
    lo = np.maximum(low, 0.0) - own  # <= 0
    # Barth--Jespersen: phi = min(1, min over faces of hi / delta (delta > 0) or lo / delta
    # (delta < 0)). Division is monotone, so that is hi / max(delta) and lo / min(delta):
    # two per-cell reductions instead of a ratio per face (same bits).
    flat = delta.reshape(delta.shape[0], -1)
    dmax, dmin = flat[:, 0].copy(), flat[:, 0].copy()
    for j in range(1, flat.shape[1]):
        np.maximum(dmax, flat[:, j], out=dmax)
        np.minimum(dmin, flat[:, j], out=dmin)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.minimum(np.where(dmax > 0, hi / dmax, 1.0), np.where(dmin < 0, lo / dmin, 1.0))
    np.clip(phi, 0.0, 1.0, out=phi)
    return own[:, None, None] + phi[:, None, None] * delta


def _row_sums(a: np.ndarray) -> np.ndarray:
    """Sums along the short second axis, left to right, column by column."""
    out = a[:, 0].copy()
    for j in range(1, a.shape[1]):
        out += a[:, j]
    return out


class FiniteVolume:
    """The semi-discrete operator ``d rho / dt = L(rho)`` on a mesh.

    Parameters
    ----------
    mesh : Mesh
    field : Velocity or AttentionField
        The velocity X[mu](t, .) (:class:`~meanfield.dynamics.velocity.Velocity`), or one
        backend (``field(targets, sources, weights)``), taken as one head of weight 1. The
        operator makes the velocity's plans once, for the edge points and the cell centres
        (each head's backend prepares its own in them, :mod:`meanfield.fields.plans`), and
        passes them at every stage.
    scheme : str
        Key of :data:`SCHEMES`.
    partition : meanfield.parallel.Partition, optional
        This MPI rank's share of the cells. :meth:`rhs` then returns ``L`` on the owned cells
        only; it evaluates the field at the edges of those cells alone, reconstructs face
        values on the owned cells and the cells across their edges, and takes the step
        bounds as minima over all ranks. The density passed in is always the whole one
        (replicated by ``Allgatherv`` after each stage: it is the field's source measure
        and holds every neighbour value the update needs).
    """

    def __init__(self, mesh: Mesh, field, scheme: str = "muscl", partition=None):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
        self.mesh = mesh
        if getattr(field, "time_aware", False) or hasattr(field, "model"):
            field = as_velocity(field)
        #: the velocity (a bare callable without ``model``, e.g. a test's rigid rotation, is
        #: called as it is, without a time)
        self.field = field
        self._timed = getattr(field, "time_aware", False)
        self.scheme = scheme
        self.partition = partition
        self._faces = SCHEMES[scheme]
        self.positivity_cfl = self._faces.positivity_cfl
        n, f = mesh.cell_edges.shape
        if partition is None:
            owned = np.arange(n)
            edges = np.arange(mesh.n_edges)
            self._owned = self._edges = self._stencil = slice(None)
            stencil = owned
        else:
            owned = np.asarray(partition.cells, dtype=np.intp)
            mask = np.zeros(n, dtype=bool)
            mask[owned] = True
            edges = np.flatnonzero(mask[mesh.edge_cells].any(axis=1))
            # cells whose face values enter the fluxes: the owned ones first, then those across
            stencil = np.concatenate([owned, np.setdiff1d(np.unique(mesh.edge_cells[edges]), owned)])
            self._owned, self._edges, self._stencil = owned, edges, stencil
        self.n_owned = owned.size
        targets = mesh.edge_points[edges].reshape(-1, mesh.d)
        #: The field evaluation points of this operator (the quadrature points of its edges).
        self.n_targets = targets.shape[0]
        # the field's plans (the points themselves for a backend without plans): the edge
        # points (targets of every stage), all cell centres (the sources, and the targets of
        # the velocity output), this rank's cell centres (the sources it sums, spectral)
        self._targets = make_plan(field, targets)
        self._centers = make_plan(field, mesh.centers)
        self._normals = mesh.edge_normals[edges]
        self._weights = mesh.edge_weights[edges]
        self._areas = mesh.areas[owned]
        self._owned_centers = self._centers if partition is None else make_plan(field, mesh.centers[owned])
        # Row of each stencil cell, local index of each edge and owned cell.
        row = np.full(n, -1, dtype=np.intp)
        row[stencil] = np.arange(stencil.size)
        local_edge = np.full(mesh.n_edges, -1, dtype=np.intp)
        local_edge[edges] = np.arange(edges.size)
        # Slot (stencil row * f + local face) holding each local edge's left and right state.
        slots = row[:, None] * f + np.arange(f)
        self._left_slot = np.empty(edges.size, dtype=np.intp)
        self._right_slot = np.empty(edges.size, dtype=np.intp)
        cs = mesh.cell_edges[stencil]
        left = mesh.cell_edge_sign[stencil] > 0
        le = local_edge[cs]
        use = le >= 0
        self._left_slot[le[left & use]] = slots[stencil][left & use]
        self._right_slot[le[~left & use]] = slots[stencil][~left & use]
        # Owned cell (0..n_owned-1) on each side of each local edge; n_owned where not owned.
        side = np.full(n, self.n_owned, dtype=np.intp)
        side[owned] = np.arange(self.n_owned)
        self._left_cell = side[mesh.edge_cells[edges, 0]]
        self._right_cell = side[mesh.edge_cells[edges, 1]]
        self._cell_edges = local_edge[mesh.cell_edges[owned]]

    def _at(self, t: float) -> dict:
        return {"t": t} if self._timed else {}

    def masses(self, rho: np.ndarray) -> np.ndarray:
        return rho * self.mesh.areas

    def normal_velocity(self, rho: np.ndarray, t: float = 0.0) -> np.ndarray:
        """``X[mu](t) . n`` at the quadrature points of the (local) edges, shape ``(E, q)``."""
        mesh = self.mesh
        masses = self.masses(rho)
        if self.partition is None:
            x = self.field(self._targets, self._centers, masses, **self._at(t))
        else:
            x = self.partition.field(self.field, self._targets, mesh.centers, masses, self._owned_centers, t=t)
        return np.einsum("eqd,eqd->eq", x.reshape(self._normals.shape), self._normals)

    def velocity_at_centers(self, rho: np.ndarray, t: float = 0.0) -> np.ndarray:
        """The field X(t) at the cell centres, ``(N, d)`` (for output; every rank gets all)."""
        mesh = self.mesh
        masses = self.masses(rho)
        if self.partition is None:
            return self.field(self._centers, self._centers, masses, **self._at(t))
        local = self.partition.field(self.field, self._owned_centers, mesh.centers, masses, self._owned_centers, t=t)
        return self.partition.gather(local)

    def rhs(self, rho: np.ndarray, un: np.ndarray | None = None, t: float = 0.0):
        """``(L(rho), un, dt_pos)``: the time derivative of the (owned) cell averages with the
        terms acting at ``t``, the edge normal velocities used, and the largest forward-Euler
        step keeping ``rho >= 0`` (over all ranks). ``rho`` is the whole density."""
        if un is None:
            un = self.normal_velocity(rho, t)
        lu, dt_pos = self.local_rhs(rho, un)
        if self.partition is not None:
            # one reduction: the step bound, and whether any rank's derivative is not finite
            # (then every rank sees a non-finite derivative and fails the same stage)
            dt_pos, finite = self.partition.min_and_all(dt_pos, bool(np.all(np.isfinite(lu))))
            if not finite:
                lu = np.full_like(lu, np.nan)
        return lu, un, dt_pos

    def local_rhs(self, rho: np.ndarray, un: np.ndarray) -> tuple[np.ndarray, float]:
        """``(L(rho), dt_pos)`` on this rank's cells for the edge normal velocities ``un``,
        without the reduction over the ranks (:meth:`rhs` adds it; the causal operator
        reduces once for all its bands)."""
        left, right = self.edge_states(rho)
        up = np.maximum(un, 0.0)
        down = np.minimum(un, 0.0)
        wl = _row_sums(self._weights * up * left)  # left -> right
        wr = _row_sums(self._weights * down * right)  # right -> left (<= 0)
        flux = wl + wr
        n = self.n_owned
        # (an extra bin n collects the sides that belong to other ranks)
        dm = (np.bincount(self._right_cell, flux, minlength=n + 1) - np.bincount(self._left_cell, flux, minlength=n + 1))[:n]
        outflow = (np.bincount(self._left_cell, wl, minlength=n + 1)
                   - np.bincount(self._right_cell, wr, minlength=n + 1))[:n]
        own = rho[self._owned]
        with np.errstate(divide="ignore", invalid="ignore"):
            dt_pos = float(np.min(np.where(outflow > 0, own * self._areas / outflow, np.inf), initial=np.inf))
        return dm / self._areas, dt_pos

    def edge_states(self, rho: np.ndarray, scheme: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(left, right)``, each ``(E, q)``: the face values of the left and the right cell
        of every (local) edge at its quadrature points, reconstructed by ``scheme`` (default:
        this operator's); the states :meth:`local_rhs` takes upwind."""
        faces = self._faces if scheme is None else SCHEMES[scheme]
        values = faces(self, rho, self._stencil).reshape(-1, self._weights.shape[1])
        return values[self._left_slot], values[self._right_slot]

    def cfl_dt(self, un: np.ndarray) -> float:
        """``min_i |C_i| / sum_{edges of i} w |u|``: a CFL number of 1 per unit of this step."""
        dt = self.local_cfl_dt(un)
        return dt if self.partition is None else self.partition.min(dt)

    def local_cfl_dt(self, un: np.ndarray) -> float:
        """:meth:`cfl_dt` on this rank's cells (no reduction over the ranks)."""
        speed = _row_sums(self._weights * np.abs(un))
        per_cell = _row_sums(speed[self._cell_edges])
        with np.errstate(divide="ignore"):
            return float(np.min(np.where(per_cell > 0, self._areas / per_cell, np.inf), initial=np.inf))

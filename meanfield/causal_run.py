"""The causal mean field from a case: initial data on position bands, the run adapter, and the
per-position diagnostics shared with the causal particles.

A causal case (``model.mask = "causal"``) run by ``meanfield run`` holds a density on
``domain.positions`` bands of the prompt position ``s`` times the cells of the manifold
(:class:`~meanfield.pde.solver.Simulation` with ``positions``; the field of every band from
the prefix measures of :mod:`meanfield.fields.causal`). Its snapshots hold (docs/causal.md,
SPEC §5):

- ``positions (P,)`` the band centres in ``[0, 1]``, ``points (N, d)`` and ``areas (N,)`` the
  manifold cells, ``masses (P, N)`` the mass of cell j in band p (each row sums to ``1/P``),
  ``density (P, N)`` each band's probability density (row p: ``masses[p] / areas * P``),
  ``velocity (P, N, d)`` the field at the cell centres of every band;
- ``band_order_parameter (P,)`` ``|int x f(s_p, x) dx|`` and ``band_clusters (P,)`` the
  cluster count of every band (the same criterion as the whole run's).

The diagnostics row describes the tokens of all positions together (the ``x``-marginal
``int_0^1 f(s, .) ds``): ``mass`` (1), ``order_parameter``, ``n_clusters``; ``min_density`` /
``max_density`` are over every band and cell; ``energy`` is empty (a masked field ascends
no functional). The causal particles (``meanfield particles``) bin their tokens into the same
bands (token i at ``s = i/n`` in band ``floor((i - 1/2) P / n)``) and write the same two
per-position arrays, so the two can be compared band by band.
"""

from __future__ import annotations

import math

import numpy as np

from . import diagnostics as diag
from .io.case import CaseError
from .pde.health import check_density

__all__ = ["CausalPdeRun", "band_centres", "band_diagnostics", "causal_initial", "token_bands",
           "PARTICLE_BANDS"]

#: Bands of the per-position diagnostics of a causal particle run without ``domain.positions``.
PARTICLE_BANDS = 8

#: Gauss--Legendre points per band for the band averages of an initial function of (s, x).
_S_POINTS = 3


def band_centres(P: int) -> np.ndarray:
    """``s_p = (p + 1/2) / P``, the centres of the ``P`` position bands."""
    return (np.arange(int(P)) + 0.5) / int(P)


def token_bands(n: int, P: int) -> np.ndarray:
    """The band of every token of an ``n``-token prompt (token i at ``s = i/n``, 1-based,
    stands for the interval ``((i - 1)/n, i/n]``; its midpoint decides): ``(n,)`` in ``0..P-1``."""
    return np.minimum((np.arange(int(n)) + 0.5) * int(P) // int(n), int(P) - 1).astype(np.intp)


def causal_initial(mesh, spec: dict, P: int, source="<case>") -> np.ndarray:
    """The initial density ``(P, N)`` of a causal case: every band a probability density on the
    cells. Any ``initial.kind`` but ``python`` is the same in every band (uniform in ``s``);
    ``python`` is a function ``f(s, x)`` averaged over each band (3 Gauss points in ``s``, the
    quadrature of ``initial.quadrature_degree`` on the cells) and normalized band by band."""
    from .initial import InitialDataError, project

    kind = spec["kind"]

    def fail(key, reason):
        raise CaseError(source, f"initial.{key}", reason)

    if kind == "points":
        fail("kind", "\"points\" are tokens: a causal mean field needs a density of (s, x) (\"python\" with "
                     "initial.function(s, x)) or one the same at every position (\"uniform\", \"modes\", \"vmf\")")
    if kind != "python":
        try:
            rho = project(mesh, spec)
        except InitialDataError as exc:
            key = {"modes": "modes", "vmf": "centers"}.get(kind, "kind")
            fail(key, str(exc))
        return np.tile(rho, (P, 1))
    f = spec["function_object"]
    pts, wts = mesh.cell_quadrature(spec.get("quadrature_degree", 8))
    x = pts.reshape(-1, mesh.d)
    nodes, gw = np.polynomial.legendre.leggauss(_S_POINTS)
    rho = np.zeros((P, mesh.n_cells))
    for p in range(P):
        for node, weight in zip(nodes, gw):
            s = (p + 0.5 + 0.5 * node) / P
            try:
                v = np.asarray(f(np.full(x.shape[0], s), x), dtype=float)
            except Exception as exc:  # the user's function: any error is invalid input
                fail("function", f"{type(exc).__name__} at s = {s:.4g}: {exc}")
            if v.shape != (x.shape[0],):
                fail("function", f"must return an array of shape ({x.shape[0]},) for s (n,) and x (n, {mesh.d}), "
                                 f"got shape {v.shape}")
            if not np.all(np.isfinite(v)):
                fail("function", f"returned non-finite values at s = {s:.4g}")
            if np.any(v < 0):
                fail("function", f"is negative ({v.min():.3e}) at s = {s:.4g}")
            rho[p] += 0.5 * weight * np.sum(v.reshape(wts.shape) * wts, axis=1) / mesh.areas
    mass = rho @ mesh.areas
    if not np.all(mass > 0):
        p = int(np.argmin(mass))
        fail("function", f"has no mass in position band {p} (s in [{p / P:.4g}, {(p + 1) / P:.4g}])")
    return rho / mass[:, None]


def band_diagnostics(mesh, rho: np.ndarray, criterion: diag.ClusterCriterion) -> tuple[np.ndarray, np.ndarray]:
    """``(order parameter (P,), cluster count (P,))`` of every band of a density ``(P, N)``."""
    m = rho * mesh.areas
    order = np.linalg.norm(m @ mesh.centers, axis=1) / m.sum(axis=1)
    clusters = np.array([diag.find_clusters(mesh, r, criterion)[0].size for r in rho], dtype=np.int64)
    return order, clusters


def particle_band_diagnostics(x: np.ndarray, w: np.ndarray, P: int, criterion: diag.ClusterCriterion):
    """The same per band of the tokens ``x (n, d)`` (in prompt order) with weights ``w``."""
    bands = token_bands(len(x), P)
    order = np.zeros(P)
    clusters = np.zeros(P, dtype=np.int64)
    for p in range(P):
        sel = bands == p
        if not np.any(sel):
            continue
        wb = w[sel] / w[sel].sum()
        order[p] = float(np.linalg.norm(wb @ x[sel]))
        clusters[p] = diag.find_particle_clusters(x[sel], wb, criterion)[0].size
    return order, clusters


class CausalPdeRun:
    """Adapter of a causal :class:`~meanfield.pde.solver.Simulation` (``state.rho (P, N)``) to
    :func:`meanfield.run.drive` (the module docstring lists what it writes)."""

    RESTART_KEYS = ("t", "density")
    UNREAD_SECTIONS = ("particles", "compare")  # (see meanfield.run.PdeRun)

    def __init__(self, sim, state, criterion: diag.ClusterCriterion, target=None):
        self.sim, self.state, self.criterion = sim, state, criterion
        self.target = target
        self.mesh = sim.mesh
        self.P = state.rho.shape[0]
        self.positions = band_centres(self.P)
        self.snapshots: list[tuple[float, np.ndarray]] = []

    def check_health(self) -> None:
        """After every step: every band finite, nonnegative, of mass 1."""
        rho, areas = self.state.rho, self.mesh.areas
        for p in range(self.P):
            check_density(self.state.t, rho[p], areas, 1.0, what=f"density of position band {p}")

    def first_step(self) -> tuple[float, str]:
        bounds = self.sim.step_bounds(self.state.rho)
        bound = min(bounds, key=bounds.get)
        return float(bounds[bound]), bound

    def stall_hint(self) -> str:
        return ("once clusters collapse, the transport CFL bound of the cells around them sets the step: a coarser "
                "mesh or a shorter solver.t_end helps; raise solver.max_steps to allow more steps")

    def describe(self) -> str:
        from .dynamics.model import describe_model

        sim = self.sim
        return (f"causal mean field on {self.P} position bands x {self.mesh.manifold} ({self.mesh.n_cells} cells); "
                f"{describe_model(sim.model, getattr(sim, 'noise', 0.0))}; scheme {sim.fv.scheme}, backend {sim.velocity_field.name}")

    def advance(self, t_out, on_step):
        self.sim.advance(self.state, t_out, on_step)

    def _arrays(self) -> dict:
        st, mesh = self.state, self.mesh
        return {"t": np.float64(st.t), "positions": self.positions, "points": mesh.centers,
                "masses": st.rho * mesh.areas / self.P, "areas": mesh.areas, "density": st.rho}

    def snapshot(self):
        st, mesh = self.state, self.mesh
        arrays = self._arrays()
        velocity = self.sim.velocity(st.rho, st.t)
        arrays["velocity"] = velocity
        marginal = st.rho.mean(axis=0)
        clusters = diag.find_clusters(mesh, marginal, self.criterion)
        arrays["cluster_masses"], arrays["cluster_centers"] = clusters
        arrays["band_order_parameter"], arrays["band_clusters"] = band_diagnostics(mesh, st.rho, self.criterion)
        row = diag.compute(mesh, self.sim.model, marginal, velocity.reshape(-1, mesh.d), st.t, st.steps,
                           self.criterion, clusters)
        row["min_density"], row["max_density"] = float(st.rho.min()), float(st.rho.max())
        if self.target is not None:
            row["w1_target"] = self.target.distance_to_cells(mesh, marginal * mesh.areas)
        arrays["steps"] = np.int64(st.steps)
        arrays["rejected"] = np.int64(getattr(self.sim, "rejected", 0))
        self.snapshots.append((st.t, st.rho.copy()))
        return arrays, row

    def check_restore(self, arrays: dict) -> None:
        rho = arrays["density"]
        if rho.dtype != np.float64 or rho.shape != self.state.rho.shape:
            raise ValueError(f"density of shape {rho.shape} and type {rho.dtype}, the case has {self.P} position "
                             f"bands x {self.mesh.n_cells} cells (float64)")
        if arrays["t"].shape != ():
            raise ValueError("t is not a scalar")

    def restore(self, arrays: dict, history=()) -> None:
        self.state.t = float(arrays["t"])
        self.state.rho = np.array(arrays["density"], dtype=np.float64, order="C", copy=True)
        self.state.steps = int(arrays["steps"])
        if "rejected" in arrays and hasattr(self.sim, "rejected"):
            self.sim.rejected = int(arrays["rejected"])
        self.snapshots = [(float(h["t"]), np.array(h["density"], dtype=np.float64)) for h in history]
        self.snapshots.append((self.state.t, self.state.rho.copy()))

    def polydata(self, arrays):
        """The sphere's VTK cells with one array per band (``density_band_p``) and the
        ``x``-marginal density."""
        from .io.vtk_output import surface_polydata

        rho = arrays["density"]
        fields = {"density": rho.mean(axis=0), "areas": arrays["areas"]}
        width = max(1, int(math.log10(max(1, self.P - 1))) + 1)
        for p in range(self.P):
            fields[f"density_band_{p:0{width}d}"] = rho[p]
        return surface_polydata(self.mesh, fields)

    def checkpoint(self) -> dict:
        arrays = self._arrays()
        arrays["density"] = arrays["density"].copy()
        return arrays

    def summary(self) -> str:
        return f"{self.state.steps} steps ({getattr(self.sim, 'rejected', 0)} rejected)"

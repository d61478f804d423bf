"""MPI: the one owner of the communicator, and the domain split of the solvers.

Nothing else in the package touches MPI, and mpi4py is imported only when a
:class:`Distributor` is created (never at package import), so serial runs need no MPI.

Finite volumes (:class:`Partition`). The cells are ordered along a space-filling curve
(:meth:`~meanfield.geometry.mesh.Mesh.sfc_order`: the refinement tree of icosahedral meshes, the
circle's own order, the Morton curve of the centres for other meshes) and each rank owns a
contiguous, balanced run of that order. A rank evaluates the field only at the quadrature
points of its cells' edges, reconstructs face values only on its cells and the cells across
their edges, and updates only its cells; the new averages are replicated with
``Allgatherv`` after every stage -- they are the source measure of the next field
evaluation (direct backend) and hold every neighbour value the update needs. With the
spectral backend each rank sums the coefficients of its own cells and the partial sums are
added with ``Allreduce``. The step bounds (CFL, positivity) are minima over the ranks
(``Allreduce``), so every rank takes the same steps.

Particles (:class:`DistributedField`). Each rank evaluates the field at a contiguous,
balanced share of the particles (spectral backend: from the coefficients of its share of
the sources, summed with ``Allreduce``); the shares are gathered with ``Allgatherv`` and
the O(n) particle update is done on every rank.

Results therefore do not depend on the number of ranks beyond round-off (the order of
the sums). Rank 0 writes the outputs and shows the progress bar. An exception on any rank
inside a field evaluation ends the whole job (``Abort``) with its message.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from .fields.plans import PointPlan, as_points, make_plan

__all__ = ["Distributor", "DistributedField", "DistributedPlan", "Partition", "launched_under_mpi"]

#: Environment variables set by MPI launchers (MPICH/Hydra, Open MPI, Slurm's PMI2).
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")


def launched_under_mpi() -> bool:
    """True when this process was started by ``mpiexec``/``mpirun`` with more than one rank."""
    for name in _SIZE_VARIABLES:
        try:
            if int(os.environ.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


class Distributor:
    """Owns the communicator (default ``MPI.COMM_WORLD``) and the split of index ranges."""

    def __init__(self, comm=None):
        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        #: Seconds spent in collectives and their count (includes waiting for slower ranks);
        #: read by benchmarks/bench_mpi.py for the cost model.
        self.comm_seconds = 0.0
        self.comm_calls = 0

    @property
    def root(self) -> bool:
        return self.rank == 0

    def counts(self, n: int) -> np.ndarray:
        """Balanced contiguous shares of ``n`` items: the first ``n % size`` ranks get one more."""
        base, extra = divmod(int(n), self.size)
        return np.array([base + (r < extra) for r in range(self.size)], dtype=np.int64)

    def share(self, n: int) -> slice:
        counts = self.counts(n)
        start = int(counts[: self.rank].sum())
        return slice(start, start + int(counts[self.rank]))

    def allgather_rows(self, local: np.ndarray, n: int, counts=None) -> np.ndarray:
        """The rows of every rank's share, in order: ``(n, ...)`` on every rank. ``counts``: the
        rows of each rank when the shares are not :meth:`counts` (a causal split)."""
        from mpi4py import MPI

        local = np.ascontiguousarray(local, dtype=float)
        width = int(np.prod(local.shape[1:])) if local.ndim > 1 else 1
        out = np.empty((n,) + local.shape[1:], dtype=float)
        counts = (self.counts(n) if counts is None else np.asarray(counts, dtype=np.int64)) * width
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        start = time.perf_counter()
        self.comm.Allgatherv([local, MPI.DOUBLE], [out, (counts, displs), MPI.DOUBLE])
        self._count(start)
        return out

    def _count(self, start: float) -> None:
        self.comm_seconds += time.perf_counter() - start
        self.comm_calls += 1

    def allreduce_sum(self, coeffs):
        """Elementwise sum over the ranks of an array (or a tuple of arrays)."""
        from mpi4py import MPI

        if isinstance(coeffs, (tuple, list)):
            return type(coeffs)(self.allreduce_sum(c) for c in coeffs)
        buf = np.ascontiguousarray(coeffs).copy()
        start = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        self._count(start)
        return buf

    def allreduce_min(self, values: np.ndarray) -> np.ndarray:
        from mpi4py import MPI

        buf = np.array(values, dtype=float)
        start = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.MIN)
        self._count(start)
        return buf

    def bcast(self, value):
        return self.comm.bcast(value, root=0)

    def agree(self, error):
        """Every rank passes its error (``None`` if it has none) at the same point of the
        program; returns ``(rank, error)`` of the lowest rank that has one, or ``None``, the
        same on every rank. Lets an error found by one rank only (a user's initial function
        that raises there) end every rank alike, instead of leaving the others waiting in
        the next collective."""
        errors = self.comm.allgather(error)
        for rank, err in enumerate(errors):
            if err is not None:
                return rank, err
        return None

    def abort(self, message: str, code: int = 1) -> None:
        """End the whole job now (no rank left waiting in a collective)."""
        if message:
            sys.stderr.write(message.rstrip("\n") + "\n")
            sys.stderr.flush()
        self.comm.Abort(code)


def split_evaluate(field, dist: Distributor, targets, sources, weights, part, local_sources=None,
                   project: bool = True, t: float = 0.0):
    """The field of the whole measure ``(sources, weights)`` at ``targets`` (this rank's
    targets). A backend with coefficients (spectral) sums only the sources ``part`` (this
    rank's share; ``local_sources`` is ``sources[part]`` where the caller keeps it) and the
    partial coefficients are added over the ranks; the direct backend sums over all
    sources. ``project=False`` asks the backend for the attention average before the
    tangential projection (passed on only then, so backends without the keyword still
    work for the field itself). ``targets`` and ``local_sources`` may be the field's plans
    (:mod:`meanfield.fields.plans`; the finite-volume operator makes them once for its
    rank's points), or arrays. A :class:`~meanfield.dynamics.velocity.Velocity` (several
    terms, time ``t``) is split head by head, each head as one backend. An exception ends
    the whole job."""
    try:
        if getattr(field, "time_aware", False):
            def evaluate(backend, tp, sp, lp):
                return _split_backend(backend, dist, tp, sp, weights, part, lp, project)

            return field(targets, sources, weights, project=project, t=t, local_sources=local_sources,
                         evaluate=evaluate)
        return _split_backend(field, dist, targets, sources, weights, part, local_sources, project)
    except Exception as exc:  # noqa: BLE001 -- end every rank, not just this one
        dist.abort(f"meanfield: run failed on rank {dist.rank}: {type(exc).__name__}: {exc}")
        raise


def _split_backend(field, dist, targets, sources, weights, part, local_sources, project):
    """One backend's field at this rank's ``targets`` (see :func:`split_evaluate`)."""
    kw = {} if project else {"project": False}
    if hasattr(field, "coefficients"):
        own = np.asarray(as_points(sources))[part] if local_sources is None else local_sources
        coeffs = dist.allreduce_sum(field.coefficients(own, np.asarray(weights)[part]))
        return field.evaluate(targets, coeffs, as_points(sources), weights, **kw)
    return field(targets, as_points(sources), weights, **kw)


class Partition:
    """This rank's share of a mesh's cells for the finite-volume split.

    ``cells`` are the owned cells: a contiguous, balanced run of the mesh's space-filling
    curve order. :meth:`gather` replicates per-cell values of every rank (``Allgatherv``).
    """

    def __init__(self, dist: Distributor, mesh):
        self.dist = dist
        self.n = mesh.n_cells
        self.order = mesh.sfc_order()
        share = dist.share(self.n)
        self.cells = np.arange(share.start, share.stop) if self.order is None else np.sort(self.order[share])
        # gather: rows arrive in curve order of the shares; each share is sorted by cell index
        if self.order is not None:
            counts = dist.counts(self.n)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            self._placement = np.concatenate([np.sort(self.order[bounds[r]:bounds[r + 1]]) for r in range(dist.size)])

    def gather(self, local: np.ndarray) -> np.ndarray:
        """Per-cell values of the owned cells (in the order of :attr:`cells`) -> all cells."""
        rows = self.dist.allgather_rows(local, self.n)
        if self.order is None:
            return rows
        out = np.empty_like(rows)
        out[self._placement] = rows
        return out

    def gather_bands(self, local: np.ndarray) -> np.ndarray:
        """Per-cell values of the owned cells in every band, ``(P, n_owned, ...)`` -> ``(P, N, ...)``
        (the causal PDE: every rank owns the same cells of each band); one ``Allgatherv``."""
        local = np.asarray(local, dtype=float)
        return np.ascontiguousarray(np.moveaxis(self.gather(np.moveaxis(local, 1, 0)), 0, 1))

    def field(self, field, targets, sources, weights, local_sources=None, t: float = 0.0):
        """The field of the whole cell measure at this rank's targets at time ``t`` (see
        :func:`split_evaluate`; ``local_sources`` are the owned cells' centres)."""
        return split_evaluate(field, self.dist, targets, sources, weights, self.cells, local_sources, t=t)

    def min(self, value: float) -> float:
        return float(self.dist.allreduce_min([value])[0])

    def min_and_all(self, value: float, flag: bool) -> tuple[float, bool]:
        """The smallest ``value`` and whether ``flag`` holds on every rank, in one reduction."""
        got = self.dist.allreduce_min([value, 1.0 if flag else 0.0])
        return float(got[0]), bool(got[1] > 0.5)


class DistributedField:
    """Any attention-field backend with its targets split across the ranks of ``dist``
    (and, for a spectral backend, the coefficient sums over the sources)."""

    def __init__(self, field, dist: Distributor):
        self.field = field
        self.model = field.model
        self.dist = dist
        self.name = f"{field.name} on {dist.size} MPI ranks"
        #: a split :class:`~meanfield.dynamics.velocity.Velocity` takes the time ``t`` like it
        self.time_aware = bool(getattr(field, "time_aware", False))
        if self.time_aware:
            self.velocity = field.velocity

    def plan(self, points) -> "DistributedPlan":
        """A plan of ``points`` for this split: the inner backend's plan of this rank's share."""
        points = np.asarray(as_points(points), dtype=float)
        return DistributedPlan(self, points, make_plan(self.field, points[self.dist.share(len(points))]))

    def __call__(self, targets, sources, weights, project: bool = True, t: float = 0.0):
        """The field at ``targets`` (at time ``t``: a split velocity); ``project=False``: the
        attention average before ``P_x``.
        ``targets``: a plan (:meth:`plan`) or an array. The same array for the targets and the
        sources (the particles' ``field(x, x, w)``): this rank's share is prepared once for
        both its targets and the sources it sums."""
        n = len(targets)
        if self.time_aware and self.velocity.model.causal and np.ndim(weights) == 1:
            return self._tokens(targets, weights, project, t)
        share = self.dist.share(n)
        part = self.dist.share(len(weights))
        own = None
        if isinstance(targets, DistributedPlan) and targets.field is self:
            local_targets = targets.local
            if sources is targets:
                own = local_targets
        else:
            local_targets = np.asarray(as_points(targets))[share]
            if sources is targets:  # one plan of this rank's points for both roles
                local_targets = own = make_plan(self.field, local_targets)
        local = split_evaluate(self.field, self.dist, local_targets, as_points(sources), weights, part, own,
                               project=project, t=t)
        return self.dist.allgather_rows(local, n)


    def _tokens(self, targets, weights, project: bool, t: float) -> np.ndarray:
        """Causal tokens: each rank evaluates a contiguous run of tokens balanced by the pairs
        they sum (:func:`~meanfield.fields.causal.split_rows`); every rank holds all tokens
        (the sources of its rows). An exception ends the whole job."""
        from .fields.causal import split_rows

        x = np.asarray(as_points(targets), dtype=float)
        n, size = x.shape[0], self.dist.size
        if x.ndim != 2:
            raise ValueError(f"an MPI split of causal tokens takes one prompt (n, d), got {x.shape}")
        counts = [split_rows(n, size, r).size for r in range(size)]
        try:
            local = self.field(x, x, weights, project=project, t=t, rows=split_rows(n, size, self.dist.rank))
        except Exception as exc:  # noqa: BLE001 -- end every rank, not just this one
            self.dist.abort(f"meanfield: run failed on rank {self.dist.rank}: {type(exc).__name__}: {exc}")
            raise
        return self.dist.allgather_rows(local, n, counts=counts)


class DistributedPlan(PointPlan):
    """A :class:`DistributedField`'s plan: the points (a :class:`~meanfield.fields.plans.PointPlan`
    of the split field) and the inner backend's plan of this rank's share (``local``)."""

    __slots__ = ("local",)

    def __init__(self, field, points, local):
        super().__init__(field, points)
        self.local = local

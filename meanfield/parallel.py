"""MPI: the one owner of the communicator, and the target split of the nonlocal convolution.

Nothing else in the package touches MPI, and mpi4py is imported only when a
:class:`Distributor` is created (never at package import), so serial runs need no MPI.

What is split (this first step of the MPI work): the field evaluation, which costs
O(targets x sources) per stage. Each rank evaluates a contiguous, balanced share of the
targets (edge quadrature points, cell centres, particles) with the same backend and the
same per-target code as a serial run, and the shares are gathered with ``Allgatherv``.
Sources (cell masses, particle weights) are replicated: every rank holds the whole state
and performs the O(N) finite-volume update itself. Results therefore do not depend on the
number of ranks beyond round-off. Rank 0 writes the outputs and shows the progress bar.
"""

from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["Distributor", "DistributedField", "launched_under_mpi"]

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

    def allgather_rows(self, local: np.ndarray, n: int) -> np.ndarray:
        """The rows of every rank's share, in order: ``(n, ...)`` on every rank."""
        from mpi4py import MPI

        local = np.ascontiguousarray(local, dtype=float)
        width = int(np.prod(local.shape[1:])) if local.ndim > 1 else 1
        out = np.empty((n,) + local.shape[1:], dtype=float)
        counts = self.counts(n) * width
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.comm.Allgatherv([local, MPI.DOUBLE], [out, (counts, displs), MPI.DOUBLE])
        return out

    def bcast(self, value):
        return self.comm.bcast(value, root=0)

    def abort(self, message: str, code: int = 1) -> None:
        """End the whole job now (no rank left waiting in a collective)."""
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()
        self.comm.Abort(code)


class DistributedField:
    """Any attention-field backend with its targets split across the ranks of ``dist``."""

    def __init__(self, field, dist: Distributor):
        self.field = field
        self.model = field.model
        self.dist = dist
        self.name = f"{field.name} on {dist.size} MPI ranks"

    def __call__(self, targets, sources, weights):
        n = len(targets)
        try:
            local = self.field(np.asarray(targets)[self.dist.share(n)], sources, weights)
        except Exception as exc:  # noqa: BLE001 -- end every rank, not just this one
            self.dist.abort(f"meanfield: run failed on rank {self.dist.rank}: {type(exc).__name__}: {exc}")
            raise
        return self.dist.allgather_rows(local, n)

"""Helpers shared by several test modules (imported as ``_helpers``: pytest puts ``tests/``
on ``sys.path``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

# -- launching the CLI, serially or under mpiexec -----------------------------------------
BIN = Path(sys.executable).parent
#: The mpich wheel puts mpiexec next to the Python of the environment.
MPIEXEC = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
MEANFIELD = shutil.which("meanfield", path=str(BIN)) or shutil.which("meanfield")


def launch(ranks: int, *args, timeout: float = 120, wrap: bool = False) -> subprocess.CompletedProcess:
    """``meanfield ARGS`` as a process (``ranks == 1``) or under ``mpiexec -n ranks``, with
    the launcher variables of any enclosing MPI job removed. With ``wrap`` every rank
    reports its own exit status on stdout (``rank exit N``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    cmd = [MEANFIELD, *map(str, args)]
    if wrap:
        cmd = ["sh", "-c", '"$0" "$@"; echo "rank exit $?"', *cmd]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# -- the spectral sphere backends against the direct sums ---------------------------------
def sphere_points(rng, n: int) -> np.ndarray:
    p = rng.normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def point_sets(mesh):
    """``(name, targets, sources, weights)``: random points, and the finite-volume use (every
    edge midpoint of ``mesh`` from all cell masses)."""
    rng = np.random.default_rng(11)
    yield "random", sphere_points(rng, 300), sphere_points(rng, 200), rng.random(200)
    yield "mesh", mesh.edge_points[:, 0, :], mesh.centers, rng.random(len(mesh.centers)) * mesh.areas


def rel_err(got, ref) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())

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
    cmd = [MEANFIELD, *map(str, args)]
    if wrap:
        cmd = ["sh", "-c", '"$0" "$@"; echo "rank exit $?"', *cmd]
    return _run(ranks, cmd, timeout)


def _run(ranks: int, cmd: list, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


COUNTER = Path(__file__).with_name("_count_field.py")


def launch_counted(ranks: int, *args, timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict]:
    """Like :func:`launch` (``meanfield ARGS``), through ``_count_field.py``: also returns
    ``{rank: (targets, calls, sources)}``: the target points at which each rank evaluated
    the attention field, in how many evaluations, and the sources its spectral backend summed
    into coefficients."""
    proc = _run(ranks, [sys.executable, str(COUNTER), *map(str, args)], timeout)
    counts = {}
    for line in proc.stdout.splitlines():
        if line.startswith("field-targets "):
            rank, size, *numbers = map(int, line.split()[1:])
            assert size == ranks, line
            counts[rank] = tuple(numbers)
    return proc, counts


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


# -- growth rates of the finite-volume semi-discretization --------------------------------
def semi_discrete_rates(fvs, y, eps: float = 1e-6) -> list[float]:
    """Rayleigh quotients ``<L' y, y> / <y, y>`` (area-weighted) of the finite-volume
    operators ``fvs`` (one mesh, one field), linearized at the uniform density in the
    direction of the relative perturbation ``y`` (cell values): the growth rate of each
    semi-discretization, free of any time error. Central differences at ``+-eps`` (the face
    reconstructions are odd in the perturbation; upwinding by the sign of the velocity
    leaves an ``O(eps)`` term, ~4e-8 relative at 1e-6); the edge velocities are computed once."""
    mesh = fvs[0].mesh
    rho0 = np.full(mesh.n_cells, 1.0 / mesh.total_measure)
    plus, minus = rho0 * (1 + eps * y), rho0 * (1 - eps * y)
    up, um = fvs[0].normal_velocity(plus), fvs[0].normal_velocity(minus)
    out = []
    for fv in fvs:
        d = (fv.rhs(plus, up)[0] - fv.rhs(minus, um)[0]) / (2 * eps * rho0)
        out.append(float((d * y * mesh.areas).sum() / (y * y * mesh.areas).sum()))
    return out


def observed_orders(errors) -> np.ndarray:
    """``log2(e[:-1] / e[1:])`` of errors over meshes refined by 2 (in h) each time."""
    e = np.abs(np.asarray(errors, dtype=float))
    return np.log2(e[:-1] / e[1:])

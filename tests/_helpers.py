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


# -- exact fields of smooth densities on S^2 (Funk--Hecke), independent of every backend --
def sphere_grid(n_theta: int = 64, n_phi: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Gauss--Legendre in cos(theta) times the trapezoidal rule in phi: points ``(n, 3)``
    and weights summing to 4 pi, exact for spherical polynomials of degree below
    ``min(2 n_theta, n_phi)`` (to round-off for the kernels below: measured 4e-15)."""
    from numpy.polynomial.legendre import leggauss

    t, wt = leggauss(n_theta)
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    s = np.sqrt(1 - t**2)
    pts = np.stack([np.outer(s, np.cos(phi)), np.outer(s, np.sin(phi)), np.outer(t, np.ones(n_phi))], axis=-1)
    return pts.reshape(-1, 3), np.outer(wt, np.full(n_phi, 2 * np.pi / n_phi)).ravel()


_B = np.array([0.48, -0.6, 0.64])
#: ``(degree, p, grad p)`` of homogeneous harmonic polynomials: on the sphere p is a
#: spherical harmonic of that degree, and ``grad_S p = grad p - l p x`` (Euler).
HARMONICS = (
    (1, lambda x: x @ _B, lambda x: np.broadcast_to(_B, x.shape)),
    (2, lambda x: x[:, 0] * x[:, 1], lambda x: np.stack([x[:, 1], x[:, 0], 0 * x[:, 0]], axis=1)),
    (3, lambda x: x[:, 0] * x[:, 1] * x[:, 2],
     lambda x: np.stack([x[:, 1] * x[:, 2], x[:, 0] * x[:, 2], x[:, 0] * x[:, 1]], axis=1)),
)
AMPLITUDES = (0.4, 0.8, 1.0)


def smooth_density(y: np.ndarray) -> np.ndarray:
    """``(1 + sum_l a_l p_l(y)) / (4 pi)``: positive, mass 1, degrees 1, 2 and 3."""
    return (1 + sum(a * p(y) for a, (_, p, _) in zip(AMPLITUDES, HARMONICS))) / (4 * np.pi)


def smooth_measure() -> tuple[np.ndarray, np.ndarray]:
    """:func:`smooth_density` as point masses on :func:`sphere_grid`."""
    y, w = sphere_grid()
    return y, w * smooth_density(y)


def exact_sphere_field(x, beta: float, c: float, R, V, normalized: bool) -> np.ndarray:
    """The attention field of :func:`smooth_density` at ``x`` for ``Q^T K = c R`` (R a
    rotation) and any V, from Funk--Hecke (``int e^{s <x, z>} p_l(z) dsigma(z) = 4 pi i_l(s)
    p_l(x)`` for unit x, ``i_l(s |x|) p_l(x / |x|)`` off the sphere): with ``s = beta c``,
    ``H(x) = i_0(s) + sum_l a_l i_l(s) p_l(R^T x)`` is ``int e^{beta <Qx, Ky>} rho dsigma``
    and ``V R^T grad H(x) / s`` is the numerator ``int e^{beta <Qx, Ky>} V y rho dsigma``."""
    from scipy.special import spherical_in

    x, R, V = (np.asarray(a, dtype=float) for a in (x, R, V))
    s = beta * c
    xr = x @ R  # rows R^T x
    if s == 0:  # consensus: int y rho = a_1 R b / 3 (only degree 1 has a first moment)
        H = np.ones(len(x))
        N = np.tile(V @ R.T @ (AMPLITUDES[0] * (R @ _B) / 3), (len(x), 1))
    else:
        H = np.full(len(x), spherical_in(0, s))
        G = s * spherical_in(0, s, derivative=True) * x
        for a, (l, p, grad) in zip(AMPLITUDES, HARMONICS):
            pr, gr = p(xr), grad(xr) @ R.T  # p(R^T x) and its gradient R grad p(R^T x)
            H = H + a * spherical_in(l, s) * pr
            G = G + a * (s * spherical_in(l, s, derivative=True) * pr[:, None] * x
                         + spherical_in(l, s) * (gr - l * pr[:, None] * x))
        N = (G @ R) @ V.T / s  # rows V R^T grad H / s
    v = N / H[:, None] if normalized else N
    return v - np.sum(v * x, axis=1, keepdims=True) * x


# -- a communicator without MPI --------------------------------------------------------------
class FakeComm:
    """The parts of a communicator a Distributor / Partition's construction uses: rank ``rank``
    of ``size`` (no MPI)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

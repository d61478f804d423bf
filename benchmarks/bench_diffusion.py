"""Cost (and, with ``--accuracy``, the measured orders) of the diffusion operator of
:mod:`meanfield.pde.diffusion`.

Usage: ``python benchmarks/bench_diffusion.py [--levels 3 4 5 6] [--circle 1000 10000 100000]
[--accuracy]``

Cost table, per mesh: operator nonzeros, time to build the operator (quadratic
reconstructions, nested-dissection ordering), to factorize ``I - gamma dt L`` (SuperLU), one
solve with the factors, one solve of rough (uniform random) data at a ``dt`` 10 % larger by GMRES
preconditioned with those factors (iterations in brackets), one SDIRK2 step with cached factors, and the factors'
nonzeros. ``dt = 0.01``, coefficient 0.05 (``sigma = 0.32``).

Accuracy tables (``--accuracy``), ``l = 3`` harmonic, unit coefficient: per mesh family and
level, the flux error per unit length (max and rms over the edges, relative to the largest
normal derivative), the cell residual ``L avg(Y) + l(l+1) avg(Y)`` (max and rms, relative to
``l(l+1) max|avg(Y)|``), the error of the solution of ``(I - L) u = (1 + l(l+1)) avg(Y)``
(max and rms, relative) and of the discrete eigenvalues near ``-l(l+1)``, ``l = 1, 2``; then
the observed orders ``log2(e_L / e_{L+1})``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from _machine import cpu_name, time_call, usable_cores
from meanfield.geometry.mesh import CircleMesh
from meanfield.geometry.sphere import latitude_longitude, load_icosahedral, perturbed_icosahedral
from meanfield.pde import diffusion as dif

COEFFICIENT = 0.05
DT = 0.01


def cost_row(name: str, mesh, seconds: float) -> None:
    t0 = time.perf_counter()
    D = dif.Diffusion(mesh, COEFFICIENT, reuse=dif.REUSE)  # builds the operators of the mesh
    build = time.perf_counter() - t0
    a = dif.GAMMA * DT
    rho = 1.0 + 0.5 * mesh.centers[:, 0]
    t0 = time.perf_counter()
    lu = D._factorization("high", a)
    factor = time.perf_counter() - t0
    solve = time_call(lambda: lu.solve(rho), seconds)
    D.implicit_step(rho, DT)
    step = time_call(lambda: D.implicit_step(rho, DT), seconds)
    before = D.stats["gmres_iterations"]
    rough = np.random.default_rng(0).uniform(size=mesh.n_cells)
    t0 = time.perf_counter()
    D.solve(rough, 1.1 * a)
    gmres = time.perf_counter() - t0
    its = D.stats["gmres_iterations"] - before
    fill = lu.lu.L.nnz + lu.lu.U.nnz
    print(f"{name:>14} {mesh.n_cells:8d} {D.matrix.nnz:9d} {build:8.2f} {factor * 1e3:9.1f} "
          f"{solve * 1e3:8.2f} {gmres * 1e3:8.1f} ({its:2d}) {step * 1e3:8.2f} {fill:10d}")


def harmonic3(rotation):
    """``p = u v w`` (``(u, v, w) = R x``): a degree-3 harmonic, and its surface gradient."""

    def p(x):
        u = x @ rotation.T
        return u[:, 0] * u[:, 1] * u[:, 2]

    def grad(x):
        u = x @ rotation.T
        g = np.stack([u[:, 1] * u[:, 2], u[:, 0] * u[:, 2], u[:, 0] * u[:, 1]], axis=1) @ rotation
        return g - 3 * p(x)[:, None] * x

    return p, grad


def exact_fluxes(mesh, grad, q: int = 6) -> np.ndarray:
    """``-int_e grad p . n ds`` per edge (Gauss--Legendre along the arc)."""
    s, w = np.polynomial.legendre.leggauss(q)
    s, w = (s + 1) / 2, w / 2
    a = mesh.vertices[mesh.edge_vertices[:, 0]]
    b = mesh.vertices[mesh.edge_vertices[:, 1]]
    th = mesh.edge_lengths[:, None]
    pts = (np.sin((1 - s)[None] * th)[..., None] * a[:, None] + np.sin(s[None] * th)[..., None] * b[:, None])
    pts /= np.linalg.norm(pts, axis=-1, keepdims=True)
    n = -np.cross(a, b)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    g = grad(pts.reshape(-1, 3)).reshape(pts.shape)
    return -np.sum(np.einsum("eqd,ed->eq", g, n) * w[None], axis=1) * mesh.edge_lengths


def accuracy_row(mesh, rotation, which: str = "high") -> list[float]:
    p, grad = harmonic3(rotation)
    avg = mesh.cell_averages(p, degree=10)
    D = dif.Diffusion(mesh, 1.0)
    F = D.fluxes if which == "high" else D.low_fluxes
    L = D.matrix if which == "high" else D.low_matrix
    exact = exact_fluxes(mesh, grad)
    gmax = np.abs(exact / mesh.edge_lengths).max()
    ferr = (F @ avg - exact) / mesh.edge_lengths
    a = mesh.areas
    rms = lambda x: float(np.sqrt(np.sum(a * x**2) / a.sum()))  # noqa: E731
    res = L @ avg + 12 * avg
    u = spla.splu((sp.identity(mesh.n_cells, format="csc") - L).tocsc()).solve(13 * avg)
    row = [np.abs(ferr).max() / gmax, np.sqrt(np.mean(ferr**2)) / gmax,
           np.abs(res).max() / (12 * np.abs(avg).max()), rms(res) / (12 * np.abs(avg).max()),
           np.abs(u - avg).max() / np.abs(avg).max(), rms(u - avg) / np.abs(avg).max()]
    if which == "high":
        for l in (1, 2):
            ev = spla.eigs(L.tocsc(), k=2 * l + 1, sigma=-l * (l + 1) + 0.01, return_eigenvectors=False)
            row.append(np.abs(ev + l * (l + 1)).max() / (l * (l + 1)))
    return row


def accuracy(levels) -> None:
    rotation = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]
    cols = ["flux max", "flux rms", "resid max", "resid rms", "sol max", "sol rms", "eig l=1", "eig l=2"]
    families = {
        "icosahedral": [(f"level {L}", lambda L=L: load_icosahedral(L)) for L in levels],
        "perturbed 0.3": [(f"level {L}", lambda L=L: perturbed_icosahedral(L, 0.3, seed=L)) for L in levels],
        "lat-lon": [(f"{n}x{2 * n}", lambda n=n: latitude_longitude(n, 2 * n)) for n in (8, 16, 32, 64)],
        "icosahedral, two-point": [(f"level {L}", lambda L=L: load_icosahedral(L)) for L in levels],
    }
    for family, meshes in families.items():
        which = "low" if "two-point" in family else "high"
        print(f"\n# {family}{' (the limiter fallback, not the Laplacian)' if which == 'low' else ''}")
        ncol = len(cols) if which == "high" else 6
        print(f"{'mesh':>10} {'cells':>7} " + " ".join(f"{c:>9}" for c in cols[:ncol]))
        errs = []
        for name, make in meshes:
            mesh = make()
            errs.append(accuracy_row(mesh, rotation, which))
            print(f"{name:>10} {mesh.n_cells:7d} " + " ".join(f"{e:9.2e}" for e in errs[-1]))
        e = np.array(errs)
        orders = np.log2(e[:-1] / e[1:])
        for k, o in enumerate(orders):
            print(f"{'order':>10} {'':>7} " + " ".join(f"{x:9.2f}" for x in o))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5, 6])
    p.add_argument("--circle", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--accuracy", action="store_true", help="also print the accuracy tables (levels 2-5)")
    args = p.parse_args(argv)
    print(f"# {cpu_name()}, {usable_cores()} cores usable ({os.cpu_count()} visible), numpy {np.__version__}, "
          f"coefficient {COEFFICIENT}, dt {DT} (SDIRK2: a = gamma dt)")
    print(f"{'mesh':>14} {'cells':>8} {'nnz(L)':>9} {'build s':>8} {'factor ms':>9} {'solve ms':>8} "
          f"{'gmres ms (its)':>14} {'step ms':>8} {'fill':>10}")
    for level in args.levels:
        cost_row(f"icosahedral {level}", load_icosahedral(level), args.seconds)
    for cells in args.circle:
        cost_row(f"circle {cells}", CircleMesh(cells), args.seconds)
    if args.accuracy:
        accuracy([2, 3, 4, 5])


if __name__ == "__main__":
    main()

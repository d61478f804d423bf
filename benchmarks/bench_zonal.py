"""The zonal PDE: step cost against the number of bands and d, and the accuracy of the linear rates.

Usage: ``python benchmarks/bench_zonal.py [--cells 64 256 1024 2048] [--d 3 4 8 32] [--beta 4]
[--seconds 1] [--accuracy]``

Timing: SA, ``Q = K = V = I``, a smooth zonal density (``exp(2 x_1)``), MUSCL, SSP-RK3 (three
field evaluations per step). ``setup`` is the first field evaluation, which builds the three
``(edges x bands)`` kernel matrices of the edge plan (``band_points = 4`` rings per band, each
ring a Bessel evaluation); ``step`` is one whole adaptive step after that (:meth:`Simulation.step`:
three matrix--vector products per kernel and stage, the reconstruction, the fluxes), and
``steps to t=1`` the number of adaptive steps the CFL rule takes to reach ``t = 1`` (the bands near
the equator have width ``h = pi / N``, so it grows like ``N``). BLAS runs on one thread.

``--accuracy``: the table of docs/zonal.md: the measured growth rate of the Gegenbauer coefficient
of ``(1 + 1e-6 C_l) / |S^{d-1}|`` over ``t in [0, min(1, 3 / |rate|)]`` against :func:`growth_rate`, relative
error and observed order, for ``N = 16, 32, 64, 128``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from _machine import cpu_name, time_call, usable_cores
from meanfield.fields.attention import AttentionModel, growth_rate
from meanfield.fields.zonal import zonal_velocity
from meanfield.geometry.zonal import ZonalDiffusion, ZonalMesh
from meanfield.pde.solver import Simulation, State


def timing(cells, dims, beta, seconds):
    print(f"# zonal PDE step cost, SA beta = {beta}, MUSCL + SSP-RK3, {cpu_name()}, {usable_cores()} cores")
    print(f"{'d':>4} {'N':>6} {'setup s':>9} {'step ms':>9} {'us/band':>8} {'steps to t=1':>13}")
    for d in dims:
        for n in cells:
            mesh = ZonalMesh(d, n)
            model = AttentionModel(d, beta)
            rho = mesh.cell_averages(lambda x: np.exp(2.0 * x[:, 0]), 8)
            rho /= np.dot(rho, mesh.areas)
            t0 = time.perf_counter()
            sim = Simulation(mesh, model, field=zonal_velocity(model, mesh))
            sim.fv.rhs(rho)  # builds the kernels of the edge plan
            setup = time.perf_counter() - t0

            def one():
                sim.step(State(0.0, rho.copy()))

            step = time_call(one, seconds)
            dt = sim.step(State(0.0, rho.copy()))
            print(f"{d:>4} {n:>6} {setup:>9.3f} {1e3 * step:>9.3f} {1e6 * step / n:>8.2f} {math.ceil(1.0 / dt):>13}")


def measured_rate(d, cells, l, beta, normalized, sigma=0.0, eps=1e-6):
    """The growth rate of the Gegenbauer coefficient over ``[0, T]``, ``T = min(1, 3 / |rate|)``
    (so that ``eps e^{rate T}`` stays linear), steps at most 0.05 (0.01 with noise: the
    splitting's time error)."""
    mesh = ZonalMesh(d, cells)
    model = AttentionModel(d, beta, normalized=normalized)
    rate = abs(growth_rate(l, beta, d, normalized) - 0.5 * sigma**2 * l * (l + d - 2))
    T = min(1.0, 3.0 / max(rate, 1e-300))
    sim = Simulation(mesh, model, field=zonal_velocity(model, mesh), dt_max=0.01 if sigma else 0.05)
    if sigma:
        sim.noise, sim.diffusion = sigma, ZonalDiffusion(mesh, 0.5 * sigma**2)
    st = State(0.0, mesh.cell_averages(lambda x: (1 + eps * mesh.gegenbauer(l, mesh.polar_angle(x))) / mesh.total_measure, 8))
    a0 = mesh.gegenbauer_coefficient(st.rho, l)
    sim.advance(st, T)
    return math.log(mesh.gegenbauer_coefficient(st.rho, l) / a0) / T


def accuracy():
    cells = (16, 32, 64, 128)
    print("# relative error of the measured Gegenbauer growth rate (orders in brackets)")
    print(f"{'d':>3} {'l':>2} {'beta':>5} {'sigma':>5} {'kind':>4} {'exact':>10} " + " ".join(f"{'N=' + str(n):>16}" for n in cells))
    for d, l, beta, sigma in [(4, 2, 3.0, 0.0), (5, 1, 1.0, 0.0), (5, 3, 6.0, 0.0), (8, 2, 4.0, 0.0), (8, 4, 9.0, 0.0),
                              (4, 2, 3.0, 0.6), (8, 2, 4.0, 0.5)]:
        for normalized in (True, False):
            exact = growth_rate(l, beta, d, normalized) - 0.5 * sigma**2 * l * (l + d - 2)
            errs = [abs(measured_rate(d, n, l, beta, normalized, sigma) / exact - 1) for n in cells]
            cols = [f"{errs[0]:>16.2e}"] + [f"{e:>9.2e} ({math.log2(p / e):4.2f})" for p, e in zip(errs[:-1], errs[1:])]
            kind = "SA" if normalized else "USA"
            print(f"{d:>3} {l:>2} {beta:>5g} {sigma:>5g} {kind:>4} {exact:>10.5f} " + " ".join(cols))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[64, 256, 1024, 2048])
    ap.add_argument("--d", type=int, nargs="+", default=[3, 4, 8, 32])
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--accuracy", action="store_true", help="print the rate accuracy table instead")
    args = ap.parse_args()
    if args.accuracy:
        accuracy()
    else:
        timing(args.cells, args.d, args.beta, args.seconds)


if __name__ == "__main__":
    main()

"""Time per SSP-RK3 step of the circle solver and throughput of the direct field.

Usage: ``python benchmarks/bench_circle.py [--cells 1024 8192 ...] [--seconds 3]``

Prints a table: cells, scheme, time per step (3 field evaluations + fluxes), field
throughput in million (target, source) pairs per second (one process, BLAS pinned to one
thread), and the share of the step spent in the field.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import meanfield as mf
from _machine import cpu_name, time_call, usable_cores


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--beta", type=float, default=9.0)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    print(f"# {cpu_name()}, {usable_cores()} cores usable ({os.cpu_count()} visible), one process, "
          f"numpy {np.__version__}, SA beta={args.beta}")
    print(f"{'cells':>7} {'scheme':>7} {'ms/step':>9} {'field ms':>9} {'Mpairs/s':>9} {'field %':>8}")
    for cells in args.cells:
        mesh = mf.CircleMesh(cells)
        model = mf.AttentionModel(d=2, beta=args.beta)
        rho = (1 + 0.3 * np.cos(4 * mesh.angles)) / (2 * np.pi)
        for scheme in ("upwind", "muscl"):
            sim = mf.Simulation(mesh, model, scheme=scheme)
            state = mf.State(0.0, rho.copy())
            t_step = time_call(lambda: sim.step(mf.State(0.0, rho.copy())), args.seconds)
            t_field = time_call(lambda: sim.fv.normal_velocity(state.rho), args.seconds)
            pairs = mesh.n_edges * mesh.n_cells
            print(f"{cells:7d} {scheme:>7} {t_step * 1e3:9.2f} {t_field * 1e3:9.2f} "
                  f"{pairs / t_field / 1e6:9.0f} {300 * t_field / t_step:7.0f}%")


if __name__ == "__main__":
    main()

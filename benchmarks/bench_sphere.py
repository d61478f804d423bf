"""Time per SSP-RK3 step of the sphere solver and throughput of the direct field.

Usage: ``python benchmarks/bench_sphere.py [--levels 3 4 5] [--seconds 3] [--beta 9]``

For each icosahedral level prints: cells, edges, time per SSP-RK3 step (muscl, SA, direct
backend: 3 field evaluations at the edge midpoints + reconstruction and fluxes), time of
one field evaluation at the edge midpoints from all cell masses, the field's throughput
in million (target, source) pairs per second per core (one process; BLAS is pinned to one
thread inside the field), and the share of the step spent in the field. The first line
names the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import meanfield as mf
from _machine import time_call, cpu_name, usable_cores
from meanfield.initial import real_sph_harm
from meanfield.geometry.sphere import load_icosahedral


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5])
    p.add_argument("--beta", type=float, default=9.0)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    print(f"# {cpu_name()}, {usable_cores()} cores usable ({os.cpu_count()} visible), one process, "
          f"numpy {np.__version__}, SA beta={args.beta}, muscl, direct backend, 1 point per edge")
    print(f"{'level':>5} {'cells':>7} {'edges':>7} {'ms/step':>9} {'field ms':>9} {'Mpairs/s':>9} {'field %':>8}")
    model = mf.AttentionModel(d=3, beta=args.beta)
    for level in args.levels:
        mesh = load_icosahedral(level)
        # a smooth, strictly positive density (empty cells would be skipped by the field)
        rho = (1 + 0.3 * real_sph_harm(4, 2, mesh.centers)) / (4 * np.pi)
        sim = mf.Simulation(mesh, model, scheme="muscl", backend="direct")
        t_step = time_call(lambda: sim.step(mf.State(0.0, rho.copy())), args.seconds)
        t_field = time_call(lambda: sim.fv.normal_velocity(rho), args.seconds)
        targets = mesh.edge_points.shape[0] * mesh.edge_points.shape[1]
        pairs = targets * mesh.n_cells
        print(f"{level:5d} {mesh.n_cells:7d} {mesh.n_edges:7d} {t_step * 1e3:9.1f} {t_field * 1e3:9.1f} "
              f"{pairs / t_field / 1e6:9.0f} {300 * t_field / t_step:7.0f}%", flush=True)


if __name__ == "__main__":
    main()

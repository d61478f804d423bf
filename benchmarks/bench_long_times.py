"""Steps and wall time to ``t = 20`` of the explicit SSPRK3 solver against the linearly
implicit, error-controlled stepper (:class:`~meanfield.pde.implicit.ImplicitSimulation`).

Usage: ``python benchmarks/bench_long_times.py [--betas 4 6] [--t-end 20] [--rtol 1e-3]
[--atol 1e-6] [--skip-explicit]``

The case ``cases/circle_usa_energy.toml`` (USA, 512 cells, five modes of amplitude 0.01) at
``model.beta = --betas``. Per run: accepted steps, rejected tries, wall seconds, the final
clusters (:func:`meanfield.find_clusters`: masses and centre angles) and, for the implicit
stepper, the last step over the forward-Euler CFL bound of its velocity. The explicit run is
the case as written (SSPRK3, MUSCL, ``cfl = 0.4``, ``rate_cfl = 0.1``); it takes minutes to
``t = 20`` (``--skip-explicit`` leaves it out). The first line names the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import meanfield as mf
from meanfield.io.case import load_case
from meanfield.pde.implicit import ImplicitSimulation
from meanfield.run import build_mesh, build_model, build_simulation

from _machine import cpu_name, usable_cores

CASE = Path(__file__).resolve().parents[1] / "cases" / "circle_usa_energy.toml"


def clusters(mesh, rho) -> str:
    m, c = mf.find_clusters(mesh, rho)
    return " ".join(f"{mi:.3f}@{a:+.3f}" for mi, a in zip(m, np.arctan2(c[:, 1], c[:, 0])))


def run(sim, state, t_end: float) -> tuple[float, int]:
    start = time.perf_counter()
    sim.advance(state, t_end)
    return time.perf_counter() - start, state.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--betas", type=float, nargs="+", default=[4.0, 6.0])
    ap.add_argument("--t-end", type=float, default=20.0)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--atol", type=float, default=1e-6)
    ap.add_argument("--skip-explicit", action="store_true")
    args = ap.parse_args()
    print(f"# {cpu_name()}, {usable_cores()} usable cores; t_end = {args.t_end:g}")
    print(f"{'beta':>5} {'stepper':>9} {'steps':>8} {'rejected':>8} {'wall s':>8} {'dt/cfl':>9}  final clusters (mass@angle)")
    for beta in args.betas:
        overrides = [f"model.beta={beta}", f"solver.t_end={args.t_end}"]
        case = load_case(CASE, overrides)
        mesh = build_mesh(case)
        sim = ImplicitSimulation(mesh, build_model(case, mesh.d), rtol=args.rtol, atol=args.atol)
        state = mf.State(0.0, mf.project(mesh, case["initial"]))
        wall, steps = run(sim, state, args.t_end)
        print(f"{beta:5g} {'implicit':>9} {steps:8d} {sim.rejected:8d} {wall:8.2f} {sim.last['cfl_ratio']:9.3g}  "
              f"{clusters(mesh, state.rho)}", flush=True)
        if not args.skip_explicit:
            sim, state = build_simulation(case)
            wall, steps = run(sim, state, args.t_end)
            print(f"{beta:5g} {'ssprk3':>9} {steps:8d} {sim.rejected:8d} {wall:8.2f} {'':>9}  "
                  f"{clusters(mesh, state.rho)}", flush=True)


if __name__ == "__main__":
    main()

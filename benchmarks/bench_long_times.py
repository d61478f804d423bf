"""Steps and wall time to ``t = 20`` of the explicit SSPRK3 solver against the linearly
implicit, error-controlled stepper (:class:`~meanfield.pde.implicit.ImplicitSimulation`).

Usage: ``python benchmarks/bench_long_times.py [--betas 4 6] [--t-end 20] [--rtol 1e-3]
[--atol 1e-6] [--skip-explicit]``

The case ``cases/circle_usa_energy.toml`` (USA, 512 cells, five modes of amplitude 0.01) at
``model.beta = --betas``. Per run: accepted steps, rejected tries, wall seconds, the final
clusters (:func:`meanfield.find_clusters`: masses and centre angles) and, for the implicit
stepper (with the upwind and with the MUSCL face values), the last step over the
forward-Euler CFL bound of its velocity. The explicit run is
the case as written (SSPRK3, MUSCL, ``cfl = 0.4``, ``rate_cfl = 0.1``); it takes minutes to
``t = 20`` (``--skip-explicit`` leaves it out). The first line names the machine.

``--last-merger``: instead, the PDE of ``cases/metastable_merging.py`` (shifted USA, beta 5,
512 cells, noise 0.03, its perturbed uniform start, outputs 30 per decade) until one
cluster is left, with the implicit MUSCL and upwind steppers and with SSPRK3 + MUSCL (``cfl 0.4``,
measured 24 minutes; ``--skip-explicit`` leaves it out): steps, wall seconds and the merger
times.
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

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "cases" / "circle_usa_energy.toml"


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
    ap.add_argument("--last-merger", action="store_true",
                    help="the metastable case's PDE to its last merger (see the module docstring)")
    args = ap.parse_args()
    if args.last_merger:
        return last_merger(args.skip_explicit)
    print(f"# {cpu_name()}, {usable_cores()} usable cores; t_end = {args.t_end:g}")
    print(f"{'beta':>5} {'stepper':>15} {'steps':>8} {'rejected':>8} {'wall s':>8} {'dt/cfl':>9}  final clusters (mass@angle)")
    for beta in args.betas:
        overrides = [f"model.beta={beta}", f"solver.t_end={args.t_end}"]
        case = load_case(CASE, overrides)
        mesh = build_mesh(case)
        for scheme in ("upwind", "muscl"):
            sim = ImplicitSimulation(mesh, build_model(case, mesh.d), scheme=scheme, rtol=args.rtol, atol=args.atol)
            state = mf.State(0.0, mf.project(mesh, case["initial"]))
            wall, steps = run(sim, state, args.t_end)
            print(f"{beta:5g} {'implicit ' + scheme:>15} {steps:8d} {sim.rejected:8d} {wall:8.2f} "
                  f"{sim.last['cfl_ratio']:9.3g}  {clusters(mesh, state.rho)}", flush=True)
        if not args.skip_explicit:
            sim, state = build_simulation(case)
            wall, steps = run(sim, state, args.t_end)
            print(f"{beta:5g} {'ssprk3 muscl':>15} {steps:8d} {sim.rejected:8d} {wall:8.2f} {'':>9}  "
                  f"{clusters(mesh, state.rho)}", flush=True)


def last_merger(skip_explicit: bool) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "cases"))
    import metastable_merging as case

    print(f"# {cpu_name()}, {usable_cores()} usable cores; cases/metastable_merging.py's PDE "
          f"(beta 5, 512 cells, noise 0.03) to its last merger")
    print(f"{'stepper':>16} {'steps':>8} {'wall s':>8}  mergers (t_prev .. t: masses)")
    for stepper in ["implicit", "implicit_upwind"] + ([] if skip_explicit else ["ssprk3"]):
        start = time.perf_counter()
        times, _, tracker, steps = case.run_pde(5.0, 512, 0.05, 2, 1e5, noise=0.03, stepper=stepper)
        wall = time.perf_counter() - start
        events = "; ".join(f"{ev.t_prev:.4g}..{ev.t:.4g}: {ev.mass_a:.3f}+{ev.mass_b:.3f}" for ev in tracker.merges)
        label = {"implicit": "implicit muscl", "implicit_upwind": "implicit upwind", "ssprk3": "ssprk3 muscl"}[stepper]
        print(f"{label:>16} {steps:8d} {wall:8.1f}  {events}", flush=True)


if __name__ == "__main__":
    main()

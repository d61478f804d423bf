"""A whole finite-volume run on the sphere at the default settings, direct against spectral.

Usage: ``python benchmarks/bench_default_spectral.py [--level 5] [--t-end 0.5] [--kappa 2]
[--tolerance T] [--states 5 6 7] [--discretization] [--skip-direct]``

The case is ``cases/sphere_sa_clusters.toml`` (SA, beta = 9, muscl, SSP-RK3) on icosahedral
level ``--level`` from a von Mises--Fisher start ``exp(kappa <x, c>)``, ``c ~ (1, 0.3, 0.2)``,
to ``--t-end``, outputs written to a temporary directory as ``meanfield run --set
output.plots=false`` writes them (snapshots, VTK). ``solver.tolerance`` is left at its default
unless ``--tolerance`` is given. Printed:

* the whole run, ``backend = "direct"`` and ``"spectral"``: wall and CPU seconds (the CPU
  time of this process is less disturbed by other jobs on a shared machine), field
  evaluations, SA targets computed by the split (heavy sources direct, the light rest
  transformed) and sent to the direct fallback, and the speed-up;
* the final densities of the two runs: max |rho_spectral - rho_direct| / max rho;
* one field evaluation (edge midpoints from cell centres) on the initial and final states
  of the spectral run, and on the states at the times ``--states`` (a spectral run of the
  same case continued to those times, where the density has collapsed into one cluster):
  time spectral and direct, split and fallback counts, and the error against the direct
  sums, max |X - X_direct| / |v|;
* ``--discretization``: the same spectral run one level finer, its cell masses summed onto
  this level's cells (the children of triangle i are 4i..4i+3), against this level:
  max |rho_fine - rho| / max rho, the discretization error that the field error is to be
  compared with.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import meanfield as mf
from _machine import cpu_name, usable_cores
from meanfield.fields.spectral import SphereSpectralField
from meanfield.io.case import SCHEMA, load_case
from meanfield.pde.solver import make_field
from meanfield.run import build_mesh, run_case

CASE = Path(__file__).resolve().parent.parent / "cases" / "sphere_sa_clusters.toml"
COUNT = {"calls": 0, "targets": 0, "split": 0, "fallback": 0}


def _counting(evaluate):
    def wrapper(self, targets, *args, **kwargs):
        out = evaluate(self, targets, *args, **kwargs)
        COUNT["calls"] += 1
        COUNT["targets"] += int(np.shape(getattr(targets, "points", targets))[0])
        COUNT["split"] += getattr(self, "last_split_count", 0)  # absent before the split existed
        COUNT["fallback"] += self.last_fallback_count
        return out

    return wrapper


SphereSpectralField.evaluate = _counting(SphereSpectralField.evaluate)


def case_for(args, backend: str, level: int, t_end: float, every: float | None = None) -> dict:
    sets = [f"domain.mesh=icosahedral:{level}", "initial.kind=vmf", "initial.centers=[[1.0, 0.3, 0.2]]",
            f"initial.kappas=[{args.kappa}]", f"solver.t_end={t_end}", f"output.every={every or t_end / 2}",
            f"solver.backend={backend}", "output.plots=false"]
    if args.tolerance is not None:
        sets.append(f"solver.tolerance={args.tolerance}")
    return load_case(CASE, sets)


def whole_run(args, backend: str, level: int, t_end: float):
    """``(result, wall s, cpu s, counts)`` of one run written to a temporary directory."""
    case = case_for(args, backend, level, t_end)
    for key in COUNT:
        COUNT[key] = 0
    with tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_case(case, out_dir=Path(out) / "run")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return result, wall, cpu, dict(COUNT), case


def field_row(label, case, masses):
    """One field evaluation at the default (or given) tolerance against the direct sums."""
    mesh = build_mesh(case)
    model = mf.AttentionModel(d=3, beta=case["model"]["beta"])
    x, y = mesh.edge_points[:, 0, :], mesh.centers
    field = make_field(model, "spectral", case["solver"]["tolerance"], n_targets=len(x), n_sources=len(y))
    tx, ty = field.plan(x), field.plan(y)
    field(tx, ty, masses)
    start = time.process_time()
    got = field(tx, ty, masses)
    t_spec = time.process_time() - start
    start = time.process_time()
    ref = mf.DirectField(model)(x, y, masses)
    t_dir = time.process_time() - start
    err = float(np.abs(got - ref).max())
    print(f"{label:>22} {t_spec * 1e3:10.1f} {t_dir * 1e3:10.1f} {t_dir / t_spec:8.0f}x "
          f"{getattr(field, 'last_split_count', 0):7d} {field.last_fallback_count:7d} {len(x):8d} {err:10.1e}")
    return err


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--level", type=int, default=5)
    p.add_argument("--t-end", type=float, default=0.5)
    p.add_argument("--kappa", type=float, default=2.0)
    p.add_argument("--tolerance", type=float, default=None, help="solver.tolerance (default: the case default)")
    p.add_argument("--states", type=float, nargs="*", default=[5.0, 6.0, 7.0],
                   help="later times (multiples of 0.5) whose (clustered) states get a field evaluation (none: skip)")
    p.add_argument("--discretization", action="store_true", help="also run one level finer (spectral)")
    p.add_argument("--skip-direct", action="store_true", help="no whole direct run")
    args = p.parse_args(argv)
    tol = args.tolerance if args.tolerance is not None else SCHEMA["solver"]["tolerance"].default
    print(f"# {cpu_name()}, {usable_cores()} cores usable ({os.cpu_count()} visible), one process, "
          f"numpy {np.__version__}; {CASE.name} on icosahedral:{args.level}, vMF kappa {args.kappa:g} start, "
          f"t_end {args.t_end:g}, solver.tolerance {tol:g}")
    runs = {}
    for backend in ("spectral",) if args.skip_direct else ("direct", "spectral"):
        runs[backend] = whole_run(args, backend, args.level, args.t_end)
    print(f"{'run':>10} {'wall s':>9} {'cpu s':>9} {'steps':>6} {'field calls':>11} {'targets':>10} "
          f"{'split':>9} {'fallback':>9}")
    for backend, (result, wall, cpu, count, _) in runs.items():
        print(f"{backend:>10} {wall:9.1f} {cpu:9.1f} {result.state.steps:6d} {count['calls']:11d} "
              f"{count['targets']:10d} {count['split']:9d} {count['fallback']:9d}")
    spectral, case = runs["spectral"][0], runs["spectral"][4]
    if "direct" in runs:
        direct = runs["direct"]
        print(f"speed-up of the whole run: {direct[1] / runs['spectral'][1]:.0f}x wall, "
              f"{direct[2] / runs['spectral'][2]:.0f}x cpu")
        diff = np.abs(spectral.state.rho - direct[0].state.rho).max() / direct[0].state.rho.max()
        print(f"final densities, spectral against direct: max |difference| / max rho = {diff:.1e}")
    mesh = build_mesh(case)
    print(f"{'field evaluation':>22} {'spec ms':>10} {'direct ms':>10} {'speed-up':>9} {'split':>7} "
          f"{'fallback':>7} {'targets':>8} {'error / |v|':>10}")
    field_row("initial state", case, spectral.snapshots[0][1] * mesh.areas)
    field_row(f"t = {args.t_end:g} (end)", case, spectral.state.rho * mesh.areas)
    if args.states:
        later = run_case(case_for(args, "spectral", args.level, max(args.states), every=0.5))
        for t, rho in later.snapshots:
            if any(abs(t - s) < 1e-9 for s in args.states):
                field_row(f"t = {t:g} (clustered)", case, rho * mesh.areas)
    if args.discretization:
        fine = run_case(case_for(args, "spectral", args.level + 1, args.t_end))
        coarse_masses = spectral.state.rho * mesh.areas
        fine_masses = (fine.state.rho * build_mesh(case_for(args, "spectral", args.level + 1, args.t_end)).areas)
        restricted = fine_masses.reshape(-1, 4).sum(axis=1) / mesh.areas
        rel = np.abs(restricted - spectral.state.rho).max() / spectral.state.rho.max()
        print(f"discretization: level {args.level + 1} summed onto level {args.level} against level "
              f"{args.level}: max |difference| / max rho = {rel:.1e} (masses {np.abs(fine_masses.reshape(-1, 4).sum(axis=1) - coarse_masses).sum():.1e} in l1)")


if __name__ == "__main__":
    main()

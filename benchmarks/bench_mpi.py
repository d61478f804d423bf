"""Strong scaling of the MPI split, and a measured cost model per rank.

Usage: ``python benchmarks/bench_mpi.py [--ranks 1,2] [--level 5] [--particles 20000]
[--steps 2] [--predict]``

The script launches itself under ``mpiexec -n P`` (the one installed next to the Python
running it: the mpich wheel) for every P of ``--ranks`` and prints, after a line naming the
machine:

1. **Strong scaling.** Seconds per step (the slowest rank; after one untimed warm-up step)
   of (a) the finite-volume solver on icosahedral level ``--level`` (SA beta = 9, muscl,
   one point per edge, the *direct* backend: 3 field evaluations per step, each at the
   rank's edge midpoints against all cells) and (b) the particle system on S^2 (RK4,
   ``--particles`` uniform particles, direct backend: 4 evaluations per step), the speed-up
   over one rank and the parallel efficiency.
2. **Cost per rank.** The same steps split into computation and communication: the
   seconds spent inside the collectives (``Allgatherv`` of the densities / particle
   velocities, ``Allreduce`` of the step bounds) counted by the
   :class:`~meanfield.parallel.Distributor`, which includes waiting for slower ranks, and
   the rest. Also the field targets per rank (edge points of the owned cells, boundary edges
   counted on both sides) against the even share ``E / P``.
3. ``--predict``: the cost model fitted from (1)-(2) and an ``Allgatherv`` micro-benchmark,
   evaluated for icosahedral level 8 (1,310,720 cells, 1,966,080 edges) on 64 and 1024
   ranks, for the direct and the spectral backend. The target imbalance of the split is
   computed from the level-8 mesh itself; the network terms are ASSUMED values for a
   cluster interconnect (printed), since this machine has no network between ranks. It is a
   prediction, not a measurement.

On a machine with more cores pass e.g. ``--ranks 1,2,4,8,16``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import cpu_name, usable_cores  # noqa: E402

#: Assumed interconnect for the prediction (an HDR InfiniBand-class network).
NET_LATENCY_S = 2e-6
NET_BANDWIDTH_BPS = 12e9


# ------------------------------------------------------------------------------ worker
def _worker(args) -> None:
    import meanfield as mf
    from meanfield.parallel import Distributor, launched_under_mpi
    from meanfield.particles.system import ParticleState, ParticleSystem
    from meanfield.particles.sampling import sample
    from meanfield.pde.solver import Simulation, State, make_field
    from meanfield.geometry.sphere import load_icosahedral

    dist = Distributor() if launched_under_mpi() else None
    comm = dist.comm if dist is not None else None
    rank = dist.rank if dist is not None else 0
    size = dist.size if dist is not None else 1
    model = mf.AttentionModel(d=3, beta=9.0)
    result = {"ranks": size}

    def barrier():
        if comm is not None:
            comm.Barrier()

    def timed(step, steps):
        step()  # warm-up
        barrier()
        c0 = dist.comm_seconds if dist is not None else 0.0
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
        comm_s = ((dist.comm_seconds if dist is not None else 0.0) - c0) / steps
        walls = comm.allgather(wall) if comm is not None else [wall]
        comms = comm.allgather(comm_s) if comm is not None else [comm_s]
        return max(walls), comms

    if args.worker == "pde":
        mesh = load_icosahedral(args.level)
        sim = Simulation(mesh, model, scheme="muscl", backend="direct", dist=dist)
        c = mesh.centers
        rho = (1.0 + 0.05 * np.sin(3 * c[:, 0]) * np.cos(2 * c[:, 1])) / (4 * math.pi)
        state = State(0.0, rho / (rho @ mesh.areas))
        targets = sim.fv.n_targets
        all_targets = comm.allgather(targets) if comm is not None else [targets]
        wall, comms = timed(lambda: sim.step(state), args.steps)
        # the finite-volume part of a stage alone (reconstruction, fluxes, update), field given
        un = sim.fv.normal_velocity(state.rho)
        barrier()
        start = time.perf_counter()
        for _ in range(5):
            sim.fv.rhs(state.rho, un)
        fv_stage = (time.perf_counter() - start) / 5
        result.update(kind="pde", cells=mesh.n_cells, edges=mesh.n_edges, wall=wall, comm=comms,
                      targets=all_targets, fv_stage=fv_stage)
    elif args.worker == "particles":
        x, w = sample({"kind": "uniform"}, 3, args.particles, 7)
        field = make_field(model, "direct", dist=dist)
        system = ParticleSystem(field, integrator="rk4", dt=0.01)
        state = ParticleState.create(x, w)
        wall, comms = timed(lambda: system.step(state, math.inf), args.steps)
        result.update(kind="particles", n=args.particles, wall=wall, comm=comms)
    elif args.worker == "allgather":
        out = {}
        for n in (1 << 10, 1 << 14, 1 << 17, 1 << 20):
            local = np.ones(dist.counts(n)[rank])
            dist.allgather_rows(local, n)
            barrier()
            reps = 20 if n < (1 << 17) else 5
            start = time.perf_counter()
            for _ in range(reps):
                dist.allgather_rows(local, n)
            out[n] = (time.perf_counter() - start) / reps
        result.update(kind="allgather", seconds=out)
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def _launch(ranks: int, *args) -> dict:
    bindir = Path(sys.executable).parent
    mpiexec = shutil.which("mpiexec", path=str(bindir)) or shutil.which("mpiexec")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    cmd = [sys.executable, str(Path(__file__).resolve()), *map(str, args)]
    if ranks > 1:
        if mpiexec is None:
            raise SystemExit("mpiexec not found (pip install mpich)")
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# ------------------------------------------------------------------------------ driver
def _level8_imbalance(ranks_list) -> dict:
    """Largest number of edge targets on a rank over the even share E/P, level 8."""
    from meanfield.geometry.sphere import load_icosahedral

    mesh = load_icosahedral(8)
    n = mesh.n_cells
    out = {}
    for p in ranks_list:
        owner = np.minimum(np.arange(n) * p // n, p - 1)  # contiguous balanced runs (tree order)
        lo, hi = owner[mesh.edge_cells[:, 0]], owner[mesh.edge_cells[:, 1]]
        per_rank = np.bincount(lo, minlength=p) + np.bincount(hi, minlength=p, weights=(hi != lo))
        out[p] = float(per_rank.max() / (mesh.n_edges / p))
    return out, mesh.n_cells, mesh.n_edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--particles", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--predict", action="store_true")
    parser.add_argument("--worker", choices=("pde", "particles", "allgather"))
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    ranks_list = [int(r) for r in args.ranks.split(",")]
    print(f"# {cpu_name()}, {usable_cores()} usable cores; numpy {np.__version__}; one BLAS thread per rank")
    rows = {}
    for kind in ("pde", "particles"):
        for p in ranks_list:
            rows[kind, p] = _launch(p, "--worker", kind, "--level", args.level, "--particles", args.particles,
                                    "--steps", args.steps)
    print(f"\n## Strong scaling (seconds per step, slowest rank; direct backend, SA beta = 9)\n")
    print(f"| problem | ranks | s/step | speed-up | efficiency | comm s/step (mean over ranks) | comm share |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("pde", "particles"):
        base = rows[kind, ranks_list[0]]["wall"] * ranks_list[0]
        for p in ranks_list:
            r = rows[kind, p]
            label = (f"FV level {args.level} ({r['cells']} cells, {r['edges']} edges)" if kind == "pde"
                     else f"particles n = {r['n']} (RK4)")
            comm = float(np.mean(r["comm"]))
            speed = base / r["wall"]
            print(f"| {label} | {p} | {r['wall']:.3f} | {speed:.2f} | {speed / p:.2f} | {comm:.4f} | "
                  f"{comm / r['wall']:.1%} |")
    for p in ranks_list:
        r = rows["pde", p]
        share = r["edges"] / p
        print(f"\nFV split on {p} rank(s): edge targets per rank {r['targets']} (even share {share:.0f}; "
              f"largest {max(r['targets']) / share:.3f} x)")
    if not args.predict:
        return
    two = [p for p in ranks_list if p > 1]
    ag = _launch(max(2, two[0] if two else 2), "--worker", "allgather")["seconds"]
    sizes = np.array(sorted(int(k) for k in ag))
    secs = np.array([ag[str(k)] for k in sizes])
    slope, icpt = np.polyfit(sizes * 8.0, secs, 1)
    print(f"\n## Cost model\n\nAllgatherv on this machine (2 ranks, shared memory): "
          + ", ".join(f"{k} doubles {ag[str(k)] * 1e3:.3f} ms" for k in sizes)
          + f"; fit {icpt * 1e6:.1f} us + bytes / {1 / slope / 1e9:.2f} GB/s.")
    r1 = rows["pde", ranks_list[0]]
    stages = 3
    if ranks_list[0] != 1:
        raise SystemExit("--predict needs 1 in --ranks (the serial rates)")
    pairs = r1["edges"] * r1["cells"] * stages
    fv_cell = r1["fv_stage"] / r1["cells"]
    field_s = r1["wall"] - float(np.mean(r1["comm"])) - stages * r1["fv_stage"]
    rate = pairs / field_s
    print(f"Measured on one rank, level {args.level}: finite-volume update {r1['fv_stage'] * 1e3:.1f} ms per stage "
          f"({fv_cell * 1e9:.0f} ns per cell); direct field {field_s:.3f} s per step for {pairs:.3e} "
          f"(target, source) pairs -> {rate / 1e6:.0f} Mpairs/s per rank.")
    imbalance, n8, e8 = _level8_imbalance([64, 1024])
    from meanfield.fields.spectral_sphere import spectral_cost

    import meanfield as mf

    model = mf.AttentionModel(d=3, beta=9.0)
    print(f"\nPrediction for icosahedral level 8 ({n8} cells, {e8} edges), SA beta = 9, SSP-RK3 (3 stages/step),"
          f" assumed network: latency {NET_LATENCY_S * 1e6:.0f} us, bandwidth {NET_BANDWIDTH_BPS / 1e9:.0f} GB/s"
          f" (ring Allgatherv: (P-1)/P x 8 N bytes per rank per stage + log2(P) latencies):\n")
    print("| backend | ranks | targets imbalance | compute s/step | comm s/step | total s/step | comm share |")
    print("|---|---|---|---|---|---|---|")
    for backend in ("direct", "spectral"):
        for p in (64, 1024):
            comm = stages * (math.log2(p) * NET_LATENCY_S * 2 + (p - 1) / p * 8.0 * n8 / NET_BANDWIDTH_BPS)
            fv = stages * fv_cell * n8 / p
            if backend == "direct":
                comp = fv + stages * e8 * imbalance[p] / p * n8 / rate
            else:
                # spectral_cost is in units of direct pairs; the NUFFT point work splits, the
                # transforms on the (2 lmax)^2 grid are repeated on every rank
                whole = spectral_cost(model, e8, n8, 1e-9)
                fixed = spectral_cost(model, 0, 0, 1e-9)
                comp = fv + stages * ((whole - fixed) * imbalance[p] / p + fixed) / rate
                comm += stages * (math.log2(p) * NET_LATENCY_S * 2 + 16.0 * 32 * 32 / NET_BANDWIDTH_BPS)
            print(f"| {backend} | {p} | {imbalance[p]:.3f} | {comp:.3g} | {comm:.3g} | {comp + comm:.3g} | "
                  f"{comm / (comp + comm):.1%} |")


if __name__ == "__main__":
    main()

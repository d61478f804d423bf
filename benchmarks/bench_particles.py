"""Cost of the particle system: RK4 steps of the direct field, and the PDE-particle distances.

Usage: ``python benchmarks/bench_particles.py [--quick] [--seconds 1] [--limit 20]``

Two tables, after a line naming the machine (one process; the field pins BLAS to one
thread, the distances run as they are):

1. Particles: time per RK4 step (:class:`~meanfield.particles.system.ParticleSystem`, automatic
   step: 4 field evaluations ``field(x, x, w)`` + retractions), DirectField, SA beta = 1,
   d = 3, uniform samples (:func:`meanfield.particles.sampling.sample`), n = 1000 ... 30000; the
   time of one field evaluation, its throughput in million (target, source) pairs per
   second (n^2 pairs per evaluation) and the share of the step spent in the field.
2. Distances: seconds per call of :func:`meanfield.particles.distances.distance` for every metric,
   on the circle (``CircleMesh(1024)``) and the sphere (``icosahedral(3)``, 1280 cells),
   against n = 256, 1024, 4096 particles. PDE masses: the cell masses of a smooth density
   (a few modes); particles: a seeded sample of the same density (so every value is the
   distance between a projection and a sample of one law). A combination whose time,
   extrapolated from the next smaller n with the metric's cost model (below), exceeds
   ``--limit`` seconds is skipped; a call at the smallest n that runs past the limit is
   interrupted (SIGALRM; only Python-level loops, e.g. POT's log-domain Sinkhorn, can be).

Cost models used for the extrapolation (N cells, n particles; relative work):
``w1``/``w2``/``sliced`` on the circle ``(N + n) log(N + n)`` (quantile functions);
``w1``/``w2`` on the sphere ``(N n)^1.5`` (network simplex, a pessimistic exponent);
``sinkhorn`` ``N n`` (per iteration; the iteration count is not modelled); ``sliced`` on
the sphere ``(N + n) log(N + n)``; ``mmd`` ``(N + n)^2``; ``tv`` ``N + n``.

Every configuration is called once untimed (warm-up) and then repeatedly for at least
``--seconds`` and 3 calls, and the median call is reported; a configuration whose
warm-up call alone takes ``--seconds`` or more reports that single call (reps = 1).
``--quick``: small sizes, short timings, a 3 s limit (a smoke run).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import time
import warnings

import numpy as np

import meanfield as mf
from _machine import cpu_name, usable_cores
from meanfield.particles.distances import METRICS, distance
from meanfield.initial import project
from meanfield.particles.system import ParticleState, ParticleSystem
from meanfield.particles.sampling import sample
from meanfield.geometry.sphere import icosahedral

#: Smooth, strictly positive densities (``modes``): 1 + sum a_j mode_j >= 0.2 everywhere.
CIRCLE_DENSITY = {"kind": "modes", "modes": [{"k": 2, "amplitude": 0.5}, {"k": 3, "amplitude": 0.3, "phase": 1.0}]}
SPHERE_DENSITY = {"kind": "modes", "modes": [{"l": 2, "m": 0, "amplitude": 0.8}, {"l": 3, "m": 1, "amplitude": 0.4}]}


def time_call(fn, seconds: float) -> tuple[float, int, object]:
    """``(seconds per call, calls timed, last result)``: one warm-up call, then calls until
    ``seconds`` have passed and 3 were made, timed one by one; the median call (robust to
    the odd slow call on a shared machine). A warm-up of ``seconds`` or more is the result."""
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    if first >= seconds:
        return first, 1, result
    times, begin = [], time.perf_counter()
    while True:
        start = time.perf_counter()
        result = fn()
        stop = time.perf_counter()
        times.append(stop - start)
        if stop - begin >= seconds and len(times) >= 3:
            return float(np.median(times)), len(times), result


class CallTimeout(Exception):
    pass


def with_limit(fn, limit: float):
    """``fn()``, interrupted by :class:`CallTimeout` after ``limit`` seconds (SIGALRM, where
    available; the interruption happens between Python bytecodes, not inside C code)."""
    if not (limit and limit > 0 and hasattr(signal, "setitimer")):
        return fn

    def limited():
        def handler(signum, frame):
            raise CallTimeout

        old = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    return limited


# ---------------------------------------------------------------------------------------
# table 1: RK4 steps of the particle system
# ---------------------------------------------------------------------------------------
def bench_steps(sizes, seconds: float) -> None:
    print("\n## RK4 step, DirectField, SA beta=1, d=3, uniform particles (4 field evaluations per step)")
    print(f"{'n':>7} {'ms/step':>10} {'reps':>5} {'field ms':>10} {'reps':>5} {'Mpairs/s':>9} {'field %':>8}")
    field = mf.DirectField(mf.AttentionModel(d=3, beta=1.0))
    for n in sizes:
        x, w = sample({"kind": "uniform"}, 3, n, seed=n)
        system = ParticleSystem(field, integrator="rk4")
        state = ParticleState.create(x, w)
        # The cost does not depend on the positions: step the same state again and again.
        t_step, r_step, _ = time_call(lambda: system.step(state), seconds)
        t_field, r_field, _ = time_call(lambda: field(state.x, state.x, state.weights), seconds)
        print(f"{n:7d} {t_step * 1e3:10.1f} {r_step:5d} {t_field * 1e3:10.2f} {r_field:5d} "
              f"{n * n / t_field / 1e6:9.0f} {400 * t_field / t_step:7.0f}%", flush=True)


# ---------------------------------------------------------------------------------------
# table 2: distances
# ---------------------------------------------------------------------------------------
def cost_model(metric: str, circle: bool, cells: int, n: int) -> float:
    m = cells + n
    if metric in ("w1", "w2"):
        return m * math.log2(m) if circle else float(cells * n) ** 1.5
    if metric == "sinkhorn":
        return float(cells * n)
    if metric == "sliced":
        return m * math.log2(m)
    if metric == "mmd":
        return float(m) ** 2
    if metric == "tv":
        return float(m)
    raise ValueError(metric)


def bench_distances(sizes, seconds: float, limit: float) -> None:
    print(f"\n## distance(metric, mesh, masses, particles, weights): seconds per call (limit {limit:g} s)")
    print(f"{'mesh':>8} {'cells':>6} {'metric':>9} {'n':>6} {'s/call':>10} {'reps':>5} {'value (rad)':>12}")
    notes = []
    for name, make_mesh, spec in (("circle", lambda: mf.CircleMesh(1024), CIRCLE_DENSITY),
                                  ("sphere", lambda: icosahedral(3), SPHERE_DENSITY)):
        mesh = make_mesh()
        circle = name == "circle"
        masses = project(mesh, spec) * mesh.areas
        samples = {n: sample(spec, mesh.d, n, seed=1000 + n) for n in sizes}
        for metric in METRICS:
            prev = None  # (n, seconds per call) of the last size run, or "aborted"
            for n in sizes:
                head = f"{name:>8} {mesh.n_cells:6d} {metric:>9} {n:6d}"
                if prev == "aborted":
                    print(f"{head} {'skipped (est. > ' + format(limit, 'g') + ' s)':>29}", flush=True)
                    continue
                if prev is not None:
                    n0, t0 = prev
                    cells = mesh.n_cells
                    est = t0 * cost_model(metric, circle, cells, n) / cost_model(metric, circle, cells, n0)
                    if est > limit:
                        print(f"{head} {'skipped (est. > ' + format(limit, 'g') + ' s)':>29}   est. {est:.3g} s",
                              flush=True)
                        prev = "aborted"
                        continue
                x, w = samples[n]
                fn = with_limit(lambda: distance(metric, mesh, masses, x, w), limit)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        t, reps, value = time_call(fn, seconds)
                    except CallTimeout:
                        print(f"{head} {'aborted (> ' + format(limit, 'g') + ' s)':>29}", flush=True)
                        prev = "aborted"
                        continue
                mark = ""
                if caught:
                    first = caught[0]
                    notes.append(f"{name} {metric} n={n}: {first.category.__name__}: {str(first.message)[:150]}")
                    mark = f" [{len(notes)}]"
                print(f"{head} {t:10.3g} {reps:5d} {value:12.5g}{mark}", flush=True)
                prev = (n, t)
    for i, note in enumerate(notes, 1):
        print(f"[{i}] {note}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes and short timings (smoke run)")
    p.add_argument("--seconds", type=float, default=None,
                   help="timing budget per configuration (default 1, --quick 0.1)")
    p.add_argument("--limit", type=float, default=None,
                   help="skip / interrupt a distance call longer than this (default 20 s, --quick 3 s)")
    args = p.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.1 if args.quick else 1.0)
    limit = args.limit if args.limit is not None else (3.0 if args.quick else 20.0)
    steps = [500, 1000] if args.quick else [1000, 3000, 10000, 30000]
    sizes = [64, 256] if args.quick else [256, 1024, 4096]
    start = time.perf_counter()
    print(f"# {cpu_name()}, {usable_cores()} cores usable ({os.cpu_count()} visible), one process, "
          f"numpy {np.__version__}, timing budget {seconds:g} s per configuration")
    bench_steps(steps, seconds)
    bench_distances(sizes, seconds, limit)
    print(f"\n# total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

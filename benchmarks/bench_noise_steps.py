"""Step count and wall time of the sphere solver with and without noise, for the same run.

Usage: ``python benchmarks/bench_noise_steps.py [--levels 4 5 6] [--t-end 6] [--sigma 0.2]``

SA, ``beta = 9``, muscl, spectral field, icosahedral levels ``--levels``; the initial density
of ``cases/sphere_noise.toml`` (``1 + 0.05 sum_l Y_l^m`` over ``(l, m) = (1, 0), (2, 1), (3, -2),
(4, 3), (5, 0), (6, -4)``, normalized to unit mass), run to ``--t-end`` once with
``sigma = 0`` and once with ``sigma = --sigma`` (Strang splitting of the transport and the
implicit diffusion, steps rounded down to the 2^(1/4) ladder). Per run: accepted steps,
rejected tries, wall seconds of the run (the set-up -- field coefficients, diffusion operator --
is the ``setup s`` column, not included), seconds per step, seconds spent in
``Diffusion.implicit_step`` (two half steps per step), the number of distinct step sizes and
the number of factorizations of ``I - a L``, the median step taken and, with noise, the
explicit parabolic bound ``h^2 / (2 c)`` (``h = sqrt(4 pi / cells)``, ``c = sigma^2 / 2``) and
the ratio ``median dt / bound``: about how many times more steps an explicit diffusion would
have needed. The first line names the machine.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import meanfield as mf
from _machine import cpu_name, usable_cores
from meanfield.geometry.sphere import load_icosahedral

MODES = [(1, 0), (2, 1), (3, -2), (4, 3), (5, 0), (6, -4)]
AMPLITUDE = 0.05


def initial_density(mesh) -> np.ndarray:
    rho = 1.0 + AMPLITUDE * sum(mf.real_sph_harm(l, m, mesh.centers) for l, m in MODES)
    return rho / np.sum(rho * mesh.areas)


def run(mesh, model, sigma: float, t_end: float) -> dict:
    t0 = time.perf_counter()
    sim = mf.Simulation(mesh, model, noise=sigma, backend="spectral")
    setup = time.perf_counter() - t0
    diffusion_seconds = [0.0]
    if sim.diffusion is not None:
        inner = sim.diffusion.implicit_step

        def timed(*args, **kwargs):
            s = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                diffusion_seconds[0] += time.perf_counter() - s

        sim.diffusion.implicit_step = timed
    steps = []
    state = mf.State(0.0, initial_density(mesh))
    t0 = time.perf_counter()
    sim.advance(state, t_end, callback=lambda s, dt: steps.append(dt))
    seconds = time.perf_counter() - t0
    mass = float(np.sum(state.rho * mesh.areas))
    return {"setup": setup, "steps": state.steps, "rejected": sim.rejected, "seconds": seconds,
            "diffusion": diffusion_seconds[0], "sizes": len(set(steps)),
            "factorizations": sim.diffusion.stats["factorizations"] if sim.diffusion is not None else 0,
            "median": float(np.median(steps)), "mass_error": abs(mass - 1.0)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[4, 5, 6])
    p.add_argument("--t-end", type=float, default=6.0)
    p.add_argument("--sigma", type=float, default=0.2)
    p.add_argument("--beta", type=float, default=9.0)
    args = p.parse_args(argv)
    print(f"# {cpu_name()}, {usable_cores()} cores usable ({os.cpu_count()} visible), numpy {np.__version__}, "
          f"SA beta={args.beta}, muscl, spectral backend, t_end={args.t_end}, initial data of cases/sphere_noise.toml")
    print(f"{'level':>5} {'cells':>7} {'sigma':>5} {'steps':>6} {'rej':>4} {'setup s':>8} {'seconds':>8} "
          f"{'s/step':>7} {'diff s':>7} {'sizes':>5} {'fact':>4} {'median dt':>10} {'h^2/(2c)':>9} {'ratio':>6} "
          f"{'|mass-1|':>8}")
    model = mf.AttentionModel(d=3, beta=args.beta)
    for level in args.levels:
        mesh = load_icosahedral(level)
        h = np.sqrt(4 * np.pi / mesh.n_cells)
        for sigma in (0.0, args.sigma):
            r = run(mesh, model, sigma, args.t_end)
            if sigma > 0:
                bound = h**2 / (2 * 0.5 * sigma**2)
                explicit = f"{bound:9.2e} {r['median'] / bound:6.1f}"
            else:
                explicit = f"{'-':>9} {'-':>6}"
            print(f"{level:5d} {mesh.n_cells:7d} {sigma:5.2f} {r['steps']:6d} {r['rejected']:4d} {r['setup']:8.2f} "
                  f"{r['seconds']:8.2f} {r['seconds'] / r['steps']:7.3f} {r['diffusion']:7.2f} {r['sizes']:5d} "
                  f"{r['factorizations']:4d} {r['median']:10.3e} {explicit} {r['mass_error']:8.1e}", flush=True)


if __name__ == "__main__":
    main()

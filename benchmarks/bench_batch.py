"""Batched particles: pairs per second of one vectorized evaluation of B prompts x n tokens in R^d
(``Velocity.batch``, the blocked (prompts, n, n) direct sums) against the single-prompt direct
rate (``DirectField`` on one prompt of n tokens, the same model); the goal of issue 14 is a
ratio >= 0.7. A pair is one (target, source) term of the sums: B n^2 per batched evaluation,
n^2 per single one. ``--case`` adds the wall time of cases/phase_diagram.py at its defaults.

    python benchmarks/bench_batch.py [--repeat R] [--case]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from meanfield.dynamics.velocity import Velocity
from meanfield.fields.attention import AttentionModel, DirectField

SIZES = [(2048, 32, 8), (256, 32, 128), (64, 128, 16), (16, 512, 3), (4, 1024, 64), (2, 4096, 3)]


def _best(fn, repeat: int, budget: float = 2.0) -> float:
    fn()
    best, spent, k = np.inf, 0.0, 0
    while k < repeat or (spent < budget and k < 50 * repeat):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, k = min(best, dt), spent + dt, k + 1
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--case", action="store_true", help="also time cases/phase_diagram.py (a few minutes)")
    args = ap.parse_args(argv)
    print(f"{'B':>6} {'n':>6} {'d':>5} {'kind':>5} {'batch pairs/s':>14} {'single pairs/s':>15} {'ratio':>7}")
    for B, n, d in SIZES:
        for kind in ("SA", "USA"):
            rng = np.random.default_rng(0)
            x = rng.standard_normal((B, n, d))
            x /= np.linalg.norm(x, axis=-1, keepdims=True)
            w = np.full(n, 1.0 / n)
            model = AttentionModel(d, beta=2.0, normalized=kind == "SA")
            direct = DirectField(model)
            vel = Velocity.from_backend(direct)
            t_batch = _best(lambda: vel.batch(x, w), args.repeat)
            x0 = np.ascontiguousarray(x[0])
            t_single = _best(lambda: direct(x0, x0, w), args.repeat)
            batch_rate, single_rate = B * n * n / t_batch, n * n / t_single
            print(f"{B:6d} {n:6d} {d:5d} {kind:>5} {batch_rate:14.4g} {single_rate:15.4g} {batch_rate / single_rate:7.2f}")
    if args.case:
        script = Path(__file__).resolve().parent.parent / "cases" / "phase_diagram.py"
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, str(script), "--out", "/tmp/bench_phase"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else out.stderr)
        print(f"cases/phase_diagram.py (defaults: n = 32, d = 8 and 128, 256 prompts, 10 betas, t = 15, rk4 dt = 0.1): "
              f"{wall:.1f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())

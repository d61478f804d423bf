"""Prompts per second of the batched retrieval experiment (meanfield.particles.retrieval):
n = 16, 32, 64 tokens, the masked direct sums against what backend="auto" picks.

    python benchmarks/bench_retrieval.py [--prompts 1024] [--t 1.0]

beta = 1, ALiBi 1, RK4 with dt = 0.2 (5 steps to t = 1, 20 field evaluations), batches of 512.
"""

import argparse
import time

from meanfield.particles.retrieval import retrieval_experiment


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--t", type=float, default=1.0)
    a = p.parse_args(argv)
    print(f"{'n':>4} {'backend':>10} {'picked':>22} {'prompts/s':>10} {'s':>7}")
    for n in (16, 32, 64):
        for backend in ("direct", "auto"):
            retrieval_experiment(n, 8, 1.0, 1.0, [a.t], batch=8, backend=backend)  # warm up
            t0 = time.perf_counter()
            r = retrieval_experiment(n, a.prompts, 1.0, 1.0, [a.t], batch=512, backend=backend)
            dt = time.perf_counter() - t0
            print(f"{n:4d} {backend:>10} {r.backend:>22} {a.prompts / dt:10.0f} {dt:7.2f}")


if __name__ == "__main__":
    main()

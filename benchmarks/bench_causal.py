"""Causal field of ordered tokens: masked direct sums against the prefix sums of the spectral backends.

Usage: ``python benchmarks/bench_causal.py [--n 1000 10000 100000] [--alibi 3] [--direct-max 2e9]
[--rows 1024] [--seconds 1]``

One prompt of ``n`` tokens (independent uniform points, weights ``1/n``), SA,
``Q = K = V = I``, ALiBi slope ``--alibi``, at the backends' default tolerance (1e-12): the
circle at ``beta = 1`` and 9 (:meth:`SpectralCircleField.causal_tokens`), the isotropic
sphere at ``beta = 9`` (:meth:`SpectralSphereField.causal_tokens`), against
:func:`~meanfield.fields.causal.masked_direct` (``n (n + 1) / 2`` pair evaluations). Time per
evaluation of the field at all ``n`` tokens. When the masked direct sums would exceed
``--direct-max`` pairs they are timed on ``--rows`` rows, four runs of consecutive tokens
ending at ``n/4, n/2, 3n/4, n`` (the last token included, so the prefix is the whole
prompt), and scaled by the pair count
``n (n + 1) / 2 / sum_rows (i + 1)`` (marked ``~``). The error is the largest difference
against the masked direct sums on those rows (all rows when they were all computed), in
units of ``||V||_2 = 1``. BLAS runs on one thread (the backends pin it).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import meanfield as mf
from _machine import cpu_name, time_call, usable_cores
from meanfield.fields.causal import masked_direct
from meanfield.fields.spectral_circle import SpectralCircleField
from meanfield.fields.spectral_sphere import SpectralSphereField


def prompt(rng, d: int, n: int) -> np.ndarray:
    if d == 2:
        t = rng.uniform(0.0, 2.0 * np.pi, n)
        return np.column_stack([np.cos(t), np.sin(t)])
    p = rng.normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--alibi", type=float, default=3.0)
    ap.add_argument("--direct-max", type=float, default=2e9, help="largest pair count timed in full")
    ap.add_argument("--rows", type=int, default=1024, help="rows of the estimated direct sums")
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum time per measurement")
    args = ap.parse_args()
    print(f"machine: {cpu_name()}, {usable_cores()} usable cores (BLAS single-threaded); SA, Q = K = V = I, "
          f"alibi = {args.alibi:g}, tolerance 1e-12")
    print(f"{'case':>14} {'n':>8} {'L':>4} {'direct [s]':>12} {'prefix [s]':>11} {'speed-up':>9} {'max error':>10} "
          f"{'fallback':>8}")
    cases = [("S^1 beta=1", 2, 1.0, SpectralCircleField), ("S^1 beta=9", 2, 9.0, SpectralCircleField),
             ("S^2 beta=9", 3, 9.0, SpectralSphereField)]
    rng = np.random.default_rng(0)
    for label, d, beta, Field in cases:
        model = mf.AttentionModel(d=d, beta=beta)
        field = Field(model)
        L = field.truncation if d == 2 else field.lmax
        for n in args.n:
            x = prompt(rng, d, n)
            w = np.full(n, 1.0 / n)
            pairs = n * (n + 1) / 2
            start = time.perf_counter()
            fast = field.causal_tokens(x, w, args.alibi)
            once = time.perf_counter() - start
            t_fast = once if once > 5 * args.seconds else time_call(lambda: field.causal_tokens(x, w, args.alibi),
                                                                    args.seconds)
            fallback = getattr(field, "last_fallback", getattr(field, "last_fallback_count", 0))
            if pairs <= args.direct_max:
                rows = np.arange(n)
                start = time.perf_counter()
                ref = masked_direct(model, x, w, args.alibi)
                t_dir = time.perf_counter() - start
                mark = " "
            else:
                # four runs of consecutive rows ending at n/4, n/2, 3n/4, n (a spread-out subset
                # would make the blocked sums mask away part of every block)
                run = max(1, args.rows // 4)
                rows = np.unique(np.concatenate([np.arange(e - run, e) for e in (n // 4, n // 2, 3 * n // 4, n)]))
                start = time.perf_counter()
                ref = masked_direct(model, x, w, args.alibi, rows=rows)
                t_dir = (time.perf_counter() - start) * pairs / float(np.sum(rows + 1))
                mark = "~"
            err = float(np.abs(fast[rows] - ref).max())
            print(f"{label:>14} {n:8d} {L:4d} {mark}{t_dir:11.3f} {t_fast:11.4f} {t_dir / t_fast:8.3g}x "
                  f"{err:10.1e} {fallback:8d}")
    print("~: masked direct sums timed on the rows of the error column and scaled by the pair count")


if __name__ == "__main__":
    main()

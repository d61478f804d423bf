"""A slice of the phase diagram of *A mathematical perspective on Transformers* (arXiv:2312.10794).

The authors' ``phase-diagrams.py`` (github.com/borjanG/2023-transformers-rotf) runs, for each
of 90 values of beta in [0.1, 9], 2048 prompts of n = 32 tokens uniform on S^{d-1} (d = 8, 128,
1024) with SA, Q = K = V = I, by their Euler scheme ``x <- (x + 0.1 A(x)) / |x + 0.1 A(x)|``
(``A`` the attention average before the projection) to t = 30 (``--use_softmax``), and records
at 200 times the fraction of pairs i != j with ``<x_i, x_j> > 0.999``, drawn as a heat map
(t on x, beta on y, ``RdBu_r``).

This script runs the same experiment with the package's batches (meanfield.particles.phase):
RK4 with dt = 0.1 by default (``--integrator euler`` for the authors' scheme), a few hundred
prompts, fewer betas and t up to 15, and draws the equiangular crossing time of 0.999 over the
map. Defaults finish in about three minutes on one core; writes ``phase.png`` and
``phase.csv`` (and the table on stdout).

    python cases/phase_diagram.py --out /tmp/phase
    python cases/phase_diagram.py --d 8 --prompts 2048 --betas 90 --t-end 30 --integrator euler
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from meanfield.particles.phase import phase_diagram, plot_phase


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, nargs="+", default=[8, 128], help="dimensions (one panel each)")
    ap.add_argument("--n", type=int, default=32, help="tokens per prompt")
    ap.add_argument("--prompts", type=int, default=256, help="prompts per beta")
    ap.add_argument("--beta-min", type=float, default=0.1)
    ap.add_argument("--beta-max", type=float, default=9.0)
    ap.add_argument("--betas", type=int, default=10, help="number of betas (equally spaced)")
    ap.add_argument("--t-end", type=float, default=15.0)
    ap.add_argument("--outputs", type=int, default=61, help="output times in [0, t_end]")
    ap.add_argument("--dt", type=float, default=0.1)
    ap.add_argument("--integrator", default="rk4", choices=["rk4", "euler", "euler_tangent"])
    ap.add_argument("--kind", default="SA", choices=["SA", "USA", "USA_shift"])
    ap.add_argument("--ensemble", nargs=2, metavar=("QK", "V"), default=None,
                    help="per-prompt random parameters, e.g. 'goe identity' or 'gaussian wishart'")
    ap.add_argument("--rank", action="store_true", help="also the rank of the thresholded Gram matrix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    if args.betas < 1 or args.outputs < 2 or args.t_end <= 0:
        ap.error("need --betas >= 1, --outputs >= 2 and --t-end > 0")
    args.out.mkdir(parents=True, exist_ok=True)
    betas = np.linspace(args.beta_min, args.beta_max, args.betas)
    times = np.linspace(0.0, args.t_end, args.outputs)
    results = []
    start = time.perf_counter()
    for d in args.d:
        def progress(beta, res, d=d):
            print(f"  d = {d}, beta = {beta:.3g}: {res.steps} steps, {res.seconds:.1f} s", file=sys.stderr, flush=True)

        r = phase_diagram(betas, times, n=args.n, d=d, prompts=args.prompts, seed=args.seed, kind=args.kind,
                          integrator=args.integrator, dt=args.dt,
                          ensemble=tuple(args.ensemble) if args.ensemble else None, rank=args.rank, progress=progress)
        results.append(r)
        print(r.table())
        print()
    wall = time.perf_counter() - start
    rows = []
    for r in results:
        for row in r.rows():
            rows.append({"d": r.d, **row})
    with open(args.out / "phase.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    what = "Q = K = V = I" if not args.ensemble else f"Q^T K {args.ensemble[0]}, V {args.ensemble[1]} per prompt"
    plot_phase(results, args.out / "phase.png",
               title=f"Probability that two tokens have merged, {what}, {args.integrator} dt = {args.dt:g}")
    print(f"wall time {wall:.1f} s; wrote {args.out / 'phase.png'} and {args.out / 'phase.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

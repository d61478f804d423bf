"""Lost in the middle: the soft retrieval accuracy of causal SA on the circle, Monte Carlo
against the closed form of Duerinckx, Geshkovski, Rossi (arXiv:2605.09213) and the finite-n
linear response (meanfield.particles.retrieval; docs/retrieval.md).

Run from the repository root:  python cases/causal_retrieval.py [--n 32 --prompts 20000 ...]
Defaults take about 10 s on one core. Writes OUT/retrieval.png, OUT/retrieval.npz, OUT/retrieval.csv.
"""

import argparse
import csv
from pathlib import Path

import numpy as np

from meanfield.particles.retrieval import plot_retrieval, retrieval_experiment


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="tokens per prompt")
    p.add_argument("--prompts", type=int, default=20000, help="iid uniform prompts")
    p.add_argument("--beta", type=float, default=0.25)
    p.add_argument("--alibi", type=float, default=3.0, help="ALiBi slope lambda")
    p.add_argument("--times", default="1,2", help="comma-separated increasing times (ours: tau = t / (beta I_0(beta)))")
    p.add_argument("--M", type=float, default=8.0, help="soft score width: wrapped normal of std pi/M")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=("auto", "direct"))
    p.add_argument("--out", default="runs/causal_retrieval")
    a = p.parse_args(argv)
    times = [float(x) for x in a.times.split(",") if x.strip()]
    r = retrieval_experiment(a.n, a.prompts, a.beta, a.alibi, times, M=a.M, seed=a.seed, backend=a.backend)
    print(r.table())
    print(f"\n{r.prompts} prompts x {r.steps} RK4 steps in {r.seconds:.1f} s ({r.prompts / r.seconds:.0f} prompts/s)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_retrieval(r, out / "retrieval.png")
    np.savez(out / "retrieval.npz", **r.to_dict())
    with open(out / "retrieval.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t", "tau", "sigma0", "mc", "se", "theory", "discrete", "dev_theory_se", "dev_discrete_se"])
        for k, t in enumerate(r.times):
            for j, s in enumerate(r.sigma0):
                w.writerow([t, float(r.tau[k]), s, r.mean[k, j], r.se[k, j], r.theory[k, j], r.discrete[k, j],
                            (r.mean[k, j] - r.theory[k, j]) / r.se[k, j], (r.mean[k, j] - r.discrete[k, j]) / r.se[k, j]])
    print(f"wrote {out / 'retrieval.png'}, {out / 'retrieval.npz'}, {out / 'retrieval.csv'}")


if __name__ == "__main__":
    main()

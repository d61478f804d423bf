"""The effect of the ALiBi slope on causal clustering: the causal mean field on the circle for
several slopes lambda, one picture.

The initial density (cases/causal_initial.py:antipodal) puts the early positions near e_1
(theta = 0) and the late ones near -e_1 (theta = pi): f(0, .) ~ exp(3 cos theta),
f(1, .) ~ exp(-3 cos theta). Under causal SA every position attends to all earlier ones; the
ALiBi bias -lambda (s - s') makes that attention local (a window of width ~ 1/lambda in s).
Without it (lambda = 0) the late positions are drawn to the early cluster; with a steep slope
each position follows its neighbours and the prompt keeps both clusters.

Runs ``meanfield run`` (the PDE: 32 position bands x 128 cells, SA beta = 1, t = 8) for each
slope, prints the signed first moment ``<x_1>(s) = int cos(theta) f(s, theta) dtheta`` of every
band at the end (+1: all at theta = 0, -1: all at pi) and the position where it changes sign,
and draws ``alibi_sweep.png``: f(s, theta) at the end for every slope, and <x_1>(s) for all.

    python cases/causal_alibi_sweep.py --alibi 0 2 8 32 --out runs/alibi
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from meanfield.io.case import resolve_case
from meanfield.run import run_case

CASE = {
    "domain": {"manifold": "circle", "cells": 128, "positions": 32},
    "model": {"kind": "SA", "beta": 1.0, "mask": "causal"},
    "initial": {"kind": "python", "function": "causal_initial.py:antipodal"},
    "solver": {"t_end": 8.0},
    "output": {"every": 1.0, "plots": False},
}


def crossing(s, m):
    """The first position where ``m`` changes sign (linear interpolation), or nan."""
    idx = np.flatnonzero(np.sign(m[:-1]) != np.sign(m[1:]))
    if idx.size == 0:
        return float("nan")
    i = idx[0]
    return float(s[i] - m[i] * (s[i + 1] - s[i]) / (m[i + 1] - m[i]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alibi", type=float, nargs="+", default=[0.0, 2.0, 8.0, 32.0])
    ap.add_argument("--t-end", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=Path("runs/alibi_sweep"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = []
    for lam in args.alibi:
        raw = {k: dict(v) for k, v in CASE.items()}
        raw["model"]["alibi"] = lam
        raw["solver"]["t_end"] = args.t_end
        case = resolve_case(raw, source=f"alibi={lam:g}", base_dir=Path(__file__).parent)
        res = run_case(case, out_dir=args.out / f"alibi_{lam:g}", overwrite=True)
        z = np.load(args.out / f"alibi_{lam:g}" / "final.npz")
        m1 = z["masses"] @ z["points"][:, 0] * z["masses"].shape[0]  # <x_1> of every band
        results.append((lam, z["positions"], m1, z["density"], res.state.steps))
    print(f"{'lambda':>7} {'<x_1> first band':>17} {'<x_1> last band':>16} {'sign change at s':>17} {'steps':>6}")
    for lam, s, m1, _, steps in results:
        print(f"{lam:7g} {m1[0]:17.4f} {m1[-1]:16.4f} {crossing(s, m1):17.4f} {steps:6d}")
    draw(args.out / "alibi_sweep.png", results, args.t_end)
    print(f"wrote {args.out / 'alibi_sweep.png'}")
    return 0


def draw(path, results, t_end):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    k = len(results)
    fig = plt.figure(figsize=(3.6 * k + 1, 7.5), layout="constrained")
    grid = fig.add_gridspec(2, k)
    top = max(float(r[3].max()) for r in results)
    norm = LogNorm(vmin=top * 1e-4, vmax=top)
    for i, (lam, s, _, rho, _) in enumerate(results):
        ax = fig.add_subplot(grid[0, i])
        P, N = rho.shape
        img = ax.pcolormesh(np.linspace(0, 1, P + 1), np.linspace(0, 2 * np.pi, N + 1), np.maximum(rho.T, norm.vmin),
                            cmap="magma", norm=norm, shading="flat")
        ax.set_title(f"λ = {lam:g}: f(s, θ) at t = {t_end:g}")
        ax.set_xlabel("position s")
        ax.set_yticks([0, np.pi, 2 * np.pi], ["0", "π", "2π"])
        if i == 0:
            ax.set_ylabel("angle θ")
    fig.colorbar(img, ax=fig.axes[:k], label="density (log)", pad=0.01)
    ax = fig.add_subplot(grid[1, :])
    for lam, s, m1, _, _ in results:
        ax.plot(s, m1, "o-", ms=3, label=f"λ = {lam:g} (sign change at s = {crossing(s, m1):.3f})")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlim(0, 1)
    ax.set_xlabel("position s")
    ax.set_ylabel("<x_1> of the band at the end")
    ax.set_title("early positions start near θ = 0, late ones near θ = π: which cluster does each position join?")
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

"""Compare run directories of the composite-dynamics cases in one picture.

Reads each run directory's ``diagnostics.csv`` (and, for ``--profiles``, ``final.npz``)
and draws, side by side:

* one panel per ``--columns`` entry: the column against t, one line per run;
* ``--profiles``: the final densities against the angle (circle runs; a PDE run's cell
  densities, a particle run's histogram), log scale;
* ``--x X1 X2 ...``: one more panel, the last value of each column against X (one X per
  run, e.g. the head count of the random-heads runs), log-log axes;
* ``--pairs DELTA``: the fraction of pairs of tokens within the angle DELTA at the final
  time, ``sum_ij m_i m_j [d(x_i, x_j) < DELTA]`` (PDE: cell masses at the cell centres;
  particles: the tokens), printed and drawn in the ``--x`` panel, with the value of the
  uniform measure as the first run resolves it (continuum: DELTA / pi; the self-pairs of
  cells or tokens add about one cell's share or 1/n).

It prints a table of the last row of every run. Examples (the case headers give theirs):

    python cases/compare_dynamics.py runs/one runs/two --labels "SA 9" "SA 9 - SA 4" \\
        --columns n_clusters max_density --profiles --out runs/two_heads.png
    python cases/compare_dynamics.py runs/rh1 runs/rh4 runs/rh16 runs/rh64 --x 1 4 16 64 \\
        --labels 1 4 16 64 --columns max_density --pairs 0.05 --profiles --out runs/random_heads.png
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LOG_COLUMNS = {"max_density", "min_density", "w1_target", "max_speed"}


def read_rows(run: Path) -> dict[str, np.ndarray]:
    with open(run / "diagnostics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{run}/diagnostics.csv: no rows")
    out = {}
    for key in rows[0]:
        out[key] = np.array([float(r[key]) if r[key] not in ("", None) else math.nan for r in rows])
    return out


def final_profile(run: Path, bins: int = 256):
    """(angles, densities) of the final state: PDE cell densities or a particle histogram."""
    f = np.load(run / "final.npz")
    x = f["points"]
    if x.ndim != 2 or x.shape[1] != 2:
        return None
    theta = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
    if "density" in f.files:
        order = np.argsort(theta)
        return theta[order], f["density"][order]
    w = f["masses"] if "masses" in f.files else np.full(len(theta), 1.0 / len(theta))
    hist, edges = np.histogram(theta, bins=bins, range=(0, 2 * np.pi), weights=w)
    return 0.5 * (edges[1:] + edges[:-1]), hist / (2 * np.pi / bins)


def pair_fraction(run: Path, delta: float, uniform: bool = False) -> float:
    """sum_ij m_i m_j [geodesic distance(x_i, x_j) < delta] of ``final.npz``; ``uniform``:
    the same for the uniform measure as this run resolves it (PDE: the cell measures;
    particles on the circle: delta / pi plus the self-pairs 1/n)."""
    f = np.load(run / "final.npz")
    x = f["points"].reshape(-1, f["points"].shape[-1])
    m = f["masses"].reshape(-1) if "masses" in f.files else np.full(len(x), 1.0 / len(x))
    if uniform:
        if "areas" not in f.files:
            return delta / np.pi + 1.0 / len(x)
        m = f["areas"].reshape(-1)
    keep = m > 0
    x, m = x[keep], m[keep] / m[keep].sum()
    total = 0.0
    for i in range(0, len(x), 2048):  # blocks: n^2 pairs without an n x n matrix
        d = np.arccos(np.clip(x[i:i + 2048] @ x.T, -1.0, 1.0))
        total += float(m[i:i + 2048] @ (d < delta) @ m)
    return total


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (meanfield run / particles --out)")
    p.add_argument("--labels", nargs="+", help="one label per run (default: directory names)")
    p.add_argument("--columns", nargs="+", default=["n_clusters"], help="diagnostics.csv columns to plot against t")
    p.add_argument("--profiles", action="store_true", help="add a panel of the final densities (circle runs)")
    p.add_argument("--x", nargs="+", type=float, help="one number per run: add a panel of the last values against it")
    p.add_argument("--pairs", type=float, metavar="DELTA", help="fraction of pairs within the angle DELTA at the end")
    p.add_argument("--xlabel", default="count", help="label of the --x axis")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="output PNG")
    a = p.parse_args(argv)
    labels = a.labels or [r.name for r in a.runs]
    if len(labels) != len(a.runs):
        p.error(f"{len(a.runs)} runs but {len(labels)} labels")
    if a.x is not None and len(a.x) != len(a.runs):
        p.error(f"{len(a.runs)} runs but {len(a.x)} values of --x")
    data = [read_rows(r) for r in a.runs]
    pairs = [pair_fraction(r, a.pairs) for r in a.runs] if a.pairs is not None else None
    pairs_uniform = pair_fraction(a.runs[0], a.pairs, uniform=True) if a.pairs is not None else None
    for col in a.columns:
        for r, d in zip(a.runs, data):
            if col not in d:
                p.error(f"{r}/diagnostics.csv has no column {col!r} (has {', '.join(d)})")

    n_panels = len(a.columns) + bool(a.profiles) + (a.x is not None)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.6 * n_panels, 3.8), squeeze=False)
    axes = list(axes[0])
    for col in a.columns:
        ax = axes.pop(0)
        for lab, d in zip(labels, data):
            ax.plot(d["t"], d[col], label=lab, drawstyle="steps-post" if col == "n_clusters" else "default")
        ax.set_xlabel("t")
        ax.set_ylabel(col)
        if col in LOG_COLUMNS:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    if a.profiles:
        ax = axes.pop(0)
        for lab, r in zip(labels, a.runs):
            prof = final_profile(r)
            if prof is not None:
                ax.plot(prof[0], np.maximum(prof[1], 1e-8), label=lab, lw=1)
        ax.set_yscale("log")
        ax.set_ylim(1e-6, None)
        ax.set_xlim(0, 2 * np.pi)
        ax.set_xticks(np.linspace(0, 2 * np.pi, 5), ["0", "π/2", "π", "3π/2", "2π"])
        ax.set_xlabel("angle θ")
        ax.set_ylabel("final density")
        ax.legend(fontsize=8)
    if a.x is not None:
        ax = axes.pop(0)
        for col in a.columns:
            ax.plot(a.x, [d[col][-1] for d in data], "o-", label=f"{col} at t = {data[0]['t'][-1]:g}")
        if pairs is not None:
            ax.plot(a.x, pairs, "s-", label=f"pairs within {a.pairs:g} rad")
            ax.axhline(pairs_uniform, color="0.5", ls=":", lw=1, label=f"pairs, uniform ({pairs_uniform:.4f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(a.xlabel)
        ax.legend(fontsize=8)
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)

    cols = ["t"] + [c for c in a.columns if c != "t"]
    width = max(len(s) for s in labels) + 2
    print("run".ljust(width) + "".join(c.rjust(16) for c in cols) + ("pairs".rjust(16) if pairs else ""))
    for i, (lab, d) in enumerate(zip(labels, data)):
        print(lab.ljust(width) + "".join(f"{d[c][-1]:16.6g}" for c in cols) + (f"{pairs[i]:16.4f}" if pairs else ""))
    if pairs:
        print(f"pairs within {a.pairs:g} rad of the uniform measure as {a.runs[0]} resolves it: {pairs_uniform:.4f}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

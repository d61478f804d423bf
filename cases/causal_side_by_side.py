"""A causal case as the mean field and as n tokens, side by side, and how far apart they are.

Runs the PDE (``meanfield run``) and the particles (``meanfield particles``, ``--n`` tokens in
prompt order, token i at s = i/n, drawn from f(s_i, .)) of one causal case, then draws
``side_by_side.png``:

* circle: the PDE's f(s, theta) at the final time beside the tokens over (s, theta);
  sphere: the order parameter of every position band over time, PDE beside particles;
* the per-position order parameter and cluster count of both at the final time;
* the W1 distance (geodesic) between every band of the PDE and the tokens of that band over
  time (the distance the mean-field limit sends to 0 like n^(-1/2)).

and prints the per-band distances at the final time. Examples:

    python cases/causal_side_by_side.py cases/circle_causal_clusters.toml --n 2000 --out runs/causal_sbs
    python cases/causal_side_by_side.py cases/sphere_causal_clusters.toml --n 4000 --out runs/causal_sphere_sbs
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from meanfield.causal_run import band_centres, band_diagnostics, particle_band_diagnostics, token_bands
from meanfield.io.case import load_case
from meanfield.particles.run import band_distances, run_particles
from meanfield.run import build_mesh, run_case


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", type=Path)
    ap.add_argument("--n", type=int, default=None, help="tokens (default particles.n of the case)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/causal_side_by_side"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="case overrides, as meanfield run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    case = load_case(args.case, args.set)
    if case["model"]["mask"] != "causal":
        ap.error(f"{args.case}: not a causal case (model.mask = \"causal\")")
    args.out.mkdir(parents=True, exist_ok=True)
    pde = run_case(case, out_dir=args.out / "pde", overwrite=True, source=str(args.case))
    part = run_particles(case, out_dir=args.out / "particles", n=args.n, seed=args.seed, overwrite=True,
                         source=str(args.case))
    mesh = build_mesh(case)
    P = pde.snapshots[0][1].shape[0]
    times = [t for t, _ in pde.snapshots]
    dists = np.array([band_distances("w1", mesh, rho * mesh.areas, x, w)
                      for (_, rho), (_, x, w) in zip(pde.snapshots, part.snapshots)])
    s = band_centres(P)
    print(f"W1 between the PDE's bands and the {part.state.n} tokens in them at t = {times[-1]:g}:")
    for p in range(P):
        print(f"  band {p:3d}  s = {s[p]:.3f}  W1 = {dists[-1, p]:.4f}")
    print(f"  mean {np.nanmean(dists[-1]):.4f}   (t = 0: mean {np.nanmean(dists[0]):.4f}: the sampling error)")
    draw(args.out / "side_by_side.png", mesh, case, pde, part, dists, times)
    print(f"wrote {args.out / 'side_by_side.png'}")
    return 0


def draw(path, mesh, case, pde, part, dists, times):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from meanfield import diagnostics as diag

    d = case["diagnostics"]
    criterion = diag.ClusterCriterion(d["cluster_contrast"], d["cluster_mass"], d["cluster_distance"])
    t, rho = pde.snapshots[-1]
    _, x, w = part.snapshots[-1]
    P, n = rho.shape[0], len(x)
    s = band_centres(P)
    fig = plt.figure(figsize=(14, 8.5), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[1.2, 1])
    if mesh.manifold == "circle":
        ax = fig.add_subplot(grid[0, 0:2])
        top = float(rho.max())
        norm = LogNorm(vmin=top * 1e-4, vmax=top)
        img = ax.pcolormesh(np.linspace(0, 1, P + 1), np.linspace(0, 2 * np.pi, mesh.n_cells + 1),
                            np.maximum(rho.T, norm.vmin), cmap="magma", norm=norm, shading="flat")
        fig.colorbar(img, ax=ax, label="PDE density (log)", pad=0.01)
        theta = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
        ax.scatter(np.arange(1, n + 1) / n, theta, s=max(0.5, min(6.0, 3000.0 / n)), color="C0", alpha=0.6,
                   linewidths=0, label=f"{n} tokens")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 2 * np.pi)
        ax.set_yticks([0, np.pi, 2 * np.pi], ["0", "π", "2π"])
        ax.set_xlabel("position s")
        ax.set_ylabel("angle θ")
        ax.legend(loc="upper right", markerscale=4)
        ax.set_title(f"mean field f(s, θ) and tokens at t = {t:g}")
    else:
        for k, (title, series) in enumerate((
                ("PDE", [band_diagnostics(mesh, r, criterion)[0] for _, r in pde.snapshots]),
                (f"{n} tokens", [particle_band_diagnostics(xx, ww, P, criterion)[0] for _, xx, ww in part.snapshots]))):
            ax = fig.add_subplot(grid[0, k])
            tt = np.array(times)
            edges = np.concatenate([[tt[0]], 0.5 * (tt[1:] + tt[:-1]), [tt[-1]]])
            img = ax.pcolormesh(edges, np.linspace(0, 1, P + 1), np.array(series).T, vmin=0, vmax=1, cmap="viridis")
            ax.set_xlabel("t")
            ax.set_ylabel("position s")
            ax.set_title(f"order parameter per band: {title}")
        fig.colorbar(img, ax=fig.axes[:2], label="order parameter", pad=0.01)
    ax = fig.add_subplot(grid[0, 2])
    for p in range(P):
        ax.semilogy(times, dists[:, p], color=plt.cm.viridis(p / max(1, P - 1)), lw=1)
    ax.semilogy(times, np.nanmean(dists, axis=1), color="k", lw=2, label="mean over bands")
    ax.set_xlabel("t")
    ax.set_ylabel("W1(PDE band, tokens of the band)")
    ax.set_title("distance per band (colour: position s)")
    ax.legend()
    order_pde, clusters_pde = band_diagnostics(mesh, rho, criterion)
    order_tok, clusters_tok = particle_band_diagnostics(x, w, P, criterion)
    ax = fig.add_subplot(grid[1, 0:2])
    ax.plot(s, order_pde, "o-", ms=3, label="PDE")
    ax.plot(s, order_tok, "s--", ms=3, label=f"{n} tokens")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("position s")
    ax.set_ylabel("order parameter per band")
    ax.legend()
    ax = fig.add_subplot(grid[1, 2])
    ax.step(s, clusters_pde, where="mid", label="PDE")
    ax.step(s, clusters_tok, where="mid", ls="--", label=f"{n} tokens ({np.bincount(token_bands(n, P)).min()}+ per band)")
    ax.set_xlabel("position s")
    ax.set_ylabel("clusters per band")
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

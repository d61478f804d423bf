"""Leaders: Euclidean tokens (no layer normalization) cluster at the vertices of a polytope, and
in 1-D the attention matrix becomes a low-rank Boolean matrix.

The model of Geshkovski, Letrouit, Polyanskiy, Rigollet, "The emergence of clusters in
self-attention dynamics" (arXiv:2305.05465), ``dx_i/dt = sum_j P_ij V x_j`` in R^d, seen in
the rescaled tokens ``z_i = e^{-tV} x_i`` (meanfield.particles.euclidean). Draws
``euclidean.png``:

* top left: ``d = 2``, ``Q = K = V = I``: the trajectories of the ``z_i``, the initial
  convex hull (dashed) with its vertices (the leaders) ringed, and the final hull (the limit
  polytope) filled;
* top middle: the hull area (non-increasing) and the largest distance of a token to the
  limit vertices (like ``e^{-t}``), against t;
* top right: ``d = 1``: the ``z_i(t)``, and the distance of ``P(t)`` to the nearest Boolean
  matrix (doubly exponential: ``log(-log dist)`` grows with slope ``V = 1``);
* bottom: the 1-D attention matrices ``P(t)`` (tokens sorted by their initial value) at six
  times, each with its distance to the nearest Boolean matrix and that matrix's rank.

and prints the numbers. Example (the defaults run in a few seconds):

    python cases/euclidean_leaders.py --out runs/euclidean
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from meanfield.particles.euclidean import evolve_euclidean, hull_measure, leaders, nearest_boolean


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="tokens of the 2-D prompt")
    ap.add_argument("--n1", type=int, default=10, help="tokens of the 1-D prompt")
    ap.add_argument("--scale", type=float, default=1.0, help="initial tokens uniform in [-scale, scale]^d")
    ap.add_argument("--t-end", type=float, default=10.0, help="final time of the 2-D run")
    ap.add_argument("--t-end1", type=float, default=6.0, help="final time of the 1-D run")
    ap.add_argument("--beta1", type=float, default=4.0, help="beta of the 1-D run (beta = 1 in 2-D)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seed1", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("runs/euclidean"))
    args = ap.parse_args(argv)
    if args.n < 3 or args.n1 < 2:
        ap.error("--n must be >= 3 (a hull in R^2) and --n1 >= 2")
    if not args.scale > 0 or not args.t_end > 0 or not args.t_end1 > 0:
        ap.error("--scale, --t-end and --t-end1 must be > 0")
    args.out.mkdir(parents=True, exist_ok=True)

    # -- d = 2, V = I: the polytope ---------------------------------------------------------
    rng = np.random.default_rng(args.seed)
    x0 = rng.uniform(-args.scale, args.scale, size=(args.n, 2))
    times = np.linspace(0.0, args.t_end, 201)
    tr = evolve_euclidean(x0, args.t_end, times=times)
    z, zf = tr.z, tr.z[-1]
    lead0 = tr.leaders(0)
    final = leaders(zf)
    dist = np.array([np.linalg.norm(zk[:, None, :] - zf[None, final, :], axis=2).min(axis=1).max() for zk in z])
    area = np.array([hull_measure(zk) for zk in z])
    labels = _clusters(zf, 1e-2)
    print(f"d = 2: {args.n} tokens, {len(lead0)} initial hull vertices (leaders) {[int(i) for i in lead0]}")
    print(f"  t = {args.t_end:g}: {labels.max() + 1} clusters; hull area {area[0]:.4f} -> {area[-1]:.4f}; "
          f"max distance to the limit vertices {dist[-1]:.2e}")
    fit = (times >= 0.4 * args.t_end) & (times <= 0.8 * args.t_end)
    rate = -np.polyfit(times[fit], np.log(dist[fit]), 1)[0]
    print(f"  rate of convergence to the vertices (fit on t in [{0.4 * args.t_end:g}, {0.8 * args.t_end:g}]): {rate:.4f}")

    # -- d = 1: the Boolean attention matrix ------------------------------------------------
    rng1 = np.random.default_rng(args.seed1)
    y0 = np.sort(rng1.uniform(-args.scale, args.scale, size=args.n1))[:, None]
    times1 = np.linspace(0.0, args.t_end1, 121)
    tr1 = evolve_euclidean(y0, args.t_end1, beta=args.beta1, times=times1)
    bools = [nearest_boolean(tr1.attention(k)) for k in range(times1.size)]
    bdist = np.array([b[1] for b in bools])
    print(f"d = 1: {args.n1} tokens, beta = {args.beta1:g}; P(t_end) is {bdist[-1]:.1e} from a Boolean matrix "
          f"of rank {bools[-1][2]}")
    ok = (bdist > 0) & (bdist < 0.1)
    if ok.sum() >= 3:
        slope = np.polyfit(times1[ok], np.log(-np.log(bdist[ok])), 1)[0]
        print(f"  slope of log(-log dist) over t in [{times1[ok][0]:.2f}, {times1[ok][-1]:.2f}]: {slope:.4f} (V = 1)")

    path = args.out / "euclidean.png"
    _draw(path, tr, lead0, final, dist, area, labels, tr1, bools)
    print(f"wrote {path}")
    return 0


def _clusters(points: np.ndarray, tol: float) -> np.ndarray:
    """Greedy labels: each unlabelled token and everything within ``tol`` of it."""
    labels = np.full(len(points), -1)
    for i in range(len(points)):
        if labels[i] < 0:
            labels[(labels < 0) & (np.linalg.norm(points - points[i], axis=1) < tol)] = labels.max() + 1
    return labels


def _draw(path, tr, lead0, final, dist, area, labels, tr1, bools):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec
    from scipy.spatial import ConvexHull

    plt.rcParams.update({"font.size": 11})
    fig = plt.figure(figsize=(17, 9.5))
    gs = GridSpec(2, 6, figure=fig, height_ratios=[1.5, 1.0], hspace=0.42, wspace=0.5)
    z, times = tr.z, tr.times

    ax = fig.add_subplot(gs[0, 0:2])
    colours = plt.cm.tab10(labels % 10)
    for i in range(z.shape[1]):
        ax.plot(z[:, i, 0], z[:, i, 1], color=colours[i], lw=1.0, alpha=0.8)
    ax.scatter(z[0, :, 0], z[0, :, 1], s=18, color=colours, zorder=3, label="z_i(0)")
    ax.scatter(z[0, lead0, 0], z[0, lead0, 1], s=110, facecolors="none", edgecolors="k", lw=1.4, zorder=4,
               label="initial hull vertices (leaders)")
    h0 = ConvexHull(z[0])
    loop = np.append(h0.vertices, h0.vertices[0])
    ax.plot(z[0, loop, 0], z[0, loop, 1], "k--", lw=0.9, label="initial hull")
    zf = z[-1]
    hf = ConvexHull(zf)
    ax.fill(zf[hf.vertices, 0], zf[hf.vertices, 1], color="0.6", alpha=0.35, label=f"hull at t = {times[-1]:g}")
    ax.scatter(zf[:, 0], zf[:, 1], marker="*", s=160, color=colours, edgecolors="k", lw=0.5, zorder=5,
               label="limits")
    ax.set_aspect("equal")
    ax.set_title(f"d = 2, Q = K = V = I: z_i = e^(-t) x_i\n{z.shape[1]} tokens -> {labels.max() + 1} clusters")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3, framealpha=0.8)

    ax = fig.add_subplot(gs[0, 2:4])
    ax.semilogy(times, dist, label="max_i distance to the limit vertices")
    ref = dist[len(times) // 2] * np.exp(-(times - times[len(times) // 2]))
    ax.semilogy(times, ref, "k:", label="e^(-t)")
    ax.semilogy(times, area, label="hull area (non-increasing)")
    ax.set_xlabel("t")
    ax.set_title("d = 2: convergence to the polytope")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)

    ax = fig.add_subplot(gs[0, 4:6])
    t1 = tr1.times
    for i in range(tr1.z.shape[1]):
        ax.plot(t1, tr1.z[:, i, 0], lw=1.0)
    ax.set_xlabel("t")
    ax.set_ylabel("z_i(t)")
    bdist = np.array([b[1] for b in bools])
    ax2 = ax.twinx()
    ax2.semilogy(t1, np.maximum(bdist, 1e-300), "k--", lw=1.2)
    ax2.set_ylabel("dist(P(t), nearest Boolean) -- dashed")
    ax2.set_ylim(1e-40, 1.0)
    ax.set_title(f"d = 1, beta = {tr1.model.beta:g}: tokens and Boolean distance")

    picks = [0.0, 0.5, 1.0, 2.0, 3.0, t1[-1]]
    for c, tp in enumerate(picks):
        k = int(np.argmin(np.abs(t1 - tp)))
        ax = fig.add_subplot(gs[1, c])
        ax.imshow(tr1.attention(k), cmap="Blues", vmin=0.0, vmax=1.0)
        _, dk, rk = bools[k]
        ax.set_title(f"P(t = {t1[k]:.1f})\ndist {dk:.1e}, rank(B) = {rk}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if c == 0:
            ax.set_ylabel("token i (by z_i(0))")
        ax.set_xlabel("token j")
    fig.suptitle("Leaders in self-attention without layer normalization (Geshkovski et al. 2023)", fontsize=14)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

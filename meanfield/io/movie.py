"""Movies of a run (``output.movie = true``): one frame per snapshot, an animated GIF written
by matplotlib's Pillow writer (no ffmpeg needed; Pillow comes with matplotlib).

* circle and zonal PDE runs: the density profile (log scale, the axes fixed over the run);
* causal circle runs: the density over (s, theta);
* sphere PDE runs: the density on an equal-area (Mollweide) map of the cell centres;
* particle runs: the tokens (circle: their angles against the token index; sphere and
  S^{d-1}: longitude/latitude of the first three coordinates on a Mollweide map).

The title of every frame names the run (``title``) and the time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_movie", "FPS"]

#: Frames per second of the movies.
FPS = 6


def _lonlat(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float)[:, :3]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.arctan2(x[:, 1], x[:, 0]), np.arcsin(np.clip(x[:, 2], -1.0, 1.0))


def write_movie(path, mesh, snapshots, title: str = "", particles: bool = False) -> Path:
    """Write ``path`` (a ``.gif``) with one frame per entry of ``snapshots``: ``(t, rho)`` of a
    PDE run (``rho (N,)``, or ``(P, N)`` for the causal bands) or, with ``particles``,
    ``(t, x, w)`` of a particle run. Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.animation import PillowWriter
    from matplotlib.colors import LogNorm

    path = Path(path)
    if not snapshots:
        raise ValueError("a movie needs at least one snapshot")
    manifold = getattr(mesh, "manifold", "sphere") if mesh is not None else "sphere"
    first = snapshots[0]
    fig = plt.figure(figsize=(7.5, 4.2))
    writer = PillowWriter(fps=FPS)
    with writer.saving(fig, str(path), dpi=80):
        if particles:
            d = first[1].shape[1]
            for t, x, _w in snapshots:
                fig.clf()
                if d == 2:
                    ax = fig.add_subplot(111)
                    theta = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
                    ax.scatter(np.arange(len(x)), theta, s=4, color="C0")
                    ax.set_ylim(0, 2 * np.pi)
                    ax.set_yticks([0, np.pi, 2 * np.pi], ["0", "π", "2π"])
                    ax.set_xlabel("token index")
                    ax.set_ylabel("angle θ")
                else:
                    ax = fig.add_subplot(111, projection="mollweide")
                    lon, lat = _lonlat(x)
                    ax.scatter(lon, lat, s=6, color="C0", edgecolors="k", linewidths=0.2)
                    ax.grid(True, alpha=0.3)
                ax.set_title(f"{title}  t = {t:.4g}".strip(), fontsize=9)
                writer.grab_frame()
        else:
            rhos = [r for _, r in snapshots]
            top = max(float(np.max(r)) for r in rhos)
            floor = top * 1e-6
            for t, rho in snapshots:
                fig.clf()
                if rho.ndim == 2:  # causal bands x cells (circle)
                    ax = fig.add_subplot(111)
                    P, N = rho.shape
                    ax.pcolormesh(np.linspace(0, 1, P + 1), np.linspace(0, 2 * np.pi, N + 1), np.maximum(rho.T, floor),
                                  norm=LogNorm(vmin=floor, vmax=top), cmap="magma", shading="flat")
                    ax.set_xlabel("position s")
                    ax.set_ylabel("angle θ")
                elif manifold == "sphere":  # every cell on the equal-area map, one colour scale for all frames
                    from .maps import sphere_map

                    ax = fig.add_subplot(111, projection="mollweide")
                    coll = sphere_map(ax, mesh, np.maximum(rho, floor), norm=LogNorm(vmin=floor, vmax=top),
                                      colorbar=False)
                    fig.colorbar(coll, ax=ax, shrink=0.7, label="density (log scale, floored at 1e-6 x max)")
                else:
                    ax = fig.add_subplot(111)
                    angle = mesh.polar_angle(mesh.centers) if manifold == "zonal" else mesh.angles
                    ax.semilogy(angle, np.maximum(rho, floor), color="C3")
                    ax.set_ylim(floor, 2 * top)
                    ax.set_xlabel("polar angle φ" if manifold == "zonal" else "angle θ")
                    ax.set_ylabel("density")
                ax.set_title(f"{title}  t = {t:.4g}".strip(), fontsize=9)
                writer.grab_frame()
    plt.close(fig)
    return path

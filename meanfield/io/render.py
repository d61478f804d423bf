"""Pictures of densities on the sphere (matplotlib, Agg: no display, no OpenGL needed).

:func:`render_sphere` writes one PNG: the whole sphere on an equal-area (Mollweide) map
beside two orthographic views of opposite hemispheres. The first view looks at the mass
(its density-weighted mean direction, or the densest cell when the mass has no clear
mean direction), the second at the opposite side; particles are white dots with a dark
edge over the density; one colour bar below the panels (never over a disc), on a log
scale when the density spans more than two decades (the bar's label says so).
:func:`sphere_figure` builds the same figure and returns it with its axes (tests locate
points on the picture through the axes' transforms).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .maps import colour_scale, lon_lat, sphere_map, sphere_view, view_basis, view_direction

__all__ = ["render_sphere", "sphere_figure"]

#: Dots per inch of the written PNG.
DPI = 100


def _where(direction) -> str:
    lon, lat = (round(float(np.degrees(a))) + 0 for a in lon_lat(direction))
    return f"lon {lon}°, lat {lat}°"


def sphere_figure(mesh, density, title: str = "", arrows=None, points=None, window=(1500, 600)):
    """``(figure, {"map": ax, "front": ax, "back": ax, "colorbar": ax}, direction)``: the
    picture :func:`render_sphere` writes, ``window`` pixels at :data:`DPI`; ``direction``
    is the unit vector the front view looks along."""
    from matplotlib.figure import Figure

    rho = np.asarray(density, dtype=float)
    norm, label = colour_scale(rho)
    fig = Figure(figsize=(window[0] / DPI, window[1] / DPI), dpi=DPI, facecolor="white")
    top = 0.84 if title else 0.9
    bottom = 0.2
    ax_map = fig.add_axes((0.03, bottom, 0.47, top - bottom), projection="mollweide")
    coll = sphere_map(ax_map, mesh, rho, points=points, norm=norm, colorbar=False)
    ax_map.set_title("whole sphere (equal-area Mollweide map)", fontsize=10)
    direction = view_direction(mesh, rho)
    axes = {"map": ax_map}
    for name, x0, d, what in (("front", 0.53, direction, "the mass"), ("back", 0.76, -direction, "the far side")):
        ax = fig.add_axes((x0, bottom, 0.21, top - bottom))
        sphere_view(ax, mesh, rho, d, points=points, norm=norm)
        if arrows is not None:
            _arrows(ax, mesh, arrows, d)
        ax.set_title(f"{what}: seen from {_where(d)}", fontsize=10)
        axes[name] = ax
    ax_bar = fig.add_axes((0.3, 0.08, 0.4, 0.035))
    bar = fig.colorbar(coll, cax=ax_bar, orientation="horizontal")
    bar.set_label(label, fontsize=10)
    bar.ax.tick_params(labelsize=8)
    axes["colorbar"] = ax_bar
    if title:
        fig.suptitle(title, fontsize=12, y=0.97)
    return fig, axes, direction


def _arrows(ax, mesh, arrows, direction) -> None:
    """Velocity ``arrows (N, 3)`` at (a subset of) the cell centres facing ``direction``."""
    right, up, forward = view_basis(direction)
    centres = np.asarray(mesh.centers, dtype=float)
    vel = np.asarray(arrows, dtype=float)
    step = max(1, len(vel) // 1500)
    keep = np.arange(0, len(vel), step)
    keep = keep[centres[keep] @ forward > 0]
    c, w = centres[keep], vel[keep]
    ax.quiver(c @ right, c @ up, w @ right, w @ up, color="cyan", zorder=4, width=0.003)


def render_sphere(path, mesh, density, title: str = "", arrows=None, points=None, window=(1500, 600)) -> Path:
    """Write a PNG of a cell density on a sphere mesh: a Mollweide map of the whole sphere
    beside orthographic views of the hemisphere holding the mass and of the opposite one.

    Parameters
    ----------
    path : path of the PNG.
    mesh : a sphere mesh with ``vertices``, ``triangles``, ``centers`` and ``areas``.
    density : array_like, shape (N,) -- shown on a log colour scale when it spans more
        than two decades.
    title : the figure's title (e.g. case, kind, beta and time).
    arrows : optional (N, 3) velocity drawn as arrows at (a subset of) the cell centres.
    points : optional (n, 3) particle positions drawn as white dots.
    window : the picture's size in pixels.
    """
    fig, _, _ = sphere_figure(mesh, density, title=title, arrows=arrows, points=points, window=window)
    path = Path(path)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path

"""Offscreen pictures of densities on the sphere (pyvista, EGL: no display needed).

``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow`` is set (unless the user set another
window class) before VTK creates a window, so rendering works on headless machines.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["render_sphere"]

#: Two opposite view points: the picture shows the whole sphere.
VIEWS = (((2.0, 1.0, 1.0), "seen from (2, 1, 1)"), ((-2.0, -1.0, -1.0), "seen from (-2, -1, -1)"))


def render_sphere(path, mesh, density, title: str = "", arrows=None, points=None, window=(1100, 560)) -> Path:
    """Write a PNG of a cell density on a sphere mesh from two opposite view points.

    Parameters
    ----------
    path : path of the PNG.
    mesh : a sphere mesh with ``vertices`` and ``triangles``.
    density : array_like, shape (N,) -- shown on a log colour scale when it spans more
        than two decades.
    arrows : optional (N, 3) velocity drawn as glyphs at (a subset of) the cell centres.
    points : optional (n, 3) particle positions drawn as dots just above the surface.
    """
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import pyvista as pv

    from .vtk_output import surface_polydata

    rho = np.asarray(density, dtype=float)
    positive = rho[rho > 0]
    floor = positive.min() if positive.size else 1.0
    log = positive.size and rho.max() > 100 * max(floor, 1e-300)
    shown = np.maximum(rho, rho.max() * 1e-6) if log else rho
    poly = surface_polydata(mesh, {"density": shown})
    plotter = pv.Plotter(off_screen=True, shape=(1, 2), window_size=window, border=False)
    for col, (position, label) in enumerate(VIEWS):
        plotter.subplot(0, col)
        plotter.add_mesh(poly, scalars="density", cmap="magma", log_scale=bool(log), show_scalar_bar=col == 1,
                         ambient=0.35, diffuse=0.75, specular=0.0, clim=(shown.min(), shown.max()),
                         scalar_bar_args={"title": "density" + (" (log scale)" if log else ""), "vertical": False,
                                          "fmt": "%.2g", "position_x": 0.2, "position_y": 0.02, "width": 0.6,
                                          "height": 0.07, "title_font_size": 14, "label_font_size": 12,
                                          "color": "black"})
        if arrows is not None:
            vel = np.asarray(arrows, dtype=float)
            speed = np.linalg.norm(vel, axis=1)
            step = max(1, len(vel) // 1500)
            pts = pv.PolyData(np.asarray(mesh.centers)[::step] * 1.002)
            pts["velocity"] = vel[::step]
            scale = 0.08 / max(speed.max(), 1e-300)
            plotter.add_mesh(pts.glyph(orient="velocity", scale="velocity", factor=scale), color="cyan")
        if points is not None:
            plotter.add_points(np.asarray(points, dtype=float) * 1.01, color="deepskyblue", point_size=4,
                               render_points_as_spheres=True)
        plotter.add_text(f"{title}, {label}" if title else label, font_size=10, color="black")
        plotter.set_background("white")
        plotter.camera_position = [tuple(4.3 * np.asarray(position) / np.linalg.norm(position)), (0, 0, 0), (0, 0, 1)]
        # orthographic views: each shows a full hemisphere, the two together the whole sphere
        plotter.enable_parallel_projection()
        plotter.camera.parallel_scale = 1.08
    path = Path(path)
    plotter.screenshot(str(path))
    plotter.close()
    return path

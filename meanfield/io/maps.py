"""Matplotlib pictures of cell values on a sphere mesh (no cartopy, no display needed).

:func:`sphere_map`
    the whole sphere on one equal-area map (matplotlib's ``"mollweide"`` projection):
    every triangle is drawn as a polygon in longitude/latitude, a triangle that crosses the
    date line (longitude +-pi) is drawn twice, shifted by 2 pi, and clipped to the map's
    ellipse, so none smears across the map.
:func:`sphere_view`
    an orthographic view of the hemisphere facing a direction (the triangles facing the
    viewer, in painter's order), on ordinary axes of aspect one.
:func:`colour_scale`
    the colour normalisation both use: a log scale when the values span more than two
    decades.
:func:`view_direction`
    where to look: the density-weighted mean direction, or the densest cell when the mass
    has no clear mean direction (e.g. two opposite clusters).

The map's data coordinates are longitude and latitude in radians, so
``ax.transData.transform((lon, lat))`` is the pixel of a point; a view's data
coordinates are the point's components along the view's right and up vectors
(:func:`view_basis`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DECADES", "FLOOR", "colour_scale", "lon_lat", "sphere_map", "sphere_view", "view_basis",
           "view_direction"]

#: Values spanning more than this many decades are shown on a log scale.
DECADES = 2.0
#: On a log scale, values below ``FLOOR x max`` are shown at the floor.
FLOOR = 1e-6
#: Default colour map.
CMAP = "magma"
#: Particle dots: white with a dark edge, visible over any colour of the map.
POINT_STYLE = {"s": 14, "c": "white", "edgecolors": "#202020", "linewidths": 0.7, "zorder": 5}


def point_style(n: int) -> dict:
    """The particles' marker: :data:`POINT_STYLE` (white, dark rim) up to 256 particles;
    more get smaller dots with a thinner rim (area ~ 1/sqrt(n), 3.5 at 4096, at least 1), so a
    cloud of thousands does not paint over the density it is drawn on."""
    if n <= 256:
        return dict(POINT_STYLE)
    scale = (256.0 / n) ** 0.5
    return {**POINT_STYLE, "s": max(1.0, 14.0 * scale), "linewidths": max(0.15, 0.7 * scale), "alpha": 0.85}


def lon_lat(xyz) -> tuple[np.ndarray, np.ndarray]:
    """Longitude in (-pi, pi] and latitude in [-pi/2, pi/2] of points ``(..., 3)``."""
    p = np.asarray(xyz, dtype=float)
    r = np.linalg.norm(p, axis=-1)
    lat = np.arcsin(np.clip(p[..., 2] / np.where(r > 0, r, 1.0), -1.0, 1.0))
    return np.arctan2(p[..., 1], p[..., 0]), lat


def colour_scale(values, log=None, label: str = "density"):
    """``(norm, label)`` for ``values``: a :class:`~matplotlib.colors.LogNorm` when ``log``
    (``None``: when the positive values span more than :data:`DECADES` decades), values
    below ``FLOOR x max`` shown at the floor (the label says so); else a linear norm."""
    from matplotlib.colors import LogNorm, Normalize

    v = np.asarray(values, dtype=float)
    top = float(v.max()) if v.size else 1.0
    positive = v[v > 0]
    if log is None:
        log = bool(positive.size) and top > 10.0 ** DECADES * positive.min()
    if log and top > 0:
        low = max(float(positive.min()), FLOOR * top)
        floored = low > positive.min() or positive.size < v.size
        text = f"{label} (log scale" + (f", floored at {FLOOR:g} x max)" if floored else ")")
        return LogNorm(vmin=low, vmax=top, clip=True), text
    low = float(v.min()) if v.size else 0.0
    return Normalize(vmin=low, vmax=top if top > low else low + 1.0), label


def view_direction(mesh, values) -> np.ndarray:
    """Unit vector to look along: the direction of ``sum(values x areas x centres)`` when it
    holds at least a third of the mass's weight, else the centre of the densest cell (the
    largest cluster's peak)."""
    v = np.asarray(values, dtype=float)
    centres = np.asarray(mesh.centers, dtype=float)
    weights = np.clip(v, 0.0, None) * np.asarray(mesh.areas, dtype=float)
    mean = weights @ centres
    total = weights.sum()
    if total > 0 and np.linalg.norm(mean) >= total / 3.0:
        return mean / np.linalg.norm(mean)
    c = centres[int(np.argmax(v))]
    return c / np.linalg.norm(c)


def view_basis(direction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(right, up, forward)``: ``forward`` the unit direction to the viewer, ``up`` the
    north pole's projection (the x axis's when looking along a pole)."""
    d = np.asarray(direction, dtype=float)
    d = d / np.linalg.norm(d)
    north = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.99 else np.array([1.0, 0.0, 0.0])
    up = north - (north @ d) * d
    up /= np.linalg.norm(up)
    return np.cross(up, d), up, d


def _map_polygons(mesh) -> tuple[np.ndarray, np.ndarray]:
    """``(polygons (M, 5, 2) in lon/lat, cell index (M,))`` of the triangles of ``mesh``:
    longitudes unwrapped around each triangle's centre; a triangle reaching past +-pi is
    repeated shifted by -+2 pi; a triangle around a pole becomes a polygon up to it."""
    vertices = np.asarray(mesh.vertices, dtype=float)
    tri = np.asarray(mesh.triangles)
    corners = vertices[tri]  # (T, 3, 3)
    lon, lat = lon_lat(corners)
    centre_lon, _ = lon_lat(corners.sum(axis=1))
    lon = centre_lon[:, None] + (lon - centre_lon[:, None] + np.pi) % (2 * np.pi) - np.pi
    # corners 4 and 5 repeat the 3rd: one array for triangles and the pole caps
    polys = np.stack([lon, lat], axis=-1)[:, [0, 1, 2, 2, 2]]
    # a triangle around a pole (the pole strictly inside every edge): its corners in order
    # of longitude, the first again 2 pi on, then the pole (one point of the map)
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    orient = np.sign(np.einsum("td,td->t", a, np.cross(b, c)))
    for sign in (1.0, -1.0):
        sides = [np.cross(p, q)[:, 2] * sign * orient for p, q in ((a, b), (b, c), (c, a))]
        for t in np.flatnonzero(np.all(np.array(sides) > 0, axis=0)):
            raw = np.arctan2(corners[t, :, 1], corners[t, :, 0])
            order = np.argsort(raw)
            lo, la = raw[order], lat[t, order]
            polys[t] = [[lo[0], la[0]], [lo[1], la[1]], [lo[2], la[2]], [lo[0] + 2 * np.pi, la[0]],
                        [lo[0] + np.pi, sign * np.pi / 2]]
    cells = np.arange(len(tri))
    high = np.flatnonzero(polys[..., 0].max(axis=1) > np.pi)
    low = np.flatnonzero(polys[..., 0].min(axis=1) < -np.pi)
    extra = [polys[high] - [2 * np.pi, 0.0], polys[low] + [2 * np.pi, 0.0]]
    return np.concatenate([polys, *extra]), np.concatenate([cells, high, low])


def sphere_map(ax, mesh, values, points=None, log=None, cmap: str = CMAP, norm=None, colorbar: bool = True,
               label: str = "density", grid: bool = True):
    """Draw cell ``values`` of a sphere ``mesh`` on ``ax`` (made with
    ``projection="mollweide"``), with ``points`` ``(n, 3)`` (particles) as white dots with a
    dark edge, a colour bar below the map (``colorbar``; on a log scale when the values span
    more than two decades, or as ``log`` says, and the bar's label says so). ``norm``
    overrides the colour scale (e.g. one shared by several panels). Returns the
    :class:`~matplotlib.collections.PolyCollection` (its ``norm`` and ``cmap`` feed a
    shared colour bar)."""
    from matplotlib.collections import PolyCollection

    v = np.asarray(values, dtype=float)
    if norm is None:
        norm, label = colour_scale(v, log=log, label=label)
    polys, cells = _map_polygons(mesh)
    # project the vertices only (matplotlib would interpolate every edge of every polygon)
    xy = ax.transProjection.transform(polys.reshape(-1, 2)).reshape(polys.shape)
    flat = ax.transAffine + ax.transAxes
    coll = PolyCollection(xy, array=v[cells], cmap=cmap, norm=norm, edgecolors="face", linewidths=0.25,
                          transform=flat, antialiased=True)
    coll.set_clip_path(ax.patch)
    ax.add_collection(coll)
    if points is not None:
        lon, lat = lon_lat(points)
        pxy = ax.transProjection.transform(np.column_stack([lon, lat]))
        ax.scatter(pxy[:, 0], pxy[:, 1], transform=flat, **point_style(len(pxy)))
    if grid:
        ax.grid(True, color="0.6", linewidth=0.4, alpha=0.6)
        ax.tick_params(labelsize=7, colors="0.35")
    ax.set_facecolor("black")
    if colorbar:
        bar = ax.figure.colorbar(coll, ax=ax, orientation="horizontal", fraction=0.06, pad=0.08, shrink=0.8)
        bar.set_label(label)
    return coll


def sphere_view(ax, mesh, values, direction, points=None, cmap: str = CMAP, norm=None, log=None,
                label: str = "density"):
    """Draw the hemisphere of ``mesh`` facing ``direction`` orthographically on ``ax`` (data
    coordinates: components along :func:`view_basis`'s right and up), with the particles on
    that side. Returns the :class:`~matplotlib.collections.PolyCollection`."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Circle

    v = np.asarray(values, dtype=float)
    if norm is None:
        norm, label = colour_scale(v, log=log, label=label)
    right, up, forward = view_basis(direction)
    vertices = np.asarray(mesh.vertices, dtype=float)
    vertices = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    corners = vertices[np.asarray(mesh.triangles)]
    depth = corners.mean(axis=1) @ forward
    # every triangle with a corner in front; painter's order: the nearest drawn last
    front = np.flatnonzero((corners @ forward).max(axis=1) > 0)
    front = front[np.argsort(depth[front])]
    xy = np.stack([corners[front] @ right, corners[front] @ up], axis=-1)
    coll = PolyCollection(xy, array=v[front], cmap=cmap, norm=norm, edgecolors="face", linewidths=0.25)
    coll.set_clip_path(Circle((0, 0), 1.0, transform=ax.transData))
    ax.add_collection(coll)
    ax.add_patch(Circle((0, 0), 1.0, fill=False, edgecolor="0.3", linewidth=0.8, zorder=4))
    if points is not None:
        p = np.asarray(points, dtype=float)
        style = point_style(len(p))  # by the whole count, the same dots as on the map
        p = p[p @ forward > 0]
        ax.scatter(p @ right, p @ up, **style)
    ax.set_xlim(-1.04, 1.04)
    ax.set_ylim(-1.04, 1.04)
    ax.set_aspect("equal")
    ax.set_axis_off()
    return coll

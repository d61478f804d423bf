"""Plans: a fixed point set prepared once for one field backend, reused by every call.

``plan = field.plan(points)`` returns a :class:`PointPlan`: a read-only copy of the points
and, filled on first use and kept for every later call, what the backend precomputes for
them -- the angles and local frames of the spherical transforms
(:class:`~meanfield.fields.spectral_sphere.SpectralSphereField`), the rotated points and
their angles (:class:`~meanfield.fields.spectral_sphere_general.GeneralSphereField`), the
per-target Bessel arguments or source phases of
:class:`~meanfield.fields.spectral_circle.SpectralCircleField`; nothing for
:class:`~meanfield.fields.attention.DirectField`. A plan stands wherever the backend takes
points: as the targets of ``field(plan, sources, weights)`` and ``field.evaluate(plan,
coeffs, ...)``, as the sources of ``field.coefficients(plan, weights)`` (one plan may serve
both roles: each role prepares its own items). Raw arrays stay valid everywhere (prepared
for that call only), and so does a plan made by another backend (its points are used).

The finite-volume operator makes its plans once (the edge points, the cell centres) and
passes them at every stage; particles, whose points move, pass raw arrays.
:func:`make_plan` makes a plan where the backend has ``plan`` (any callable ``(targets,
sources, weights)`` still serves as a field) and :func:`as_points` reads the points of
either.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PointPlan", "as_points", "make_plan"]


class PointPlan:
    """The points of a fixed point set and what one backend prepared for them.

    ``field`` is the backend that made it (only that backend reads the prepared items);
    ``points`` the ``(N, d)`` float array, read-only. ``len(plan)`` and ``plan.shape`` are
    those of the points (so code that counts targets works with either).
    """

    __slots__ = ("field", "points", "_prepared")

    def __init__(self, field, points, copy: bool = True):
        pts = np.array(points, dtype=float, order="C", copy=True) if copy else np.ascontiguousarray(points, dtype=float)
        if copy:
            pts.flags.writeable = False
        self.field = field
        self.points = pts
        self._prepared: dict = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return self.points.shape

    def __len__(self) -> int:
        return self.points.shape[0]

    def prepared(self, key, make):
        """The item ``key``, made by ``make(points)`` on first use and kept."""
        try:
            return self._prepared[key]
        except KeyError:
            value = self._prepared[key] = make(self.points)
            return value

    def __repr__(self) -> str:
        name = getattr(self.field, "name", type(self.field).__name__)
        return f"PointPlan({self.points.shape[0]} points, {name}, prepared {sorted(map(str, self._prepared))})"


def as_points(points):
    """The points of a :class:`PointPlan`, else ``points`` itself (a raw array)."""
    return points.points if isinstance(points, PointPlan) else points


def make_plan(field, points):
    """``field.plan(points)`` where the backend makes plans, else ``points`` unchanged."""
    make = getattr(field, "plan", None)
    return points if make is None else make(points)


def own_plan(field, points) -> PointPlan:
    """``points`` itself when it is a plan of ``field``, else a plan of its points for one call
    (not copied, prepared for that call only)."""
    if isinstance(points, PointPlan) and points.field is field:
        return points
    return PointPlan(field, as_points(points), copy=False)

"""The skeleton the spectral field backends share.

:class:`SpectralField` is the base of :class:`~meanfield.fields.spectral_circle.SpectralCircleField`,
:class:`~meanfield.fields.spectral_sphere.SpectralSphereField` and
:class:`~meanfield.fields.spectral_sphere_general.GeneralSphereField`: the
:class:`~meanfield.fields.attention.AttentionField` protocol in two phases (``__call__`` =
:meth:`~SpectralField.evaluate` of the :meth:`~SpectralField.coefficients` of the measure),
the plans of fixed point sets (:meth:`~SpectralField.plan`, :mod:`meanfield.fields.plans`),
the checked measure without its zero weights, and the tangential projection.
:class:`SphereSpectralField` adds the evaluation both S^2 backends run: read the total
weight from the coefficients, the constant field of a vanishing interaction, the transforms
with their error estimate, and for the SA targets whose estimate exceeds the tolerance the
backend's split (heavy sources direct, the light rest transformed: ``last_split_count``) and
then the direct fallback (``last_fallback_count``).
"""

from __future__ import annotations

import numpy as np

from .attention import AttentionModel, DirectField, check_field_inputs, check_sources, check_targets, single_thread_blas
from .plans import PointPlan, as_points

__all__ = ["SpectralField", "SphereSpectralField"]


class SpectralField:
    """Base of the spectral backends: ``name``, ``model``, ``tolerance`` and the protocol.

    Subclasses set ``model`` and ``tolerance`` and implement :meth:`coefficients` (the
    measure's part, linear in the weights: MPI ranks sum their parts) and :meth:`evaluate`.
    Both take a :class:`~meanfield.fields.plans.PointPlan` of this field (:meth:`plan`) or
    raw points; the backend keeps what it prepares for a point set in its plan.
    """

    name = "spectral"
    model: AttentionModel
    tolerance: float

    def plan(self, points) -> PointPlan:
        """A :class:`~meanfield.fields.plans.PointPlan` of ``points`` (checked, copied): pass it
        for the targets (:meth:`evaluate`, ``__call__``) or the sources (:meth:`coefficients`)
        of every later call; what this backend prepares for the points is made on first use
        and kept in the plan."""
        return PointPlan(self, check_targets(self.model, as_points(points)))

    def __call__(self, targets, sources, weights, project: bool = True):
        """The field at ``targets``; ``project=False``: the attention average before ``P_x``.
        ``targets``, ``sources``: plans (:meth:`plan`) or arrays; the same array for both (the
        particles' ``field(x, x, w)``) is prepared once for both roles."""
        x, y, w = check_field_inputs(self.model, as_points(targets), as_points(sources), weights)
        tplan = self._plan_of(targets, x)
        splan = tplan if sources is targets else self._plan_of(sources, y)
        return self.evaluate(tplan, self.coefficients(splan, w), y, w, project=project)

    def _plan_of(self, points, checked: np.ndarray) -> PointPlan:
        """``points`` when it is a plan of this field, else a plan of the ``checked`` array
        (:func:`~meanfield.fields.attention.check_targets` of its points) for one call."""
        if isinstance(points, PointPlan) and points.field is self:
            return points
        return PointPlan(self, checked, copy=False)

    def coefficients(self, sources, weights) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, targets, coeffs, sources=None, weights=None, project: bool = True) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - abstract

    def _measure(self, sources, weights, always_copy: bool = False) -> tuple[PointPlan, np.ndarray, np.ndarray]:
        """``(plan, y, w)``: the checked sources and weights of a (partial) measure without its
        zero weights, and the plan of those sources (the caller's plan of this field when no
        weight is zero, else one for this call)."""
        y, w = check_sources(self.model, as_points(sources), weights, partial=True)
        keep = w > 0
        if np.all(keep):
            plan = self._plan_of(sources, y)
            if always_copy:
                y, w = y[keep], w[keep]
            return plan, y, w
        y, w = y[keep], w[keep]
        return PointPlan(self, y, copy=False), y, w

    @staticmethod
    def _project(out: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``P_x`` in place: the tangential projection of the rows of ``out`` at ``x``."""
        out -= np.einsum("ij,ij->i", out, x)[:, None] * x
        return out


class SphereSpectralField(SpectralField):
    """The evaluation both S^2 backends share, from five hooks.

    :meth:`_read_coefficients` (shape check, the array and the total weight ``W``),
    :meth:`_vanishes` (the field is zero), ``_degenerate`` (the interaction vanishes: the
    coefficients are ``[W, sum_j w_j y_j]``) with :meth:`_constant_field`, and
    :meth:`_transform_field` (USA: the field; SA: the field and its estimated error per
    target, ``inf`` where unresolved); and :meth:`_split` for the SA targets above the
    tolerance, before the direct fallback.
    """

    last_fallback_count = 0
    last_split_count = 0
    _degenerate = False

    def _read_coefficients(self, coeffs) -> tuple[np.ndarray, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _vanishes(self) -> bool:
        return False

    def _constant_field(self, coeffs: np.ndarray, total: float) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform_field(self, plan, coeffs, total, project):  # pragma: no cover - abstract
        raise NotImplementedError

    def _split(self, plan, fallback, out, err, sources, weights, project) -> np.ndarray:
        """SA targets ``fallback`` (a mask of ``plan``'s points) whose transformed field missed
        the tolerance, recomputed by the split: the heaviest sources summed directly, the light
        rest transformed from its own moments (:func:`~meanfield.fields.sphere_transforms.split_sources`
        picks them; :meth:`_split_field` evaluates). ``out`` is updated in place for the targets
        now within the tolerance (``last_split_count``); returns the mask of those still left to
        :class:`~meanfield.fields.attention.DirectField` (all of them when the split would not
        pay: ``_split_cost`` is ``None`` for a backend without a split)."""
        from .sphere_transforms import split_sources

        y, w = check_sources(self.model, as_points(sources), weights)
        keep = w > 0
        y, w = y[keep], w[keep]
        F = np.flatnonzero(fallback)
        cost = self._split_cost(F.size, w.size)
        picked = None if cost is None else split_sources(w, err[F], self.tolerance, cost)
        if picked is None:
            return fallback
        got, new_err = self._split_field(plan, F, y, w, *picked, project)
        ok = new_err <= self.tolerance
        out[F[ok]] = got[ok]
        self.last_split_count = int(ok.sum())
        rest = fallback.copy()
        rest[F[ok]] = False
        return rest

    def _split_cost(self, n_targets: int, n_sources: int) -> float | None:
        """The cost (pair evaluations) of this backend's transforms for the split, ``None``: no split."""
        return None

    def _split_field(self, plan, F, y, w, light, heavy, w_light, project):  # pragma: no cover - abstract
        """``(field, error estimate)`` at the targets ``F`` of ``plan`` from the light sources
        (transformed) and the heavy ones (summed directly)."""
        raise NotImplementedError

    def evaluate(self, targets, coeffs, sources=None, weights=None, project: bool = True) -> np.ndarray:
        """The field at ``targets`` from the :meth:`coefficients` of the whole measure.

        ``targets``: a plan of this field (:meth:`plan`) or an array. ``sources, weights``
        (the whole measure) serve only the SA direct fallback; USA does not need them. The
        total weight comes from the coefficients. ``project=False``: the attention average
        before the tangential projection.
        """
        x = check_targets(self.model, as_points(targets))
        plan = self._plan_of(targets, x)
        normalized = self.model.normalized
        coeffs, total = self._read_coefficients(coeffs)
        if normalized and not total > 0:
            raise ValueError("SA field needs a positive total weight")
        self.last_fallback_count = self.last_split_count = 0
        out = np.zeros_like(x)
        if x.shape[0] == 0 or self._vanishes() or not total > 0:
            return out
        with single_thread_blas():
            if self._degenerate:
                out[:] = self._constant_field(coeffs, total)
            elif not normalized:
                out = self._transform_field(plan, coeffs, total, project)
            else:
                out, err = self._transform_field(plan, coeffs, total, project)
                fallback = err > self.tolerance
                if fallback.any():
                    if sources is None or weights is None:
                        raise ValueError("the SA direct fallback needs the sources and weights of the whole measure")
                    fallback = self._split(plan, fallback, out, err, sources, weights, project)
                count = int(fallback.sum())
                if count:
                    out[fallback] = DirectField(self.model)(x[fallback], sources, weights, project=project)
                self.last_fallback_count = count
        if project:
            self._project(out, x)
        return out

"""The skeleton the spectral field backends share.

:class:`SpectralField` is the base of :class:`~meanfield.fields.spectral_circle.SpectralCircleField`,
:class:`~meanfield.fields.spectral_sphere.SpectralSphereField` and
:class:`~meanfield.fields.spectral_sphere_general.GeneralSphereField`: the
:class:`~meanfield.fields.attention.AttentionField` protocol in two phases (``__call__`` =
:meth:`~SpectralField.evaluate` of the :meth:`~SpectralField.coefficients` of the measure),
the checked measure without its zero weights, and the tangential projection.
:class:`SphereSpectralField` adds the evaluation both S^2 backends run: read the total
weight from the coefficients, the constant field of a vanishing interaction, the transforms
with their error estimate, and the direct fallback for the SA targets whose estimate
exceeds the tolerance (``last_fallback_count``).
"""

from __future__ import annotations

import numpy as np

from .attention import AttentionModel, DirectField, check_field_inputs, check_sources, check_targets, single_thread_blas

__all__ = ["SpectralField", "SphereSpectralField"]


class SpectralField:
    """Base of the spectral backends: ``name``, ``model``, ``tolerance`` and the protocol.

    Subclasses set ``model`` and ``tolerance`` and implement :meth:`coefficients` (the
    measure's part, linear in the weights: MPI ranks sum their parts) and :meth:`evaluate`.
    """

    name = "spectral"
    model: AttentionModel
    tolerance: float

    def __call__(self, targets, sources, weights, project: bool = True):
        """The field at ``targets``; ``project=False``: the attention average before ``P_x``."""
        x, y, w = check_field_inputs(self.model, targets, sources, weights)
        return self.evaluate(x, self.coefficients(y, w), y, w, project=project)

    def coefficients(self, sources, weights) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, targets, coeffs, sources=None, weights=None, project: bool = True) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - abstract

    def _measure(self, sources, weights, always_copy: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The checked sources and weights of a (partial) measure without its zero weights."""
        y, w = check_sources(self.model, sources, weights, partial=True)
        keep = w > 0
        if always_copy or not np.all(keep):
            y, w = y[keep], w[keep]
        return y, w

    @staticmethod
    def _project(out: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``P_x`` in place: the tangential projection of the rows of ``out`` at ``x``."""
        out -= np.einsum("ij,ij->i", out, x)[:, None] * x
        return out


class SphereSpectralField(SpectralField):
    """The evaluation both S^2 backends share, from four hooks.

    :meth:`_read_coefficients` (shape check, the array and the total weight ``W``),
    :meth:`_vanishes` (the field is zero), ``_degenerate`` (the interaction vanishes: the
    coefficients are ``[W, sum_j w_j y_j]``) with :meth:`_constant_field`, and
    :meth:`_transform_field` (USA: the field; SA: the field and its estimated error per
    target, ``inf`` where unresolved).
    """

    last_fallback_count = 0
    _degenerate = False

    def _read_coefficients(self, coeffs) -> tuple[np.ndarray, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _vanishes(self) -> bool:
        return False

    def _constant_field(self, coeffs: np.ndarray, total: float) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform_field(self, x, coeffs, total, project):  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, targets, coeffs, sources=None, weights=None, project: bool = True) -> np.ndarray:
        """The field at ``targets`` from the :meth:`coefficients` of the whole measure.

        ``sources, weights`` (the whole measure) serve only the SA direct fallback; USA does
        not need them. The total weight comes from the coefficients. ``project=False``: the
        attention average before the tangential projection.
        """
        x = check_targets(self.model, targets)
        normalized = self.model.normalized
        coeffs, total = self._read_coefficients(coeffs)
        if normalized and not total > 0:
            raise ValueError("SA field needs a positive total weight")
        self.last_fallback_count = 0
        out = np.zeros_like(x)
        if x.shape[0] == 0 or self._vanishes() or not total > 0:
            return out
        with single_thread_blas():
            if self._degenerate:
                out[:] = self._constant_field(coeffs, total)
            elif not normalized:
                out = self._transform_field(x, coeffs, total, project)
            else:
                out, err = self._transform_field(x, coeffs, total, project)
                fallback = err > self.tolerance
                count = int(fallback.sum())
                if count:
                    if sources is None or weights is None:
                        raise ValueError("the SA direct fallback needs the sources and weights of the whole measure")
                    out[fallback] = DirectField(self.model)(x[fallback], sources, weights, project=project)
                self.last_fallback_count = count
        if project:
            self._project(out, x)
        return out

"""The choice of a field backend for one attention head.

:func:`make_backend` is the one place that maps ``solver.backend`` (``"direct"``,
``"spectral"``, ``"auto"``) and a head's kernel to a backend object; the PDE, the particles
and :mod:`meanfield.budget` all resolve ``"auto"`` through it, head by head.
"""

from __future__ import annotations

import logging

from .attention import AttentionModel, DirectField

__all__ = ["make_backend"]

log = logging.getLogger("meanfield")


#: Cost of the causal prefix-sum paths per token, in direct pair evaluations (about 5.5 ns on
#: one core; benchmarks/bench_causal.py): circle ``36 + 3 L``; isotropic sphere ``10 (L + 1)^2``.
_CAUSAL_CIRCLE = (36.0, 3.0)
_CAUSAL_SPHERE = 10.0


def make_backend(model: AttentionModel, backend: str = "auto", tolerance: float = 1e-10, n_targets: int | None = None,
                 n_sources: int | None = None, tokens: bool = False):
    """The serial backend named ``backend`` for one head ``model`` (see
    :func:`meanfield.pde.solver.make_field`, which adds the MPI split of the targets).

    ``tokens``: the head will evaluate causal tokens (:func:`meanfield.fields.causal.causal_tokens`,
    ``n_targets`` of them): ``"auto"`` then weighs the backend's prefix-sum path (circle: any
    ``Q, K, V``; sphere: isotropic heads) against the ``n (n + 1) / 2`` masked direct pairs."""
    if backend == "direct":
        return DirectField(model)
    if backend not in ("spectral", "auto"):
        raise ValueError(f"unknown backend {backend!r} (choose 'direct', 'spectral' or 'auto')")
    if tokens and backend == "auto":
        return _causal_auto(model, tolerance, n_targets)
    if model.d == 2:
        from . import spectral_circle as spectral

        cost_of, build = spectral.spectral_cost, spectral.SpectralCircleField
    elif model.d == 3:
        # any Q, K, V: Funk--Hecke for isotropic models, else the separable expansion
        # (spectral_sphere_general), refused (ValueError) when its matrix is too large
        from . import spectral_sphere_general as spectral

        cost_of, build = spectral.spectral_sphere_cost, spectral.spectral_sphere_field
    else:
        if backend == "spectral":
            raise ValueError("the spectral backend needs the circle or the sphere; use 'direct' or 'auto'")
        return DirectField(model)
    if backend == "auto":
        if n_targets is None or n_sources is None:
            return DirectField(model)
        cost = cost_of(model, n_targets, n_sources, tolerance)
        if not cost < 0.5 * n_targets * n_sources:
            log.info("backend auto: direct (spectral estimated at %.3g pair evaluations, direct %.3g)", cost,
                     float(n_targets) * n_sources)
            return DirectField(model)
    field = build(model, tolerance=tolerance)
    log.info("backend %s: %r", backend, field)  # the truncation chosen for beta, Q, K, V and the tolerance
    return field


def _causal_auto(model: AttentionModel, tolerance: float, n: int | None):
    """``"auto"`` for causal tokens: the prefix sums where they exist and cost less than half
    the masked direct sums."""
    if n is None or model.d not in (2, 3):
        return DirectField(model)
    if model.d == 2:
        from .spectral_circle import SpectralCircleField

        field = SpectralCircleField(model, tolerance=tolerance)
        per_token = _CAUSAL_CIRCLE[0] + _CAUSAL_CIRCLE[1] * field.truncation
    else:
        if model.isotropic() is None:
            return DirectField(model)  # no prefix-sum path for a general Q, K on the sphere
        from .spectral_sphere import SpectralSphereField

        field = SpectralSphereField(model, tolerance=tolerance)
        per_token = _CAUSAL_SPHERE * (field.lmax + 1) ** 2
    direct = 0.5 * n * (n + 1)
    if not per_token * n < 0.5 * direct:
        log.info("backend auto: direct for causal tokens (prefix sums estimated at %.3g pair evaluations, masked "
                 "direct %.3g)", per_token * n, direct)
        return DirectField(model)
    log.info("backend auto: causal prefix sums %r", field)
    return field

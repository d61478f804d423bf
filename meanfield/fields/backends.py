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


def make_backend(model: AttentionModel, backend: str = "auto", tolerance: float = 1e-10, n_targets: int | None = None,
                 n_sources: int | None = None):
    """The serial backend named ``backend`` for one head ``model`` (see
    :func:`meanfield.pde.solver.make_field`, which adds the MPI split of the targets)."""
    if backend == "direct":
        return DirectField(model)
    if backend not in ("spectral", "auto"):
        raise ValueError(f"unknown backend {backend!r} (choose 'direct', 'spectral' or 'auto')")
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

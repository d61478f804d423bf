r"""What noise does to the dynamics, in closed form (SPEC section 5, "Noise").

With ``model.noise = sigma`` the tokens move by ``dx = X dt + sigma dB`` (B a Brownian motion
on S^{d-1}) and the density by ``d/dt rho + div_S(rho X) = (sigma^2 / 2) Lap_S rho``. About the
uniform state a degree-``l`` harmonic then grows at

.. math::  \sigma_l - \frac{\sigma^2}{2} l (l + d - 2),

so the uniform state is stable above the **critical noise**
``sigma_c^2 = 2 max_l sigma_l / (l (l + d - 2))``. At ``beta = 0`` (``V = I``) the stationary
states are von Mises--Fisher densities ``exp(kappa <m, x>)`` with ``kappa = 2 r / sigma^2``,
the order parameter ``r`` solving ``r = A_d(kappa)``, ``A_d = I_{d/2} / I_{d/2 - 1}``
(``I_1 / I_0`` on S^1, ``coth kappa - 1/kappa`` on S^2); below ``sigma_c^2 = 2 / d`` it has a
root ``r > 0``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

from .model import Terms

__all__ = ["noisy_growth_rates", "critical_noise", "vmf_order_parameter", "mean_resultant_length"]


def noisy_growth_rates(terms: Terms, l, sigma: float) -> np.ndarray:
    """The linear rates of degree-``l`` harmonics about the uniform state with noise ``sigma``:
    :meth:`Terms.growth_rates` minus ``(sigma^2 / 2) l (l + d - 2)``."""
    l = np.asarray(l, dtype=float)
    return terms.growth_rates(l) - 0.5 * sigma**2 * l * (l + terms.d - 2)


def critical_noise(terms: Terms, max_mode: int = 64) -> tuple[float, int]:
    """``(sigma_c, l_c)``: the noise above which the uniform state is linearly stable, and the
    degree that goes unstable first below it (``sigma_c = 0`` when no degree grows)."""
    l = np.arange(1, max_mode + 1, dtype=float)
    ratio = terms.growth_rates(l) / (l * (l + terms.d - 2))
    best = int(np.argmax(ratio))
    if not ratio[best] > 0:
        return 0.0, 0
    return math.sqrt(2.0 * ratio[best]), best + 1


def mean_resultant_length(kappa, d: int):
    """``A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa)``: the order parameter ``|E x|`` of the von
    Mises--Fisher law ``exp(kappa <m, x>)`` on S^{d-1} (exponentially scaled, any ``kappa >= 0``)."""
    kappa = np.asarray(kappa, dtype=float)
    nu = d / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = special.ive(nu, kappa) / special.ive(nu - 1.0, kappa)
    return np.where(kappa == 0.0, 0.0, out)


def vmf_order_parameter(sigma: float, d: int = 2) -> float:
    """The order parameter ``r`` of the stationary state of the consensus model (``beta = 0``,
    ``V = I``) with noise ``sigma``: the positive root of ``r = A_d(2 r / sigma^2)`` below
    ``sigma_c = sqrt(2 / d)``, else 0 (the uniform state)."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if sigma == 0.0:
        return 1.0
    if sigma**2 >= 2.0 / d:
        return 0.0
    s2 = sigma**2

    def gap(r):
        return float(mean_resultant_length(2.0 * r / s2, d)) - r

    # gap > 0 near 0 (slope 2 / (d s2) > 1 below sigma_c), gap(1) < 0
    return float(optimize.brentq(gap, 1e-12, 1.0, xtol=1e-15, rtol=4 * np.finfo(float).eps))

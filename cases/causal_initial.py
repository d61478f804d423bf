"""Initial densities f(s, x) of the causal cases (``initial.function = "causal_initial.py:NAME"``).

A causal case's function takes the prompt positions ``s`` (n,) in [0, 1] and the points ``x``
(n, d) and returns densities (n,); every position's density is normalized to mass 1 by the
solver (and the particle sampler draws token i from ``f(i/n, .)``).
"""

import numpy as np


def rotating_modes(s, x):
    """Circle: a second mode whose phase turns by pi along the prompt, plus a fixed third mode:
    ``1 + 0.3 cos(2 (theta - pi s)) + 0.1 cos(3 theta + 1)``."""
    theta = np.arctan2(x[:, 1], x[:, 0])
    return 1.0 + 0.3 * np.cos(2.0 * (theta - np.pi * s)) + 0.1 * np.cos(3.0 * theta + 1.0)


def drifting_caps(s, x):
    """Sphere: two von Mises--Fisher caps (kappa 3) at e_1 and -e_1 whose weights trade places
    along the prompt (early tokens mostly near e_1, late ones mostly near -e_1), and a weak cap
    at e_2 at every position."""
    return (1.0 - s) * np.exp(3.0 * x[:, 0]) + s * np.exp(-3.0 * x[:, 0]) + 0.3 * np.exp(3.0 * x[:, 1])


def antipodal(s, x):
    """Any dimension: caps (kappa 3) at e_1 and -e_1 whose weights trade places along the
    prompt: ``(1 - s) exp(3 x_1) + s exp(-3 x_1)``."""
    return (1.0 - s) * np.exp(3.0 * x[:, 0]) + s * np.exp(-3.0 * x[:, 0])

r"""Lost in the middle: the soft retrieval accuracy of causal self-attention on the circle.

Duerinckx, Geshkovski, Rossi, *Kinetic theory for Transformers and the lost-in-the-middle
phenomenon*, arXiv:2605.09213 (2026); the authors' scripts
``generate_u_shape_numerology_data.py`` (the profile) and
``generate_alibi_particle_circle_dynamics.py`` (the particles) at
github.com/borjanG/2026-lost-in-the-middle. docs/retrieval.md has the derivation and the
measurements.

The model
---------
``n`` tokens ``theta_1..theta_n`` on the circle at positions ``s_i = i / n``; causal SA with
``Q = K = V = I`` and the ALiBi slope ``lambda`` (:mod:`meanfield.fields.causal`): token ``i``
attends to ``j <= i`` with logit ``beta cos(theta_i - theta_j) - lambda (i - j) / n``
(softmax over ``j <= i``), projected on the tangent line.

The linear theory
-----------------
About the uniform state the mode ``cos(m theta)`` of the density at position ``s`` evolves by
``d/dt a = c_m H a``, ``H a(s) = int_0^s W'(s') a(s') ds' / W(s)``,
``W(s) = (e^{lambda s} - 1) / lambda`` (``s`` at ``lambda = 0``) and, in *our* time ``t``,

.. math::

    c_m = \frac{m^2 I_m(\beta)}{\beta I_0(\beta)}

(the SA normalization at the uniform state is ``I_0(beta) e^{-lambda s} W(s)``). The paper's
force carries an extra factor ``beta`` and is normalized by the ALiBi weights alone: its rate
is ``a_m = m^2 I_m(beta)`` in its time ``tau``, so ``c_m t = a_m tau``,
``tau = t / (beta I_0(beta))`` (:func:`paper_time`). The Green's function of ``d/dt a = c H a``
is ``a(t, s) = a_0(s) + int_0^s psi_{ct}(log(W(s)/W(s'))) W'(s')/W(s) a_0(s') ds'`` with
``psi_c(u) = sum_k c^{k+1} u^k / (k! (k+1)!) = sqrt(c/u) I_1(2 sqrt(c u))`` (:func:`psi`).

Conditioning token ``j = sigma0 n`` on its initial angle ``phi`` perturbs the initial density by
``(1/n) delta(s - sigma0) (delta(theta - phi) - 1/(2 pi))``, so the last token's law at ``t`` is
``1/(2 pi) + (1/(pi n)) sum_m g_{c_m}(t, 1; sigma0) cos(m (theta - phi)) + O(n^-2)``,
``g_c(t, 1; s) = W'(s)/W(1) psi_{ct}(log(W(1)/W(s)))`` (:func:`green`). With the soft score
``K_M(u) = 1 + 2 sum_m omega_{m,M} cos(m u)``, ``omega_{m,M} = exp(-pi^2 m^2 / (2 M^2))``
(:func:`soft_score`: ``2 pi`` times the wrapped normal density of std ``pi / M``, mean 1
under the uniform law) the soft accuracy ``A = E[K_M(theta_n(t) - theta_j(0))]`` obeys

.. math::

    \frac{n (A - 1)}{2} \to S(\sigma_0) = \sum_m \omega_{m,M}\, g_{c_m}(t, 1; \sigma_0)

(:func:`retrieval_profile`): the paper's U-shaped profile (primacy ``sigma0 -> 0``, recency
``sigma0 -> 1`` when ``lambda > 0``). :func:`discrete_profile` is the same linear response for
the ``n`` tokens themselves (sums over the grid ``s_i = i / n`` instead of integrals, the
token's own term in the softmax), the finite-``n`` diagnostic of docs/retrieval.md.

The experiment
--------------
:func:`retrieval_experiment` samples iid uniform prompts, moves them with RK4 through
:meth:`~meanfield.dynamics.velocity.Velocity.tokens` (a batch ``(B, n, 2)`` per call) and
measures ``n (A - 1)/2`` at every source ``sigma0 = j / n`` with its Monte Carlo standard
error, next to the closed form. :func:`plot_retrieval` draws the U.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import special

__all__ = [
    "MODE_TOLERANCE",
    "RetrievalResult",
    "discrete_profile",
    "green",
    "mode_rates",
    "paper_time",
    "plot_retrieval",
    "psi",
    "retrieval_experiment",
    "retrieval_profile",
    "score_weights",
    "soft_score",
    "truncation",
]

#: Modes ``m`` past the peak of ``c_m`` whose ``omega_m c_m`` is below this fraction of the
#: largest ``omega_k c_k`` are dropped (:func:`truncation`).
MODE_TOLERANCE = 1e-15


# -- validation ------------------------------------------------------------------------------------
def _number(name: str, value, lower: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {lower:g}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < lower or (strict and v == lower):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {lower:g}, got {value!r}")
    return v


def _integer(name: str, value, lower: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lower:
        raise ValueError(f"{name} must be an integer >= {lower}, got {value!r}")
    return int(value)


def _times(times) -> np.ndarray:
    t = np.atleast_1d(np.asarray(times, dtype=float))
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or t[0] < 0 or np.any(np.diff(t) <= 0):
        raise ValueError(f"times must be a nonempty increasing sequence of finite numbers >= 0, got {times!r}")
    return t


# -- the linear theory -----------------------------------------------------------------------------
def paper_time(t, beta: float):
    """The paper's time ``tau = t / (beta I_0(beta))`` of our time ``t`` (``c_m t = a_m tau``);
    ``inf`` at ``beta = 0``, where the paper's force (which carries the factor beta) vanishes."""
    beta = _number("beta", beta)
    scale = beta * special.i0(beta)
    return np.asarray(t, dtype=float) / scale if scale > 0 else np.full(np.shape(t), np.inf)


def mode_rates(beta: float, modes: int) -> np.ndarray:
    """``c_m = m^2 I_m(beta) / (beta I_0(beta))``, ``m = 1..modes``: the rates of ``d/dt a = c_m H a``
    in our time (``ive`` ratios: no overflow at any beta; ``c_1 = 1/2``, the others 0, at beta 0)."""
    beta = _number("beta", beta)
    m = np.arange(1, int(modes) + 1, dtype=float)
    if beta == 0.0:
        return np.where(m == 1, 0.5, 0.0)
    return m * m * special.ive(m, beta) / (beta * special.ive(0, beta))


def score_weights(M: float, modes: int) -> np.ndarray:
    """``omega_{m,M} = exp(-pi^2 m^2 / (2 M^2))``, ``m = 1..modes``."""
    M = _number("M", M, strict=True)
    m = np.arange(1, int(modes) + 1, dtype=float)
    return np.exp(-0.5 * (math.pi * m / M) ** 2)


def truncation(beta: float, M: float, tol: float = MODE_TOLERANCE, max_modes: int = 100_000) -> int:
    """The number of modes of :func:`retrieval_profile`: all ``m`` up to the last one with
    ``omega_m c_m >= tol max_k omega_k c_k`` or before the peak of ``c_m``.

    Why it suffices: ``psi_c(u) / c`` increases with ``c``, so past the peak ``m*`` of ``c_m``
    (where ``c_m`` decreases) every term ``omega_m g_{c_m} = omega_m c_m W'/W(1) psi_{c_m t}/c_m``
    is at most ``omega_m c_m / (omega_{m*} c_{m*})`` times the term ``m*``, at every ``t`` and
    ``sigma0``; ``omega_m`` decays like a Gaussian, so the dropped tail is below about ``tol``
    times the largest term.
    """
    beta = _number("beta", beta)
    M = _number("M", M, strict=True)
    count = 16
    while True:
        c = mode_rates(beta, count)
        wc = score_weights(M, count) * c
        peak = int(np.argmax(c))  # c_m increases up to its peak, then decreases
        big = np.flatnonzero(wc >= tol * wc.max())
        last = max(int(big[-1]), peak) + 1
        if last < count or count >= max_modes:
            return max(1, min(last, count))
        count *= 2


def psi(c, u) -> np.ndarray:
    """``psi_c(u) = sum_{k>=0} c^{k+1} u^k / (k! (k+1)!) = sqrt(c/u) I_1(2 sqrt(c u))`` for ``c, u >= 0``
    (broadcast). ``I_1`` by ``scipy.special.ive`` with the exponent added in logs (no overflow
    before the value itself overflows); ``c u < 1e-6``: the series to ``(c u)^3``."""
    c = np.asarray(c, dtype=float)
    u = np.asarray(u, dtype=float)
    c, u = np.broadcast_arrays(c, u)
    x = c * u
    out = np.empty(c.shape)
    small = x < 1e-6
    xs = x[small]
    out[small] = c[small] * (1.0 + xs / 2.0 + xs * xs / 12.0 + xs ** 3 / 144.0)
    big = ~small
    if np.any(big):
        z = 2.0 * np.sqrt(x[big])
        with np.errstate(over="ignore"):
            out[big] = np.sqrt(c[big] / u[big]) * special.ive(1, z) * np.exp(z)
    return out


def _W(s, lam: float):
    s = np.asarray(s, dtype=float)
    return s if lam == 0.0 else np.expm1(lam * s) / lam


def _log_ratio(sigma0, lam: float):
    """``log(W(1) / W(sigma0))``, exact near ``sigma0 = 1`` and for small ``lam``."""
    s = np.asarray(sigma0, dtype=float)
    if lam == 0.0:
        return -np.log(s)
    return np.log(math.expm1(lam)) - np.log(np.expm1(lam * s))


def _end_weight(sigma0, lam: float):
    """``W'(sigma0) / W(1) = lambda e^{lambda sigma0} / (e^lambda - 1)`` (1 at lambda = 0)."""
    s = np.asarray(sigma0, dtype=float)
    if lam == 0.0:
        return np.ones_like(s)
    return lam * np.exp(lam * s) / math.expm1(lam)


def green(c, t, sigma0, alibi: float = 0.0) -> np.ndarray:
    """``g_c(t, 1; sigma0) = W'(sigma0)/W(1) psi_{ct}(log(W(1)/W(sigma0)))``: the mode amplitude at
    ``s = 1`` at time ``t`` of ``d/dt a = c H a`` started from ``delta(s - sigma0)``."""
    lam = _number("alibi", alibi)
    s = np.asarray(sigma0, dtype=float)
    return _end_weight(s, lam) * psi(np.asarray(c, dtype=float) * t, _log_ratio(s, lam))


def _sigma(sigma0) -> np.ndarray:
    s = np.asarray(sigma0, dtype=float)
    if not np.all(np.isfinite(s)) or np.any(s <= 0) or np.any(s > 1):
        raise ValueError("sigma0 must lie in (0, 1]")
    return s


def retrieval_profile(sigma0, t: float, beta: float, alibi: float = 0.0, M: float = 8.0,
                      modes: int | None = None) -> np.ndarray:
    """The closed form ``S(sigma0) = sum_m omega_{m,M} g_{c_m}(t, 1; sigma0)``: the limit of the
    centred, scaled soft accuracy ``n (A - 1) / 2`` (module docstring), in our time ``t``.

    ``sigma0`` in ``(0, 1]`` (any shape; ``1`` is the last token's own position, the limit
    ``u -> 0``); ``modes``: the number of Fourier modes, default :func:`truncation` (terms
    below ``MODE_TOLERANCE`` of the largest dropped). The paper's profile at its time ``tau``
    is this one at ``t = tau beta I_0(beta)``.
    """
    s = _sigma(sigma0)
    t = _number("t", t)
    beta = _number("beta", beta)
    lam = _number("alibi", alibi)
    M = _number("M", M, strict=True)
    count = truncation(beta, M) if modes is None else _integer("modes", modes, 1)
    c = mode_rates(beta, count)
    w = score_weights(M, count)
    u = _log_ratio(s, lam)[..., None]
    terms = w * psi(c * t, u)
    return _end_weight(s, lam) * terms.sum(axis=-1)


def discrete_profile(n: int, t: float, beta: float, alibi: float = 0.0, M: float = 8.0,
                     modes: int | None = None, self_term: bool = True) -> np.ndarray:
    """The linear response of the ``n`` tokens themselves: ``n (A - 1)/2`` at ``sigma0 = j/n``,
    ``j = 1..n-1``, to first order in the conditioning, the laws of the other tokens closed
    as independent (mean field) but the sums over positions left as the discrete sums.

    Mode ``m``, amplitudes ``a_i`` of ``cos(m theta)`` in token ``i``'s law:
    ``d/dt a_i = (m^2 I_m / beta) sum_{k<i} e^{-lambda (i-k)/n} a_k / Z_i``,
    ``Z_i = sum_{k<i} e^{-lambda (i-k)/n} I_0 + e^beta`` (``self_term``: token ``i``'s own
    term in the softmax sits at distance 0, weight ``e^beta``; without it ``Z_i`` sums
    ``k <= i`` with ``I_0``), started from ``a = e_j``: ``a(t) = expm(t c L) e_j`` with ``L``
    strictly lower triangular (the token does not push itself). The continuum limit is
    :func:`retrieval_profile`; the difference is the ``O(1/n)`` discretization of docs/retrieval.md.
    """
    from scipy.linalg import expm

    n = _integer("n", n, 2)
    t = _number("t", t)
    beta = _number("beta", beta)
    lam = _number("alibi", alibi)
    M = _number("M", M, strict=True)
    count = truncation(beta, M) if modes is None else _integer("modes", modes, 1)
    i = np.arange(n)
    gap = i[:, None] - i[None, :]
    decay = np.where(gap > 0, np.exp(-lam * np.maximum(gap, 0) / n), 0.0)
    if beta == 0.0:
        ratio = np.where(np.arange(1, count + 1) == 1, 0.5, 0.0)  # I_m(beta) / (beta I_0)
        own = 1.0
    else:
        ratio = special.ive(np.arange(1, count + 1), beta) / (beta * special.ive(0, beta))
        own = 1.0 / special.ive(0, beta) if self_term else 1.0  # e^beta / I_0(beta)
    Z = decay.sum(axis=1) + own
    L = decay / Z[:, None]
    w = score_weights(M, count)
    out = np.zeros(n - 1)
    for m in range(1, count + 1):
        rate = m * m * ratio[m - 1]
        if rate == 0.0 or w[m - 1] == 0.0:
            continue
        E = expm((t * rate) * L)
        out += w[m - 1] * E[n - 1, : n - 1]
    return n * out  # n (A - 1)/2 = n sum_m omega_m pi a_{n,m}, a(0) = e_j / pi


# -- the soft score --------------------------------------------------------------------------------
def soft_score(u, M: float = 8.0, modes: int | None = None) -> np.ndarray:
    """``K_M(u) = 1 + 2 sum_{m=1}^{modes} omega_{m,M} cos(m u)``: ``2 pi`` times the wrapped normal
    density of std ``pi / M`` (``modes = None``: up to ``omega_m < 1e-17``), mean 1 under the
    uniform law of ``u``."""
    M = _number("M", M, strict=True)
    if modes is None:
        modes = max(1, int(math.ceil(M * math.sqrt(2.0 * 17.0 * math.log(10.0)) / math.pi)))  # omega < 1e-17
    else:
        modes = _integer("modes", modes, 1)
    u = np.asarray(u, dtype=float)
    w = score_weights(M, modes)
    out = np.ones(u.shape)
    for m in range(1, modes + 1):
        out += 2.0 * w[m - 1] * np.cos(m * u)
    return out


# -- the experiment --------------------------------------------------------------------------------
@dataclass
class RetrievalResult:
    """The soft retrieval accuracy of :func:`retrieval_experiment`.

    ``mean[k, j-1]`` is the Monte Carlo ``n (A - 1)/2`` at ``times[k]`` for the source
    ``sigma0[j-1] = j/n`` (``j = 1..n-1``), ``se`` its standard error (the std of the
    per-prompt scores ``n (K_M - 1)/2`` over ``sqrt(prompts)``), ``theory`` the closed form
    :func:`retrieval_profile` and ``discrete`` the finite-``n`` linear response
    :func:`discrete_profile` at the same points.
    """

    n: int
    prompts: int
    beta: float
    alibi: float
    M: float
    seed: int
    dt: float
    backend: str
    times: np.ndarray
    sigma0: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    theory: np.ndarray
    discrete: np.ndarray
    steps: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def tau(self) -> np.ndarray:
        """The paper's times ``t / (beta I_0(beta))``."""
        return paper_time(self.times, self.beta)

    def deviation(self, reference: str = "theory") -> np.ndarray:
        """``(mean - reference) / se`` per time and source (``reference``: ``"theory"`` or ``"discrete"``)."""
        ref = getattr(self, reference)
        return (self.mean - ref) / self.se

    def chi2(self, reference: str = "theory", lower: float = 0.0) -> np.ndarray:
        """``sum_j deviation^2`` per time over the sources ``sigma0 >= lower`` (compare with
        their number; the sources of one prompt are correlated, so this is a rough summary)."""
        keep = self.sigma0 >= lower
        return np.sum(self.deviation(reference)[:, keep] ** 2, axis=1)

    def depth(self, k: int, curve: str = "theory") -> float:
        """The U's depth at ``times[k]``: ``min(S(first), S(last)) - min S`` over the sources."""
        s = getattr(self, curve)[k]
        return float(min(s[0], s[-1]) - s.min())

    def table(self, k: int | None = None) -> str:
        """A text table per time: ``sigma0``, Monte Carlo ``+-`` SE, theory, deviation in SE,
        the finite-``n`` linear response; a chi-square line under each."""
        ks = range(len(self.times)) if k is None else [k]
        lines = [f"n = {self.n}, prompts = {self.prompts}, beta = {self.beta:g}, alibi = {self.alibi:g}, "
                 f"M = {self.M:g}, dt = {self.dt:g}, backend {self.backend}, seed {self.seed}"]
        for k in ks:
            t = self.times[k]
            lines.append("")
            lines.append(f"t = {t:g} (paper's tau = {float(self.tau[k]):.4g})")
            lines.append(f"{'sigma0':>8} {'MC':>10} {'+- SE':>8} {'theory':>10} {'dev/SE':>8} {'discrete':>10} {'dev/SE':>8}")
            dev = self.deviation()[k]
            ddev = self.deviation("discrete")[k]
            for j, s in enumerate(self.sigma0):
                lines.append(f"{s:8.4f} {self.mean[k, j]:10.4f} {self.se[k, j]:8.4f} {self.theory[k, j]:10.4f} "
                             f"{dev[j]:8.2f} {self.discrete[k, j]:10.4f} {ddev[j]:8.2f}")
            m = self.sigma0.size
            lines.append(f"chi2 vs theory = {self.chi2()[k]:.1f}, vs discrete = {self.chi2('discrete')[k]:.1f} "
                         f"over {m} sources; max |dev| {np.abs(dev).max():.2f} (theory), "
                         f"{np.abs(ddev).max():.2f} (discrete); U depth {self.depth(k):.3f} "
                         f"= {self.depth(k) / self.se[k].mean():.1f} mean SE")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain numbers and arrays (for ``numpy.savez`` or JSON after ``tolist``)."""
        return {
            "n": self.n, "prompts": self.prompts, "beta": self.beta, "alibi": self.alibi, "M": self.M,
            "seed": self.seed, "dt": self.dt, "backend": self.backend, "steps": self.steps,
            "seconds": self.seconds, "times": self.times, "tau": self.tau, "sigma0": self.sigma0,
            "mean": self.mean, "se": self.se, "theory": self.theory, "discrete": self.discrete,
        }


def _time_grid(times: np.ndarray, dt: float) -> list[tuple[int, float]]:
    """``(steps, h)`` from each output time to the next (from 0): equal steps ``h <= dt`` landing on it."""
    out, prev = [], 0.0
    for t in times:
        span = t - prev
        k = int(math.ceil(span / dt - 1e-9)) if span > 0 else 0
        out.append((k, span / k if k else 0.0))
        prev = t
    return out


def retrieval_experiment(n: int, prompts: int, beta: float, alibi: float, times, M: float = 8.0, seed: int = 0,
                         dt: float | None = None, batch: int = 512, backend: str = "direct",
                         progress: Callable | bool | None = None) -> RetrievalResult:
    """Monte Carlo of the soft retrieval accuracy of causal SA on the circle.

    ``prompts`` prompts of ``n`` iid uniform angles (``numpy.random.default_rng(seed)``, drawn
    up front: the result does not depend on ``batch``) move with RK4
    (:func:`meanfield.particles.system._rk4`) through ``Velocity.tokens`` of
    ``VelocityModel(2, AttentionModel(2, beta), mask="causal", alibi=alibi)`` (SA, ``Q = K = V = I``,
    weights ``1/n``), ``batch`` prompts per call, steps of at most ``dt`` (default
    ``0.2 / max(1, beta)``: the means change by 1e-5 from dt = 0.05 at beta = 1) landing on every time of ``times``. At each time the per-prompt
    score of source ``j`` is ``n (K_M(theta_n(t) - theta_j(0)) - 1)/2``; its mean and standard
    error over the prompts, for ``j = 1..n-1``, are returned next to the closed form.

    ``backend``: ``"direct"`` (the masked direct sums, deterministic) or ``"auto"`` (what
    :func:`~meanfield.pde.solver.make_velocity` picks); ``progress``: ``True`` (a line per batch
    on stderr) or a callable ``(done, prompts)``.
    """
    from ..dynamics.model import VelocityModel
    from ..fields.attention import AttentionModel
    from ..pde.solver import make_velocity
    from .system import _rk4

    n = _integer("n", n, 2)
    prompts = _integer("prompts", prompts, 2)
    beta = _number("beta", beta)
    lam = _number("alibi", alibi)
    t_out = _times(times)
    M = _number("M", M, strict=True)
    seed = _integer("seed", seed, 0)
    batch = _integer("batch", batch, 1)
    dt = 0.2 / max(1.0, beta) if dt is None else _number("dt", dt, strict=True)
    if backend not in ("direct", "auto", "spectral"):
        raise ValueError(f"backend must be 'direct', 'auto' or 'spectral', got {backend!r}")
    if progress is True:
        import sys

        def progress(done, total):
            print(f"  {done}/{total} prompts", file=sys.stderr, flush=True)

    model = VelocityModel(2, AttentionModel(2, beta=beta), mask="causal", alibi=lam)
    velocity = make_velocity(model, backend=backend, tolerance=1e-10, n_targets=n, n_sources=n)
    weights = np.full(n, 1.0 / n)

    def rhs(x):
        return velocity.tokens(x, weights, t=0.0)

    theta0 = np.random.default_rng(seed).uniform(0.0, 2.0 * math.pi, size=(prompts, n))
    grid = _time_grid(t_out, dt)
    score_modes = max(1, int(math.ceil(M * math.sqrt(2.0 * 17.0 * math.log(10.0)) / math.pi)))
    T = t_out.size
    total = np.zeros((T, n - 1))
    square = np.zeros((T, n - 1))
    start = _time.perf_counter()
    steps = 0
    for b0 in range(0, prompts, batch):
        th = theta0[b0:b0 + batch]
        x = np.stack([np.cos(th), np.sin(th)], axis=-1)
        steps = 0
        for k, (count, h) in enumerate(grid):
            for _ in range(count):
                x = _rk4(rhs, x, h, rhs(x))
                steps += 1
            last = np.arctan2(x[:, -1, 1], x[:, -1, 0])
            score = (0.5 * n) * (soft_score(last[:, None] - th[:, : n - 1], M, score_modes) - 1.0)
            total[k] += score.sum(axis=0)
            square[k] += np.square(score).sum(axis=0)
        if progress:
            progress(min(prompts, b0 + batch), prompts)
    seconds = _time.perf_counter() - start
    mean = total / prompts
    var = np.maximum(square / prompts - mean ** 2, 0.0) * prompts / (prompts - 1)
    se = np.sqrt(var / prompts)
    sigma0 = np.arange(1, n) / n
    theory = np.stack([retrieval_profile(sigma0, t, beta, lam, M) for t in t_out])
    discrete = np.stack([discrete_profile(n, t, beta, lam, M) for t in t_out])
    return RetrievalResult(n=n, prompts=prompts, beta=beta, alibi=lam, M=M, seed=seed, dt=dt,
                           backend=velocity.name, times=t_out, sigma0=sigma0, mean=mean, se=se,
                           theory=theory, discrete=discrete, steps=steps, seconds=seconds)


# -- the picture -----------------------------------------------------------------------------------
def plot_retrieval(result: RetrievalResult, path, title: str | None = None):
    """The U: one panel per time, the Monte Carlo ``n (A - 1)/2`` with ``+- 1 SE`` bars, the
    closed form (solid, on a fine grid), the finite-``n`` linear response (dashed), and the
    closed form's primacy end (first source), recency end (last source) and interior minimum
    marked. PNG (matplotlib, Agg); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    r = result
    T = len(r.times)
    fig, axes = plt.subplots(1, T, figsize=(4.6 * T, 4.2), squeeze=False)
    fine = np.linspace(0.5 / r.n, 1.0 - 0.5 / r.n, 400)
    for k, ax in enumerate(axes[0]):
        t = float(r.times[k])
        curve = retrieval_profile(fine, t, r.beta, r.alibi, r.M)
        ax.plot(fine, curve, color="C0", lw=1.8, label="closed form $S(\\sigma_0)$ ($n\\to\\infty$)")
        ax.plot(r.sigma0, r.discrete[k], color="C2", lw=1.2, ls="--", label=f"linear response, $n={r.n}$")
        ax.errorbar(r.sigma0, r.mean[k], yerr=r.se[k], fmt="o", ms=3.5, color="C3", ecolor="C3", elinewidth=1,
                    capsize=2, label=f"Monte Carlo ($\\pm$1 SE, {r.prompts} prompts)")
        th = r.theory[k]
        i_min = int(np.argmin(th))
        ax.plot([r.sigma0[0]], [th[0]], marker="^", ms=9, color="C1", ls="none", zorder=5, label="primacy ($\\sigma_0\\to 0$)")
        ax.plot([r.sigma0[-1]], [th[-1]], marker="v", ms=9, color="C4", ls="none", zorder=5, label="recency ($\\sigma_0\\to 1$)")
        if 0 < i_min < len(th) - 1:
            ax.plot([r.sigma0[i_min]], [th[i_min]], marker="*", ms=12, color="k", ls="none", zorder=5,
                    label=f"interior minimum ($\\sigma_0={r.sigma0[i_min]:.2f}$)")
        tau = float(r.tau[k])
        ax.set_title(f"$t = {t:g}$ (ours), $\\tau = t/(\\beta I_0(\\beta)) = {tau:.3g}$ (paper)", fontsize=10)
        ax.set_xlabel("source position $\\sigma_0 = j/n$")
        ax.set_ylabel("$n\\,(A-1)/2$: centred, scaled soft accuracy")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    fig.suptitle(title or (f"Lost in the middle: causal SA on the circle, $n={r.n}$, $\\beta={r.beta:g}$, "
                           f"ALiBi $\\lambda={r.alibi:g}$, $M={r.M:g}$"), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

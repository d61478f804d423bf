r"""Phase diagrams of token clustering: a sweep of a parameter (beta) x time over batches of prompts.

Geshkovski, Letrouit, Polyanskiy, Rigollet, *A mathematical perspective on Transformers*,
arXiv:2312.10794; the authors' script ``phase-diagrams.py`` at
github.com/borjanG/2023-transformers-rotf. docs/batch.md has the derivation and the numbers.

The experiment
--------------
For every value of the parameter, ``B`` prompts of ``n`` tokens uniform on S^{d-1} (the same
prompts for every value: :func:`~meanfield.particles.batch.sample_prompts`) move as a batch
(:mod:`meanfield.particles.batch`); at every output time the statistic is the probability that
two tokens have merged,

.. math::

    p(\beta, t) = \frac{1}{B} \sum_b \binom{n}{2}^{-1} \sum_{i<j} \mathbf 1\{\langle x_{bi}(t), x_{bj}(t)\rangle \ge 0.999\},

next to the mean cluster count and order parameter (and, on request, the rank of the
thresholded Gram matrix). :func:`phase_diagram` returns the table, :func:`plot_phase` the heat
map (``t`` on x, the parameter on y) with the equiangular prediction drawn over it.

The equiangular ODE
-------------------
Take ``Q = K = V = I``, weights ``1/n``, and an equiangular start ``<x_i, x_j> = rho`` for all
``i != j`` (possible in R^d for ``d >= n``, any ``rho in (-1/(n-1), 1)``: :func:`equiangular_points`).
The Gram matrix of the tokens obeys a closed ODE (each ``d/dt <x_i, x_k>`` is a function of the
inner products alone) that commutes with permutations of the tokens, so a permutation-invariant
Gram matrix stays so: the tokens stay equiangular, ``rho = rho(t)``. With
``A_i = sum_j w_j e^{beta <x_i, x_j>} x_j / Z_i`` and ``x_i' = A_i - <A_i, x_i> x_i``:

.. math::

    Z\langle A_i, x_i\rangle = e^\beta + (n-1)\rho e^{\beta\rho}, \qquad
    Z\langle A_i, x_k\rangle = \rho e^\beta + e^{\beta\rho}\big(1 + (n-2)\rho\big) \quad (k \ne i),

(``Z`` the SA normalization ``e^beta + (n-1) e^{beta rho}`` times ``1/n``, or ``1`` for USA, the
``1/n`` kept in the sums), so ``<x_i', x_k> = <A_i, x_k> - rho <A_i, x_i>`` loses the ``e^beta``
terms and ``d/dt rho = <x_i', x_k> + <x_i, x_k'> = 2 <x_i', x_k>``:

.. math::

    \text{SA:}\quad \dot\rho = \frac{2 e^{\beta\rho} (1-\rho)(1 + (n-1)\rho)}{e^\beta + (n-1) e^{\beta\rho}}
    = \frac{2 (1-\rho)(1 + (n-1)\rho)}{e^{\beta(1-\rho)} + n - 1}, \qquad
    \text{USA:}\quad \dot\rho = \frac{2}{n} e^{\beta\rho} (1-\rho)(1 + (n-1)\rho)

(shifted USA: times ``e^{-beta}``), using ``1 + (n-2) rho - (n-1) rho^2 = (1 - rho)(1 + (n-1) rho)``.
``rho = 1`` (one cluster) attracts, ``rho = -1/(n-1)`` (the regular simplex) is the other
fixed point. The time at which ``rho`` reaches the threshold ``theta`` is a quadrature
(:func:`equiangular_crossing_time`),

.. math::

    T(\beta) = \int_{\rho_0}^{\theta} \frac{d\rho}{\dot\rho(\rho)}
    \overset{\text{SA}}{=} \int_{\rho_0}^{\theta} \frac{e^{\beta(1-\rho)} + n - 1}{2 (1-\rho)(1 + (n-1)\rho)}\, d\rho,

the curve drawn over the diagram (uniform tokens in high d are nearly equiangular with
``rho_0 ~ 0``, fluctuations ``1 / sqrt(d)``).

Random parameter ensembles
--------------------------
:func:`draw_ensemble` draws per prompt (``default_rng([seed, ENSEMBLE_STREAM, b])``: prompt
``b``'s matrices do not depend on ``B``) the bilinear form ``Q^T K`` and ``V`` as the authors'
script: ``"gaussian"`` ``G_1 G_2 / sqrt(d)``, ``"goe"`` ``(G + G^T) / sqrt(2)`` (off-diagonal
variance 1, diagonal 2), ``"identity"``; ``V`` ``"identity"``, ``"wishart"`` ``G G^T / sqrt(d)``
(their "random V"), ``"gaussian"`` ``G / sqrt(d)``, ``"plus_qk"`` / ``"minus_qk"``
``+- Q^T K / c`` (``c = sqrt(d)``, ``sqrt(d + 1)`` for GOE, 1 for the identity: their gradient
ascent / descent). :class:`EnsembleField` is the batched field with the prompt's own matrices,
logits ``beta <x, (Q^T K)_b y>``.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import integrate

from .batch import BLOCK_ELEMENTS, run_batch, sample_prompts

__all__ = [
    "ENSEMBLE_STREAM",
    "EnsembleField",
    "PhaseResult",
    "draw_ensemble",
    "equiangular_crossing_time",
    "equiangular_points",
    "equiangular_rate",
    "equiangular_rho",
    "phase_diagram",
    "plot_phase",
]

#: The stream tag of the per-prompt parameter draws: ``default_rng([seed, ENSEMBLE_STREAM, b])``.
ENSEMBLE_STREAM = 0xE45E


def _number(name: str, value, lower: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (lower is not None and (v < lower or (strict and v == lower))):
        bound = "" if lower is None else f" {'>' if strict else '>='} {lower:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return v


def _integer(name: str, value, lower: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lower:
        raise ValueError(f"{name} must be an integer >= {lower}, got {value!r}")
    return int(value)


def _kind(kind: str) -> str:
    if kind not in ("SA", "USA", "USA_shift"):
        raise ValueError(f"kind must be 'SA', 'USA' or 'USA_shift', got {kind!r}")
    return kind


# -- the equiangular ODE ---------------------------------------------------------------------------
def equiangular_rate(rho, beta: float, n: int, kind: str = "SA"):
    """``d rho / dt`` of ``n`` equiangular tokens (module docstring): SA
    ``2 (1 - rho)(1 + (n-1) rho) / (e^{beta (1 - rho)} + n - 1)``, USA
    ``(2/n) e^{beta rho} (1 - rho)(1 + (n-1) rho)``, ``"USA_shift"`` the latter times ``e^{-beta}``."""
    beta = _number("beta", beta, 0.0)
    n = _integer("n", n, 2)
    kind = _kind(kind)
    rho = np.asarray(rho, dtype=float)
    core = 2.0 * (1.0 - rho) * (1.0 + (n - 1) * rho)
    if kind == "SA":
        return core / (np.exp(beta * (1.0 - rho)) + (n - 1))
    if kind == "USA":
        return core * np.exp(beta * rho) / n
    return core * np.exp(-beta * (1.0 - rho)) / n


def equiangular_rho(times, rho0: float, beta: float, n: int, kind: str = "SA", rtol: float = 1e-12) -> np.ndarray:
    """``rho(t)`` at ``times`` (increasing, ``>= 0``) from ``rho(0) = rho0``: the equiangular ODE
    solved by ``scipy.integrate.solve_ivp`` (DOP853, ``rtol``, ``atol = 1e-14``)."""
    t = np.atleast_1d(np.asarray(times, dtype=float))
    rho0 = _number("rho0", rho0)
    if not (-1.0 / (n - 1) <= rho0 <= 1.0):
        raise ValueError(f"rho0 must lie in [-1/(n-1), 1] = [{-1.0 / (n - 1):.4g}, 1], got {rho0!r}")
    if t.size == 0 or t[0] < 0 or np.any(np.diff(t) < 0):
        raise ValueError("times must be a nonempty nondecreasing sequence of numbers >= 0")
    if t[-1] == 0.0:
        return np.full(t.shape, rho0)
    sol = integrate.solve_ivp(lambda _t, r: equiangular_rate(r, beta, n, kind), (0.0, float(t[-1])), [rho0],
                              method="DOP853", t_eval=t, rtol=rtol, atol=1e-14)
    if not sol.success:  # pragma: no cover - a smooth scalar ODE
        raise RuntimeError(f"the equiangular ODE failed: {sol.message}")
    return sol.y[0]


def equiangular_crossing_time(beta: float, n: int, rho0: float = 0.0, threshold: float = 0.999,
                              kind: str = "SA") -> float:
    """The time ``T = int_{rho0}^{threshold} d rho / rate(rho)`` at which equiangular tokens
    reach ``<x_i, x_j> = threshold`` (``0`` if ``rho0 >= threshold``; ``inf`` from the simplex
    ``rho0 = -1/(n-1)``, a fixed point). ``scipy.integrate.quad`` of the smooth integrand."""
    n = _integer("n", n, 2)
    threshold = _number("threshold", threshold)
    rho0 = _number("rho0", rho0)
    if not (-1.0 / (n - 1) <= rho0 < 1.0) or not threshold < 1.0:
        raise ValueError(f"need -1/(n-1) <= rho0 < 1 and threshold < 1, got rho0 = {rho0!r}, threshold = {threshold!r}")
    if rho0 >= threshold:
        return 0.0
    if rho0 <= -1.0 / (n - 1):
        return math.inf
    value, _ = integrate.quad(lambda r: 1.0 / float(equiangular_rate(r, beta, n, kind)), rho0, threshold,
                              epsabs=0.0, epsrel=1e-12, limit=200)
    return float(value)


def equiangular_points(n: int, d: int, rho: float, rng=None) -> np.ndarray:
    """``n`` unit vectors in R^d with ``<x_i, x_j> = rho`` for all ``i != j`` (``d >= n``,
    ``-1/(n-1) < rho < 1``), randomly rotated (``rng``: a ``numpy`` generator or seed).

    ``x_i = a e_i + g 1`` in R^n (``1`` the all-ones vector) has ``<x_i, x_j> = 2 a g + n g^2``
    and ``|x_i|^2 = a^2 + 2 a g + n g^2``: ``a = sqrt(1 - rho)``,
    ``g = (sqrt(1 + (n-1) rho) - a) / n``; then embedded in R^d and multiplied by a Haar rotation."""
    n = _integer("n", n, 2)
    d = _integer("d", d, 2)
    rho = _number("rho", rho)
    if d < n:
        raise ValueError(f"an equiangular configuration of n = {n} tokens with any rho needs d >= n, got d = {d}")
    if not (-1.0 / (n - 1) < rho < 1.0):
        raise ValueError(f"rho must lie in (-1/(n-1), 1), got {rho!r}")
    rng = np.random.default_rng(rng)
    a = math.sqrt(1.0 - rho)
    g = (math.sqrt(1.0 + (n - 1) * rho) - a) / n
    x = np.zeros((n, d))
    x[:, :n] = a * np.eye(n) + g
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q *= np.sign(np.diag(r))  # Haar
    return x @ q.T


# -- random parameter ensembles --------------------------------------------------------------------
_QK_KINDS = ("identity", "gaussian", "goe")
_V_KINDS = ("identity", "wishart", "gaussian", "plus_qk", "minus_qk")


def draw_ensemble(d: int, prompts, qk: str = "goe", v: str = "identity", seed: int = 0):
    """``(QK (B, d, d), V (B, d, d))`` drawn per prompt from
    ``default_rng([seed, ENSEMBLE_STREAM, b])`` (``prompts``: a count or the prompts' indices;
    ``Q^T K`` first, then ``V``); kinds in the module docstring."""
    d = _integer("d", d, 2)
    if qk not in _QK_KINDS:
        raise ValueError(f"qk must be one of {', '.join(_QK_KINDS)}, got {qk!r}")
    if v not in _V_KINDS:
        raise ValueError(f"v must be one of {', '.join(_V_KINDS)}, got {v!r}")
    idx = range(_integer("prompts", prompts, 1)) if isinstance(prompts, (int, np.integer)) else prompts
    seed = _integer("seed", seed, 0)
    eye = np.eye(d)
    norm_v = {"identity": 1.0, "gaussian": math.sqrt(d), "goe": math.sqrt(d + 1)}[qk]
    QK, V = [], []
    for b in idx:
        rng = np.random.default_rng([seed, ENSEMBLE_STREAM, _integer("prompt index", b, 0)])
        if qk == "gaussian":
            a = rng.standard_normal((d, d)) @ rng.standard_normal((d, d)) / math.sqrt(d)
        elif qk == "goe":
            g = rng.standard_normal((d, d))
            a = (g + g.T) / math.sqrt(2.0)
        else:
            a = eye.copy()
        if v == "wishart":
            g = rng.standard_normal((d, d))
            vb = g @ g.T / math.sqrt(d)
        elif v == "gaussian":
            vb = rng.standard_normal((d, d)) / math.sqrt(d)
        elif v == "plus_qk":
            vb = a / norm_v
        elif v == "minus_qk":
            vb = -a / norm_v
        else:
            vb = eye.copy()
        QK.append(a)
        V.append(vb)
    if not QK:
        raise ValueError("no prompts to draw")
    return np.stack(QK), np.stack(V)


class EnsembleField:
    """The batched attention field with per-prompt matrices: prompt ``b`` moves with the head
    ``beta``, ``Q^T K = QK[b]``, ``V = V[b]`` (SA or USA), i.e. logits ``beta <x, QK[b] y>``.

    The field of the ``b``-th prompt is that of ``AttentionModel(d, beta, Q=I, K=QK[b], V=V[b])``
    (:meth:`model_of`); :meth:`batch` evaluates all prompts at once (the blocked
    ``(prompts, n, n)`` logits of :meth:`~meanfield.fields.attention.DirectField.batch`), and
    :meth:`subset` is the field of some of them (the per-prompt steps of
    :class:`~meanfield.particles.batch.BatchSystem`)."""

    def __init__(self, beta: float, QK, V, normalized: bool = True, block_elements: int = BLOCK_ELEMENTS):
        from ..fields.attention import AttentionModel, DirectField

        self.beta = _number("beta", beta, 0.0)
        QK = np.ascontiguousarray(QK, dtype=float)
        V = np.ascontiguousarray(V, dtype=float)
        if QK.ndim != 3 or QK.shape[1] != QK.shape[2] or V.shape != QK.shape:
            raise ValueError(f"QK and V must both have shape (B, d, d), got {QK.shape} and {V.shape}")
        if not (np.all(np.isfinite(QK)) and np.all(np.isfinite(V))):
            raise ValueError("QK and V must be finite")
        self.QK, self.V = QK, V
        self.d = QK.shape[1]
        self.normalized = bool(normalized)
        self.block_elements = int(block_elements)
        # the kernel of the blocks (its Q, K, V are not used: the prompts' own act through ky, wvy)
        self._kernel = DirectField(AttentionModel(self.d, beta=self.beta, normalized=self.normalized),
                                   block_elements=self.block_elements)
        self._rates: dict = {}

    @property
    def prompts(self) -> int:
        return self.QK.shape[0]

    def model_of(self, b: int):
        """The :class:`~meanfield.fields.attention.AttentionModel` of prompt ``b``."""
        from ..fields.attention import AttentionModel

        return AttentionModel(self.d, beta=self.beta, Q=np.eye(self.d), K=self.QK[b], V=self.V[b],
                              normalized=self.normalized)

    def subset(self, idx) -> "EnsembleField":
        """The field of the prompts ``idx`` (in that order)."""
        sub = EnsembleField.__new__(EnsembleField)
        sub.__dict__.update(self.__dict__)
        sub.QK, sub.V = self.QK[idx], self.V[idx]
        sub._rates = {k: v[idx] for k, v in self._rates.items()}
        return sub

    def batch(self, x, weights, project: bool = True, t: float = 0.0) -> np.ndarray:
        """The field ``(B, n, d)`` of every prompt ``x (B, n, d)`` on itself, prompt ``b`` with its
        own matrices; ``weights (n,)`` the token weights of every prompt."""
        x = np.ascontiguousarray(x, dtype=float)
        if x.ndim != 3 or x.shape[0] != self.prompts or x.shape[2] != self.d:
            raise ValueError(f"the ensemble's prompts must have shape ({self.prompts}, n, {self.d}), got {x.shape}")
        B, n, d = x.shape
        w = np.ascontiguousarray(weights, dtype=float)
        if w.shape != (n,) or np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError(f"weights must be {n} finite nonnegative numbers")
        ky = self.beta * np.matmul(x, np.swapaxes(self.QK, 1, 2))  # (B, n, d): logits x . (beta QK y)
        wvy = np.matmul(x, np.swapaxes(self.V, 1, 2)) * w[:, None]
        out = np.empty_like(x)
        rows = min(n, max(1, self.block_elements // max(1, n)))
        pb = max(1, self.block_elements // max(1, rows * n))
        for b0 in range(0, B, pb):
            b1 = min(B, b0 + pb)
            for r0 in range(0, n, rows):
                out[b0:b1, r0:r0 + rows] = self._kernel._block(x[b0:b1, r0:r0 + rows], ky[b0:b1], w, wvy[b0:b1])
        if project:
            out -= np.einsum("bij,bij->bi", out, x)[..., None] * x
        return out

    # -- time scales of the automatic steps (per prompt) ------------------------------------------
    def _per_prompt(self, key, fn):
        got = self._rates.get(key)
        if got is None:
            got = self._rates[key] = np.array([fn(self.model_of(b)) for b in range(self.prompts)])
        return got

    def rate_bound(self, t: float = 0.0, max_mode: int = 64) -> np.ndarray:
        return self._per_prompt(("rate", max_mode), lambda m: m.rate_bound(max_mode=max_mode))

    def interaction_norm(self, t: float = 0.0) -> np.ndarray:
        return self._per_prompt("norm", lambda m: float(np.linalg.norm(m.interaction, 2)))

    def length_scale(self, t: float = 0.0) -> np.ndarray:
        return np.minimum(1.0, 1.0 / np.sqrt(np.maximum(self.interaction_norm(t), 1.0)))

    def next_switch(self, t: float) -> float:
        return math.inf


# -- the sweep -------------------------------------------------------------------------------------
@dataclass
class PhaseResult:
    """A phase diagram: ``merged[p, k]`` the probability that two tokens have merged
    (``<x_i, x_j> >= threshold``, over pairs and prompts) at ``values[p]`` and ``times[k]``;
    ``clusters``, ``order`` the means of the cluster count and the order parameter, ``rank`` the
    mean rank of the thresholded Gram matrix (or ``None``); ``rho`` and ``crossing`` the
    equiangular prediction from ``rho0`` (``None`` where it does not apply)."""

    parameter: str
    values: np.ndarray
    times: np.ndarray
    n: int
    d: int
    prompts: int
    kind: str
    integrator: str
    dt: float | str
    threshold: float
    merged: np.ndarray
    clusters: np.ndarray
    order: np.ndarray
    rank: np.ndarray | None = None
    rho0: float = 0.0
    rho: np.ndarray | None = None
    crossing: np.ndarray | None = None
    ensemble: str = "Q = K = V = I"
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One dict per ``(value, t)``: ``parameter value, t, merged_fraction, n_clusters,
        order_parameter`` (``gram_rank``, ``equiangular_rho`` where present)."""
        out = []
        for p, value in enumerate(self.values):
            for k, t in enumerate(self.times):
                row = {self.parameter: float(value), "t": float(t), "merged_fraction": float(self.merged[p, k]),
                       "n_clusters": float(self.clusters[p, k]), "order_parameter": float(self.order[p, k])}
                if self.rank is not None:
                    row["gram_rank"] = float(self.rank[p, k])
                if self.rho is not None:
                    row["equiangular_rho"] = float(self.rho[p, k])
                out.append(row)
        return out

    def write_csv(self, path) -> str:
        """:meth:`rows` as CSV; returns ``path``."""
        from .batch import write_rows

        return write_rows(path, self.rows())

    def first_time(self, level: float = 0.5) -> np.ndarray:
        """Per value, the first output time at which ``merged >= level`` (``nan``: never)."""
        hit = self.merged >= level
        first = np.argmax(hit, axis=1)
        return np.where(hit.any(axis=1), self.times[first], np.nan)

    def table(self, level: float = 0.5) -> str:
        """Per value: the merged fraction at the last time, the first time it reaches ``level``,
        the equiangular crossing time, the final mean cluster count."""
        lines = [f"phase diagram: n = {self.n}, d = {self.d}, {self.prompts} prompts, {self.kind}, {self.ensemble}, "
                 f"{self.integrator} dt = {self.dt}, threshold {self.threshold:g}; {self.seconds:.1f} s",
                 f"{self.parameter:>8} {'merged(t_end)':>14} {f't(merged>={level:g})':>16} {'T_equiangular':>14} "
                 f"{'clusters(t_end)':>16}" + (f" {'rank(t_end)':>12}" if self.rank is not None else "")]
        first = self.first_time(level)
        for p, value in enumerate(self.values):
            cross = "-" if self.crossing is None else f"{self.crossing[p]:.4g}"
            line = (f"{value:8.4g} {self.merged[p, -1]:14.4f} {first[p]:16.4g} {cross:>14} "
                    f"{self.clusters[p, -1]:16.3f}")
            if self.rank is not None:
                line += f" {self.rank[p, -1]:12.3f}"
            lines.append(line)
        return "\n".join(lines)


def phase_diagram(values: Sequence[float], times, n: int = 32, d: int = 8, prompts: int = 256, seed: int = 0,
                  kind: str = "SA", integrator: str = "rk4", dt: float | str = 0.1, threshold: float = 0.999,
                  ensemble: tuple[str, str] | None = None, make_field: Callable | None = None,
                  parameter: str = "beta", rank: bool = False, rho0: float = 0.0,
                  progress: Callable | None = None) -> PhaseResult:
    """The sweep: for every ``value``, ``prompts`` uniform prompts of ``n`` tokens on S^{d-1} (the
    same for every value, ``sample_prompts({"kind": "uniform"}, d, n, prompts, seed)``) run to
    ``times`` by :func:`~meanfield.particles.batch.run_batch` (``integrator``, ``dt``).

    The field of a value: ``make_field(value)`` when given (any model parameter: a
    :class:`~meanfield.dynamics.velocity.Velocity` or anything with ``batch``; ``parameter``
    names it), else the head ``beta = value`` of ``kind`` (``"SA"``, ``"USA"``, ``"USA_shift"``)
    with ``Q = K = V = I``, or with ``ensemble = (qk, v)`` the per-prompt draws of
    :func:`draw_ensemble` (``seed``; the same draws at every beta). The equiangular curve
    (``rho(t)`` and the crossing time of ``threshold`` from ``rho0``) is computed for the
    identity beta sweep. ``progress(value, result)`` after each value."""
    from ..dynamics.velocity import Velocity
    from ..fields.attention import AttentionModel, DirectField

    vals = np.atleast_1d(np.asarray(values, dtype=float))
    if vals.ndim != 1 or vals.size == 0 or not np.all(np.isfinite(vals)):
        raise ValueError("values must be a nonempty sequence of finite numbers")
    n, d = _integer("n", n, 2), _integer("d", d, 2)
    prompts = _integer("prompts", prompts, 1)
    kind = _kind(kind)
    if make_field is None and np.any(vals < 0):
        raise ValueError("beta must be >= 0")
    x0, w = sample_prompts({"kind": "uniform"}, d, n, prompts, seed)
    QK = V = None
    if ensemble is not None and make_field is None:
        QK, V = draw_ensemble(d, prompts, ensemble[0], ensemble[1], seed)
    P = vals.size
    t_out = np.atleast_1d(np.asarray(times, dtype=float))
    merged, clusters, order = (np.zeros((P, t_out.size)) for _ in range(3))
    ranks = np.zeros((P, t_out.size)) if rank else None
    start = _time.perf_counter()
    for p, value in enumerate(vals):
        if make_field is not None:
            f = make_field(float(value))
        elif QK is not None:
            f = EnsembleField(float(value), QK, V, normalized=kind == "SA")
        else:
            m = AttentionModel(d, beta=float(value), normalized=kind == "SA", shift=kind == "USA_shift")
            f = Velocity.from_backend(DirectField(m))
        res = run_batch(f, x0, t_out, integrator=integrator, dt=dt, weights=w, threshold=threshold, rank=rank,
                        energy=False)
        merged[p] = res.per_prompt["merged_fraction"].mean(axis=1)
        clusters[p] = res.per_prompt["n_clusters"].mean(axis=1)
        order[p] = res.per_prompt["order_parameter"].mean(axis=1)
        if rank:
            ranks[p] = res.per_prompt["gram_rank"].mean(axis=1)
        if progress is not None:
            progress(float(value), res)
    seconds = _time.perf_counter() - start
    rho = crossing = None
    label = "Q = K = V = I"
    if make_field is None and ensemble is None and parameter == "beta":
        rho = np.stack([equiangular_rho(t_out, rho0, b, n, kind) for b in vals])
        crossing = np.array([equiangular_crossing_time(b, n, rho0, threshold, kind) for b in vals])
    elif ensemble is not None and make_field is None:
        label = f"Q^T K {ensemble[0]}, V {ensemble[1]} (per prompt)"
    elif make_field is not None:
        label = "make_field"
    return PhaseResult(parameter=parameter, values=vals, times=t_out, n=n, d=d, prompts=prompts, kind=kind,
                       integrator=integrator, dt=dt, threshold=float(threshold), merged=merged, clusters=clusters,
                       order=order, rank=ranks, rho0=float(rho0), rho=rho, crossing=crossing, ensemble=label,
                       seconds=seconds)


def plot_phase(results, path, title: str | None = None, statistic: str = "merged"):
    """Heat maps of ``statistic`` (``"merged"``, ``"clusters"``, ``"order"`` or ``"rank"``) of one
    :class:`PhaseResult` or a list (one panel each): ``t`` on x, the parameter on y, the
    equiangular crossing time ``T(beta)`` drawn over it (white dashes) and the level 1/2 of the
    merged fraction (black). PNG (matplotlib, Agg); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    results = [results] if isinstance(results, PhaseResult) else list(results)
    fig, axes = plt.subplots(1, len(results), figsize=(5.6 * len(results), 4.4), squeeze=False)
    labels = {"merged": r"$P(\langle x_i, x_j\rangle \geq %g)$", "clusters": "mean cluster count",
              "order": r"mean $|\frac{1}{n}\sum_i x_i|$", "rank": "mean rank of the thresholded Gram matrix"}
    for ax, r in zip(axes[0], results):
        z = getattr(r, statistic)
        if z is None:
            raise ValueError(f"the result has no {statistic!r} statistic")
        vmin, vmax = (0.0, 1.0) if statistic in ("merged", "order") else (1.0, float(r.n))
        pc = ax.pcolormesh(r.times, r.values, z, shading="nearest", cmap="RdBu_r", vmin=vmin, vmax=vmax,
                           rasterized=True)
        cb = fig.colorbar(pc, ax=ax)
        cb.set_label(labels[statistic] % r.threshold if statistic == "merged" else labels[statistic])
        if r.values.size > 1 and r.times.size > 1:
            ax.contour(r.times, r.values, r.merged, levels=[0.5], colors="k", linewidths=1.0)
            ax.plot([], [], color="k", lw=1.0, label="merged fraction = 1/2")
        if r.crossing is not None:  # on a fine grid of beta (the quadrature is cheap)
            fine = np.linspace(r.values[0], r.values[-1], 200)
            cross = np.array([equiangular_crossing_time(b, r.n, r.rho0, r.threshold, r.kind) for b in fine])
            ok = np.isfinite(cross) & (cross <= r.times[-1])
            ax.plot(cross[ok], fine[ok], color="w", ls="--", lw=2.0,
                    label=rf"equiangular $\rho(t) = {r.threshold:g}$ ($\rho_0 = {r.rho0:g}$)")
        ax.set_xlim(r.times[0], r.times[-1])
        ax.set_ylim(r.values[0], r.values[-1])
        ax.set_xlabel("$t$")
        ax.set_ylabel(rf"$\{r.parameter}$" if r.parameter == "beta" else r.parameter)
        ax.set_title(f"{r.kind}, $d = {r.d}$, $n = {r.n}$, {r.prompts} prompts", fontsize=10)
        ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

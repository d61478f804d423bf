r"""The velocity model: a sum of terms, fixed or piecewise constant in time.

.. math::

    X[\mu](t, x) = \sum_h w_h X_h[\mu](x) + P_x\big(W \sigma(U x + b)\big)

with attention heads ``h`` (:class:`Head`: an :class:`~meanfield.fields.attention.AttentionModel`
and a weight ``w_h``, which may be negative: a repulsive head) and an optional perceptron
(:class:`~meanfield.dynamics.perceptron.Perceptron`, a local term that does not depend on the
measure). :class:`Terms` is the set of terms acting on one time interval.

:class:`VelocityModel` says which terms act when: one :class:`Terms` for all times, a
piecewise constant ``schedule`` (``(t_k, Terms_k)``: from ``t_k`` on, to the next entry,
these terms replace the model's; the measure-to-measure construction), or
:class:`RandomHeads` (the homogenized Transformer: ``count`` heads with iid Gaussian ``Q, K,
V`` entries drawn afresh for every layer ``[k interval, (k + 1) interval)``, the field their
mean). The draws of layer ``k`` come from ``numpy.random.default_rng([seed, k])``: a
function of ``(seed, k)`` alone, so the PDE, the particles, every MPI rank and a restarted
run all see the same heads without any state to save.

The time steppers ask the model for its switch times (:meth:`VelocityModel.next_switch`)
and land on them exactly, as on output times: every step then lies inside one interval, on
which the field does not depend on time. The step rules ask :class:`Terms` for its time
scales (:meth:`Terms.rate_bound`, :meth:`Terms.interaction_norm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..fields.attention import AttentionModel, growth_rate

__all__ = ["Head", "MASKS", "Terms", "RandomHeads", "VelocityModel", "as_velocity_model", "describe_model", "run_label"]

#: The attention masks of :class:`VelocityModel`.
MASKS = ("none", "causal")


@dataclass(frozen=True)
class Head:
    """One attention head and its weight ``w_h`` in the sum (negative: repulsion)."""

    attention: AttentionModel
    weight: float = 1.0

    def __post_init__(self):
        w = float(self.weight)
        if not math.isfinite(w):
            raise ValueError(f"weight must be a finite number, got {self.weight!r}")
        object.__setattr__(self, "weight", w)

    def symmetric_form(self) -> float | None:
        """``s`` when the head is a gradient term: USA with ``Q^T K`` symmetric and ``V = s Q^T K``
        (then its field is the gradient of ``s E_h``, ``E_h`` the head's
        :func:`~meanfield.fields.energy.energy`); at ``beta = 0`` (field ``P_x V m``) ``V``
        symmetric gives ``s = 1`` (``E = <m, V m> / 2``). ``None`` otherwise."""
        m = self.attention
        if m.normalized:
            return None
        V = m.V
        scale = max(1.0, float(np.abs(V).max()))
        if m.beta == 0.0:
            return 1.0 if np.abs(V - V.T).max() <= 1e-12 * scale else None
        A = m.Q.T @ m.K
        a_scale = max(1e-300, float(np.abs(A).max()))
        if np.abs(A - A.T).max() > 1e-12 * a_scale:
            return None
        s = float(np.sum(V * A) / np.sum(A * A)) if np.any(A) else 0.0
        if np.abs(V - s * A).max() > 1e-12 * scale:
            return None
        return s


@dataclass(frozen=True)
class Terms:
    """The velocity terms acting on one time interval: ``heads`` and an optional ``perceptron``."""

    d: int
    heads: tuple[Head, ...] = ()
    perceptron: object = None  # meanfield.dynamics.perceptron.Perceptron or None

    def __post_init__(self):
        heads = tuple(h if isinstance(h, Head) else Head(h) for h in self.heads)
        object.__setattr__(self, "heads", heads)
        for i, h in enumerate(heads):
            if h.attention.d != self.d:
                raise ValueError(f"head {i} is for d = {h.attention.d}, the model for d = {self.d}")
        if self.perceptron is not None and self.perceptron.d != self.d:
            raise ValueError(f"the perceptron is for d = {self.perceptron.d}, the model for d = {self.d}")

    @property
    def single_head(self) -> AttentionModel | None:
        """The head's model when these terms are exactly one head of weight 1 (the first wave's
        model: its field is the backend's, bit for bit), else ``None``."""
        if len(self.heads) == 1 and self.heads[0].weight == 1.0 and self.perceptron is None:
            return self.heads[0].attention
        return None

    def rate_bound(self, max_mode: int = 64) -> float:
        """A characteristic rate (1/time) of these terms: ``sum_h |w_h| rate_h`` (each head's
        :meth:`~meanfield.fields.attention.AttentionModel.rate_bound`) plus the perceptron's
        :meth:`~meanfield.dynamics.perceptron.Perceptron.rate_bound`; at least 1e-300."""
        rate = sum(abs(h.weight) * h.attention.rate_bound(max_mode=max_mode) for h in self.heads if h.weight)
        if self.perceptron is not None:
            rate += self.perceptron.rate_bound()
        return float(max(rate, 1e-300))

    def interaction_norm(self) -> float:
        """The largest ``||beta Q^T K||_2`` of the heads (0 without heads): the inverse square
        of the attention's length scale."""
        return max((float(np.linalg.norm(h.attention.interaction, 2)) for h in self.heads if h.weight), default=0.0)

    def length_scale(self) -> float:
        """The length over which the field changes: ``min(1, 1/sqrt(a), 1/||U||_2)`` with ``a``
        the :meth:`interaction_norm` and ``U`` the perceptron's inner matrix (the automatic
        CFL rule of the particles moves a token at most ``cfl`` times this per step)."""
        a = self.interaction_norm()
        length = 1.0 if a <= 1.0 else 1.0 / math.sqrt(a)
        if self.perceptron is not None:
            u = float(np.linalg.norm(self.perceptron.U, 2))
            if u > 1.0:
                length = min(length, 1.0 / u)
        return length

    def growth_rates(self, l) -> np.ndarray:
        """Linear growth rates of degree-``l`` harmonics about the uniform density: the weighted
        sum of the heads' rates (SPEC section 2 per head; SA heads divided by their own
        ``a_0``). Needs rotation-invariant heads (``Q^T K = c I``, ``V = v I``) and no
        perceptron (which moves the uniform state)."""
        if self.perceptron is not None:
            raise ValueError("a perceptron moves the uniform state: there are no linear rates about it")
        total = np.zeros(np.shape(l), dtype=float)
        for i, h in enumerate(self.heads):
            iso = h.attention.isotropic()
            if iso is None:
                raise ValueError(f"head {i} is not rotation invariant (Q^T K = c I, V = v I): no closed-form rates")
            c, v = iso
            m = h.attention
            total = total + h.weight * v * growth_rate(l, m.beta * c, self.d, m.normalized, shift=m.logit_offset != 0.0)
        return total

    def gradient_weights(self) -> tuple[list[float], object] | None:
        """``([s_h w_h per head], perceptron weights)`` when the terms are a gradient flow (every
        head a gradient term, :meth:`Head.symmetric_form`, and the perceptron in gradient
        form ``W = U^T diag(w)``), else ``None``: then the run has no energy."""
        scales = []
        for h in self.heads:
            s = h.symmetric_form()
            if s is None:
                return None
            scales.append(s * h.weight)
        pw = None
        if self.perceptron is not None:
            pw = self.perceptron.gradient_weights()
            if pw is None:
                return None
        return scales, pw

    def describe(self) -> str:
        """The terms in words, e.g. ``"SA beta=9 + (-0.5) SA beta=1 + perceptron m=4 relu"``."""
        parts = []
        for h in self.heads:
            m = h.attention
            text = f"{m.kind} beta={m.beta:g}"
            if m.shift and not m.normalized:
                text += " (shifted)"
            if h.weight != 1.0:
                text = f"({h.weight:g}) {text}"
            parts.append(text)
        if self.perceptron is not None:
            parts.append(self.perceptron.describe())
        return " + ".join(parts) if parts else "no terms (X = 0)"


@dataclass(frozen=True)
class RandomHeads:
    """``count`` attention heads with iid ``N(0, std^2)`` entries of ``Q, K, V``, drawn afresh for
    every layer ``[k interval, (k + 1) interval)`` from ``default_rng([seed, k])``; the field
    is their mean (weights ``1 / count``), plus the optional fixed ``perceptron``."""

    d: int
    count: int
    interval: float
    seed: int = 0
    normalized: bool = True
    beta: float = 1.0
    Q_std: float = 1.0
    K_std: float = 1.0
    V_std: float = 1.0
    shift: bool = False
    perceptron: object = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if int(self.count) != self.count or self.count < 1:
            raise ValueError(f"count must be an integer >= 1, got {self.count!r}")
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"interval must be a finite number > 0, got {self.interval!r}")
        for name in ("Q_std", "K_std", "V_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def start(self, k: int) -> float:
        """The start ``k * interval`` of layer ``k`` (by multiplication: no drift)."""
        return k * self.interval

    def layer(self, t: float) -> int:
        """The layer ``k`` with ``start(k) <= t < start(k + 1)``."""
        k = int(math.floor(t / self.interval))
        while self.start(k + 1) <= t:
            k += 1
        while k > 0 and self.start(k) > t:
            k -= 1
        return max(k, 0)

    def draw(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(Q, K, V)``, each ``(count, d, d)``, of layer ``k``."""
        rng = np.random.default_rng([int(self.seed), int(k)])
        shape = (self.count, self.d, self.d)
        Q = rng.standard_normal(shape) * self.Q_std
        K = rng.standard_normal(shape) * self.K_std
        V = rng.standard_normal(shape) * self.V_std
        return Q, K, V

    def terms(self, k: int) -> Terms:
        """The :class:`Terms` of layer ``k`` (the last layer's are kept)."""
        got = self._cache.get(k)
        if got is None:
            Q, K, V = self.draw(k)
            heads = tuple(Head(AttentionModel(d=self.d, beta=self.beta, Q=Q[i], K=K[i], V=V[i],
                                              normalized=self.normalized, shift=self.shift), 1.0 / self.count)
                          for i in range(self.count))
            got = Terms(self.d, heads, self.perceptron)
            self._cache.clear()
            self._cache[k] = got
        return got


class VelocityModel:
    """Which :class:`Terms` act at each time.

    Parameters
    ----------
    d : int
        Ambient dimension.
    terms : Terms or AttentionModel, optional
        The terms from ``t = 0`` on (an :class:`AttentionModel` is one head of weight 1).
    schedule : sequence of ``(t, Terms)``
        From each ``t`` on (to the next entry) these terms replace the model's; the times
        must be increasing and ``>= 0``.
    random_heads : RandomHeads, optional
        Heads redrawn every layer (then ``terms`` and ``schedule`` must be empty).
    mask : str
        ``"none"`` (every token attends to every token) or ``"causal"``: the token at
        position ``s`` in ``[0, 1]`` attends to positions ``s' <= s`` only (particles: token i to
        tokens j <= i, positions ``s_i = i / n``; mean field: a density on ``[0, 1] x S^{d-1}``,
        :mod:`meanfield.fields.causal`). Every attention head is masked; the perceptron is local.
    alibi : float
        ``lambda >= 0``, causal models only: the ALiBi bias ``-lambda (s - s')`` added to every
        logit (a weight ``exp(-lambda (s - s'))`` on the source at ``s'``).
    """

    def __init__(self, d: int, terms=None, schedule: Sequence = (), random_heads: RandomHeads | None = None,
                 mask: str = "none", alibi: float = 0.0):
        self.d = int(d)
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(repr(m) for m in MASKS)}, got {mask!r}")
        if isinstance(alibi, bool) or not isinstance(alibi, (int, float)) or not (math.isfinite(alibi) and alibi >= 0):
            raise ValueError(f"alibi must be a finite number >= 0, got {alibi!r}")
        if alibi and mask != "causal":
            raise ValueError(f"alibi = {alibi:g} is a bias of causal attention: it needs mask = \"causal\"")
        #: ``"none"`` or ``"causal"``, and the ALiBi slope lambda of a causal model
        self.mask = mask
        self.alibi = float(alibi)
        if isinstance(terms, AttentionModel):
            terms = Terms(self.d, (Head(terms),))
        if terms is None:
            terms = Terms(self.d)
        if random_heads is not None and (terms.heads or terms.perceptron is not None or schedule):
            raise ValueError("random heads replace the model's terms: give the perceptron to RandomHeads, no schedule")
        times, segments = [0.0], [terms]
        for i, (t, seg) in enumerate(schedule):
            t = float(t)
            if not (math.isfinite(t) and t >= 0):
                raise ValueError(f"schedule entry {i}: t must be a finite number >= 0, got {t!r}")
            if isinstance(seg, AttentionModel):
                seg = Terms(self.d, (Head(seg),))
            if seg.d != self.d:
                raise ValueError(f"schedule entry {i} is for d = {seg.d}, the model for d = {self.d}")
            if t == 0.0 and i == 0:
                segments[0] = seg
                continue
            if not t > times[-1]:
                raise ValueError(f"schedule entry {i}: t = {t:g} must be larger than the previous switch time {times[-1]:g}")
            times.append(t)
            segments.append(seg)
        self.switch_times = tuple(times)
        self.segments = tuple(segments)
        self.random_heads = random_heads

    @classmethod
    def single(cls, model: AttentionModel) -> "VelocityModel":
        """One head of weight 1 for all times (the first wave's model)."""
        return cls(model.d, model)

    @property
    def causal(self) -> bool:
        """Whether the heads are causally masked (``mask == "causal"``)."""
        return self.mask == "causal"

    @property
    def time_dependent(self) -> bool:
        return self.random_heads is not None or len(self.segments) > 1

    def segment(self, t: float) -> int:
        """The key of the terms acting at ``t``: the schedule's segment index, or the random layer."""
        if self.random_heads is not None:
            return self.random_heads.layer(t)
        return int(np.searchsorted(self.switch_times, t, side="right")) - 1 if t >= 0 else 0

    def terms_at(self, t: float) -> Terms:
        """The :class:`Terms` acting at time ``t`` (right-continuous: at a switch time, the new ones)."""
        k = self.segment(t)
        if self.random_heads is not None:
            return self.random_heads.terms(k)
        return self.segments[k]

    def next_switch(self, t: float) -> float:
        """The first switch time after ``t`` (``inf`` when the terms never change again)."""
        if self.random_heads is not None:
            return self.random_heads.start(self.random_heads.layer(t) + 1)
        k = self.segment(t)
        return self.switch_times[k + 1] if k + 1 < len(self.switch_times) else math.inf

    @property
    def single_head(self) -> AttentionModel | None:
        """The one head of weight 1 when that is the whole model for all times (and unmasked),
        else ``None``."""
        return None if self.time_dependent or self.causal else self.segments[0].single_head

    def all_terms(self) -> tuple[Terms, ...]:
        """The fixed segments' terms (random heads: layer 0's, as an example of their kind)."""
        if self.random_heads is not None:
            return (self.random_heads.terms(0),)
        return self.segments

    def describe(self) -> str:
        if self.random_heads is not None:
            r = self.random_heads
            kind = "SA" if r.normalized else "USA"
            text = (f"{r.count} random {kind} heads beta={r.beta:g} (std Q {r.Q_std:g}, K {r.K_std:g}, V {r.V_std:g}), "
                    f"redrawn every {r.interval:g} (seed {r.seed})")
            return text + (f" + {r.perceptron.describe()}" if r.perceptron is not None else "") + self._mask_words()
        if len(self.segments) == 1:
            text = self.segments[0].describe()
        else:
            text = "; ".join(f"from t={t:g}: {s.describe()}" for t, s in zip(self.switch_times, self.segments))
        return text + self._mask_words()

    def _mask_words(self) -> str:
        if not self.causal:
            return ""
        return ", causal mask" + (f" with ALiBi lambda={self.alibi:g}" if self.alibi else "")


def as_velocity_model(model) -> VelocityModel:
    """A :class:`VelocityModel` from one (an :class:`AttentionModel` is one head of weight 1)."""
    if isinstance(model, VelocityModel):
        return model
    if isinstance(model, AttentionModel):
        return VelocityModel.single(model)
    if isinstance(model, Terms):
        return VelocityModel(model.d, model)
    raise TypeError(f"expected a VelocityModel, Terms or AttentionModel, got {type(model).__name__}")


def describe_model(model, noise: float = 0.0) -> str:
    """A model in words for the run's header and the pictures' titles: ``"SA beta=9"`` for one
    head of weight 1, else :meth:`VelocityModel.describe`; ``noise > 0`` adds ``", noise
    sigma=..."`` (the noise lives on the solver, not on the model)."""
    single = model if isinstance(model, AttentionModel) else as_velocity_model(model).single_head
    if single is not None:
        text = f"{single.kind} beta={single.beta:g}" + (" (shifted)" if single.logit_offset else "")
    else:
        text = as_velocity_model(model).describe()
    return text + (f", noise sigma={noise:g}" if noise and noise > 0 else "")


def run_label(source, model, noise: float = 0.0) -> str:
    """The pictures' titles: the case file's name and :func:`describe_model`, e.g.
    ``"circle_metastable, USA beta=5 (shifted), noise sigma=0.03"``; a case given as a
    mapping (``source`` like ``"<case>"``) has no name to show."""
    text = describe_model(model, noise)
    name = str(source)
    if name.startswith("<") and name.endswith(">"):
        return text
    from pathlib import Path

    return f"{Path(name).stem}, {text}"

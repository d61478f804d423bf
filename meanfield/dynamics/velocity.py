"""The velocity field of a :class:`~meanfield.dynamics.model.VelocityModel`: one object for the
PDE, the particles, every backend and the MPI split.

:class:`Velocity` holds a field backend per head (each chosen for its own kernel by the
``make_backend`` factory: spectral where it exists and pays, direct otherwise) and evaluates

    ``velocity(targets, sources, weights, t=t) = sum_h w_h backend_h(targets, sources, weights)
    + perceptron(targets)``

with the terms acting at ``t``. Its plans (:meth:`Velocity.plan`) hold each backend's own
plan of the points, made on first use. Exactly one head of weight 1 (the first wave's
model) returns the backend's array itself, bit for bit.

The MPI split passes ``evaluate``: a function ``(backend, targets, sources, local_sources)
-> field`` that evaluates one head on this rank's share (:func:`meanfield.parallel.split_evaluate`);
the perceptron is local and needs no communication.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..fields.attention import single_thread_blas
from ..fields.plans import PointPlan, as_points, make_plan
from .model import Terms, VelocityModel, as_velocity_model

__all__ = ["Velocity", "VelocityPlan", "as_velocity"]


class VelocityPlan(PointPlan):
    """A plan of a :class:`Velocity`: the points, and each head backend's own plan of them
    (:meth:`backend_plan`, made on first use)."""

    __slots__ = ()

    def backend_plan(self, backend, slot: int | None = None):
        """``backend``'s plan of these points. ``slot``: the head's place in a random layer,
        whose backends change from layer to layer: one plan per slot, replaced when the
        slot's backend changes (so a plan holds at most ``count`` of them)."""
        if slot is None:
            return self.prepared(("backend", id(backend)), lambda pts: make_plan(backend, pts))
        key = ("slot", slot)
        got = self._prepared.get(key)
        if got is None or got[0] is not backend:
            got = self._prepared[key] = (backend, make_plan(backend, self.points))
        return got[1]


class _Layer:
    """The terms acting on one interval with their backends: ``heads`` ``[(weight, backend)]``."""

    __slots__ = ("terms", "heads", "perceptron", "planned", "rates")

    def __init__(self, terms: Terms, backends, planned: bool):
        self.terms = terms
        self.heads = [(h.weight, b) for h, b in zip(terms.heads, backends) if h.weight != 0.0]
        self.perceptron = terms.perceptron
        self.planned = planned  # the backends live as long as the Velocity: each keeps its plans
        self.rates: dict = {}


class Velocity:
    """The field ``X[mu](t, x)`` of a velocity model.

    Parameters
    ----------
    model : VelocityModel, Terms or AttentionModel
    make_backend : callable
        ``make_backend(attention_model) -> backend`` (:func:`meanfield.pde.solver.make_field`
        with the run's settings); one call per head of every fixed segment, made up front;
        per head of each random layer when the layer is first reached.
    """

    #: the attention field protocol with time: ``field(targets, sources, weights, project=, t=)``
    time_aware = True

    def __init__(self, model, make_backend: Callable):
        self.model: VelocityModel = as_velocity_model(model)
        self.d = self.model.d
        self._make = make_backend
        self._fixed = [_Layer(terms, [make_backend(h.attention) for h in terms.heads], True)
                       for terms in self.model.segments] if self.model.random_heads is None else []
        self._random: tuple[int, _Layer] | None = None

    @classmethod
    def from_backend(cls, backend) -> "Velocity":
        """The velocity of one attention-field backend (one head of weight 1: its ``model``)."""
        return cls(backend.model, lambda _model: backend)

    # -- the terms at a time ---------------------------------------------------------------------
    def layer(self, t: float) -> _Layer:
        if self.model.random_heads is None:
            return self._fixed[self.model.segment(t)]
        k = self.model.segment(t)
        if self._random is None or self._random[0] != k:
            terms = self.model.terms_at(t)
            self._random = (k, _Layer(terms, [self._make(h.attention) for h in terms.heads], False))
        return self._random[1]

    def next_switch(self, t: float) -> float:
        """The first time after ``t`` at which the terms change (``inf``: never)."""
        return self.model.next_switch(t)

    def terms_at(self, t: float) -> Terms:
        return self.layer(t).terms

    def backends(self, t: float = 0.0) -> list:
        """The head backends acting at ``t``."""
        return [b for _, b in self.layer(t).heads]

    def fixed_backends(self) -> list:
        """The head backends of every fixed segment (none for random heads, made per layer)."""
        return [b for layer in self._fixed for _, b in layer.heads]

    @property
    def single_backend(self):
        """The backend when the model is one head of weight 1 for all times, else ``None``."""
        if self.model.single_head is None:
            return None
        return self._fixed[0].heads[0][1] if self._fixed[0].heads else None

    @property
    def name(self) -> str:
        single = self.single_backend
        if single is not None:
            return single.name
        names = sorted({getattr(b, "name", type(b).__name__) for layer in self._fixed for _, b in layer.heads})
        if self.model.random_heads is not None:
            names = ["per layer"]
        return "+".join(names) if names else "none"

    def rate_bound(self, t: float, max_mode: int = 64) -> float:
        """The characteristic rate of the terms at ``t`` (:meth:`Terms.rate_bound`), cached."""
        layer = self.layer(t)
        rate = layer.rates.get(max_mode)
        if rate is None:
            rate = layer.rates[max_mode] = layer.terms.rate_bound(max_mode)
        return rate

    def length_scale(self, t: float) -> float:
        """The length scale of the terms at ``t`` (:meth:`Terms.length_scale`), cached."""
        layer = self.layer(t)
        length = layer.rates.get("length")
        if length is None:
            length = layer.rates["length"] = layer.terms.length_scale()
        return length

    def interaction_norm(self, t: float) -> float:
        """The largest ``||beta Q^T K||_2`` of the heads at ``t`` (:meth:`Terms.interaction_norm`), cached."""
        layer = self.layer(t)
        norm = layer.rates.get("norm")
        if norm is None:
            norm = layer.rates["norm"] = layer.terms.interaction_norm()
        return norm

    # -- evaluation ------------------------------------------------------------------------------
    def plan(self, points) -> VelocityPlan:
        """A :class:`VelocityPlan` of ``points`` (checked shape, copied)."""
        x = np.asarray(as_points(points), dtype=float)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"points must have shape (N, {self.d}), got {x.shape}")
        return VelocityPlan(self, x)

    def _plan_for(self, backend, points, planned: bool, slot: int):
        if isinstance(points, VelocityPlan) and points.field is self:
            return points.backend_plan(backend, None if planned else slot)
        return as_points(points)

    def __call__(self, targets, sources, weights, project: bool = True, t: float = 0.0, local_sources=None,
                 evaluate: Callable | None = None, rows=None) -> np.ndarray:
        """The field of the measure ``(sources, weights)`` at ``targets`` with the terms acting at
        ``t``; ``project=False``: the sum before the tangential projection ``P_x``. ``targets``,
        ``sources``, ``local_sources`` may be plans of this velocity (:meth:`plan`) or arrays.
        ``evaluate(backend, targets, sources, local_sources)`` replaces the serial call of each
        head's backend (the MPI split).

        A causal model (``model.mask == "causal"``) takes two forms of the call:

        - ``weights (n,)``: the targets are ordered tokens and the sources the same tokens
          (the particles' ``field(x, x, w)``; ``x`` may be a batch ``(B, n, d)``): token ``i``
          attends to ``j <= i`` (:meth:`tokens`; ``rows``: the tokens to evaluate);
        - ``weights (P, M)`` (any model, serial): one measure per row, e.g. the prefix measures of
          :func:`~meanfield.fields.causal.band_measures` of the causal PDE's bands: the unmasked
          field of each, stacked ``(P, N, d)`` (:meth:`_bands`).
        """
        if np.ndim(weights) == 2:  # several measures on the same sources (the causal mean field's bands)
            if evaluate is not None or local_sources is not None:
                raise ValueError("the band form (weights (P, M)) is serial; an MPI split evaluates one band at a "
                                 "time (meanfield.pde.causal)")
            return self._bands(targets, sources, np.asarray(weights, dtype=float), project, t)
        if self.model.causal:
            return self.tokens(targets, weights, project=project, t=t, rows=rows)
        if rows is not None:
            raise ValueError("rows selects tokens of a causal model; this model has no mask")
        layer = self.layer(t)
        if evaluate is None:
            kw = {} if project else {"project": False}

            def evaluate(backend, tp, sp, _lp):
                return backend(tp, sp, weights, **kw)

        out = None
        with single_thread_blas():  # once for every head (the backends' own entries are then free)
            for slot, (weight, backend) in enumerate(layer.heads):
                tp = self._plan_for(backend, targets, layer.planned, slot)
                sp = tp if sources is targets else self._plan_for(backend, sources, layer.planned, slot)
                lp = None if local_sources is None else self._plan_for(backend, local_sources, layer.planned, slot)
                v = evaluate(backend, tp, sp, lp)
                if out is None:
                    out = v if weight == 1.0 else weight * v
                else:
                    out += v if weight == 1.0 else weight * v
            if layer.perceptron is not None:
                p = layer.perceptron(np.asarray(as_points(targets), dtype=float), project=project)
                out = p if out is None else out + p
        if out is None:
            out = np.zeros(np.shape(as_points(targets)), dtype=float)
        return out

    def _bands(self, targets, sources, weights, project, t) -> np.ndarray:
        """The band form (see :meth:`__call__`): the unmasked field of every row of ``weights``,
        ``(P, N, d)``. A backend with a ``bands`` method (the direct sums) evaluates all bands
        in one pass over the logits; every other backend one band at a time."""
        layer = self.layer(t)
        P = weights.shape[0]
        kw = {} if project else {"project": False}
        out = None
        with single_thread_blas():
            for slot, (weight, backend) in enumerate(layer.heads):
                tp = self._plan_for(backend, targets, layer.planned, slot)
                sp = tp if sources is targets else self._plan_for(backend, sources, layer.planned, slot)
                if hasattr(backend, "bands"):
                    v = backend.bands(tp, sp, weights, project=project)
                else:
                    v = np.stack([backend(tp, sp, wp, **kw) for wp in weights])
                if out is None:
                    out = v if weight == 1.0 else weight * v
                else:
                    out += v if weight == 1.0 else weight * v
            if layer.perceptron is not None:
                p = layer.perceptron(np.asarray(as_points(targets), dtype=float), project=project)
                out = np.broadcast_to(p, (P,) + p.shape).copy() if out is None else out + p
        if out is None:
            out = np.zeros((P, len(as_points(targets)), self.d), dtype=float)
        return out

    def tokens(self, x, weights, project: bool = True, t: float = 0.0, rows=None) -> np.ndarray:
        """The causal field on ordered tokens ``x (n, d)`` or a batch ``(B, n, d)`` of prompts
        with the token weights ``weights (n,)``: every head masked (token ``i`` attends to
        ``j <= i``, ALiBi ``-lambda (i - j) / n``; :func:`~meanfield.fields.causal.causal_tokens`:
        the backend's prefix sums or the masked direct sums), the perceptron pointwise.
        ``rows``: the token indices to evaluate (an MPI rank's share), default all."""
        from ..fields.causal import causal_tokens

        x = np.asarray(as_points(x), dtype=float)
        if x.ndim < 2 or x.shape[-1] != self.d:
            raise ValueError(f"tokens must have shape (..., n, {self.d}), got {x.shape}")
        layer = self.layer(t)
        alibi = self.model.alibi
        out = None
        with single_thread_blas():
            for weight, backend in layer.heads:
                v = causal_tokens(backend, x, weights, alibi, project=project, rows=rows)
                if out is None:
                    out = v if weight == 1.0 else weight * v
                else:
                    out += v if weight == 1.0 else weight * v
            if layer.perceptron is not None:
                xr = x if rows is None else x[..., np.asarray(rows, dtype=np.intp), :]
                p = layer.perceptron(xr.reshape(-1, self.d), project=project).reshape(xr.shape)
                out = p if out is None else out + p
        if out is None:
            shape = x.shape if rows is None else x.shape[:-2] + (len(rows), self.d)
            out = np.zeros(shape, dtype=float)
        return out

    def batch(self, x, weights, project: bool = True, t: float = 0.0) -> np.ndarray:
        """The field of ``B`` independent prompts, each on itself: ``x (B, n, d)``, the same token
        weights ``weights (n,)`` for every prompt; returns ``(B, n, d)``,

        ``X_b(t, x_bi) = sum_h w_h X_h[mu_b](x_bi) + P_x(W sigma(U x_bi + b))``,
        ``mu_b = sum_j w_j delta_{x_bj}``,

        with the terms acting at ``t``, in one vectorized evaluation (no Python loop over
        prompts). Every head is summed exactly by the batched direct sums
        (:meth:`~meanfield.fields.attention.DirectField.batch` of the head's model: the
        ``(prompts, n, n)`` logits in blocks of about ``2^18`` entries), whichever backend the
        velocity holds for single prompts (a spectral transform of ``n`` tokens pays only for
        large ``n``); the perceptron is pointwise; the sum is projected once (``P_x`` is
        linear). A causal model goes through :meth:`tokens`, which already takes batches.
        ``project=False``: the sum before ``P_x``."""
        from ..fields.attention import DirectField

        x = np.asarray(as_points(x), dtype=float)
        if x.ndim != 3 or x.shape[2] != self.d:
            raise ValueError(f"a batch of prompts must have shape (B, n, {self.d}), got {x.shape}")
        if self.model.causal:
            return self.tokens(x, weights, project=project, t=t)
        layer = self.layer(t)
        out = None
        with single_thread_blas():
            for weight, backend in layer.heads:
                direct = backend if isinstance(backend, DirectField) else DirectField(backend.model)
                v = direct.batch(x, weights, project=False)
                if out is None:
                    out = v if weight == 1.0 else weight * v
                else:
                    out += v if weight == 1.0 else weight * v
            if layer.perceptron is not None:
                p = layer.perceptron(x.reshape(-1, self.d), project=False).reshape(x.shape)
                out = p if out is None else out + p
        if out is None:
            out = np.zeros(x.shape, dtype=float)
        elif project:
            out -= np.einsum("bij,bij->bi", out, x)[..., None] * x
        return out

    @property
    def velocity(self) -> "Velocity":
        """Itself (a :class:`~meanfield.parallel.DistributedField` of a velocity has the same
        attribute: the velocity whose time scales the steppers read)."""
        return self

    def __repr__(self) -> str:
        return f"Velocity({self.model.describe()}; backends {self.name})"


def as_velocity(field) -> Velocity:
    """``field`` itself when it is a :class:`Velocity`, else the velocity of that one backend."""
    if isinstance(field, Velocity):
        return field
    return Velocity.from_backend(field)


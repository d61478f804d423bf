r"""Batches of independent prompts: ``B`` particle systems of ``n`` tokens on S^{d-1} at once.

Prompt ``b`` is its own empirical measure ``mu_b = sum_j w_j delta_{x_bj}`` and moves with its
own field, the tokens of other prompts never seen:

.. math::

    \dot x_{bi} = X[\mu_b](t, x_{bi}), \qquad b = 1..B, \quad i = 1..n, \qquad |x_{bi}| = 1.

The state is one array ``x (B, n, d)``; every stage is one vectorized evaluation of all the
prompts (:meth:`~meanfield.dynamics.velocity.Velocity.batch`: the ``(prompts, n, n)``
logits in blocks, never a Python loop over prompts; causal models through
:meth:`~meanfield.dynamics.velocity.Velocity.tokens`; per-prompt parameters through
:class:`~meanfield.particles.phase.EnsembleField`).

Integrators (:data:`~meanfield.particles.system.INTEGRATORS`, the same steps as
:class:`~meanfield.particles.system.ParticleSystem`)
--------------------------------------------------------------------------------------------
``rk4``, ``euler``, ``euler_tangent`` with a fixed ``dt``
    one step size for every prompt, the step before each output time (or switch time of the
    model) shortened to land on it, exactly as a single run: prompt ``b`` of a batch *is* the
    single run of its tokens, to round-off (the blocking of the sums differs).
``dopri5``, ``bs32`` (error controlled), or a fixed-step method with ``dt = "auto"``
    every prompt its own step: prompt ``b`` carries its own time ``t_b`` and step ``h_b``
    between two checkpoints (output or switch times, where all prompts meet); each
    iteration evaluates the stages of the prompts not yet at the checkpoint, all at once, with
    the step ``h_b`` of each. The error norm is per prompt (solve_ivp's RMS over the prompt's
    ``n d`` coordinates of the tangential estimate over ``atol + rtol max(|x|, |x_new|)``), each
    prompt accepted or retried alone, with the controller of the single run (first trial step
    from the automatic rule at every checkpoint, ``SAFETY``, ``MIN_FACTOR``, ``MAX_FACTOR``):
    again prompt ``b`` takes the steps of its single run. The cost of an iteration is that of
    the prompts still moving.

Statistics (:func:`batch_statistics`), per prompt at every output time, reduced over prompts to
the mean and the 5, 25, 50, 75, 95 % quantiles (:data:`QUANTILES`)
-----------------------------------------------------------------------------------------------
``order_parameter``
    ``r_b = |sum_i w_i x_bi|``.
``energy``
    the energy column of a single run (:func:`~meanfield.diagnostics.run_energy`): one head,
    ``E = 1/(2 beta) sum_ij w_i w_j (e^{beta <Q x_i, K x_j>} - 1)`` (``e^{-beta ||Q^T K||} E``
    with ``model.shift``), or the gradient form of composite terms; absent where undefined
    (causal, non-gradient terms, per-prompt ensembles).
``n_clusters``
    the number of connected groups of the graph ``<x_bi, x_bj> >= threshold`` (default 0.999,
    ``arccos`` of :data:`~meanfield.diagnostics.CLUSTER_DISTANCE`): vectorized minimum-label
    propagation over all prompts (``L_i <- min(L_i, min_{j ~ i} L_j)`` then ``L <- L[L]``, to
    the fixed point; the groups are the ``i`` with ``L_i = i``). Where "within the threshold"
    is an equivalence (clustered tokens: groups tighter than the threshold and farther apart
    than it) this is the authors' ``rank([<x_i, x_j> >= 0.999])`` and the count of
    :func:`~meanfield.diagnostics.find_particle_clusters` with ``cluster_mass = 0``; for
    tokens spread at the threshold's scale single linkage chains where the greedy
    complete-linkage cover of the diagnostics would split.
``mean_inner``, ``merged_fraction``
    the mean over pairs ``i < j`` of ``<x_bi, x_bj>`` and the fraction of pairs with
    ``<x_bi, x_bj> >= threshold`` (averaged over prompts: the probability that two tokens
    have merged, the authors' phase-diagram statistic).
``gram_rank`` (``rank=True``)
    the rank of the thresholded Gram matrix ``[<x_bi, x_bj> >= threshold]`` (batched SVD,
    ``O(B n^3)``): the authors' cluster count.

Memory (:func:`batch_memory`): the state and the stages ``O(B n d)``, the stored snapshots
``T B n d`` when kept, and the blocks of logits and of Gram matrices (at least one prompt's
``n x n``); :class:`BatchMemoryError` (a ``ValueError`` carrying the estimate) refuses a batch
whose estimate exceeds the budget (default half the physical memory).

Seeds: :func:`sample_prompts` draws prompt ``b`` from
``sample(spec, d, n, seed=[seed, b])`` (:func:`~meanfield.particles.sampling.sample`), so prompt
``b`` of a batch is the single sample with the seed sequence ``[seed, b]``, whatever ``B`` and
however the prompts are split (e.g. over MPI ranks: pass ``prompts`` the rank's indices).
"""

from __future__ import annotations

import math
import os
import time as _time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..pde.timestepping import NonFiniteStateError, StalledRunError, Stepper
from .system import INTEGRATORS, MAX_FACTOR, MIN_FACTOR, SAFETY

__all__ = [
    "BatchMemoryError",
    "BatchResult",
    "BatchState",
    "BatchSystem",
    "QUANTILES",
    "STATISTICS",
    "batch_energy",
    "batch_memory",
    "batch_statistics",
    "connected_groups",
    "memory_budget",
    "reduce_statistics",
    "run_batch",
    "sample_prompts",
]

#: The quantiles (fractions) of every statistic, after its mean.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: The summary columns of a statistic.
SUMMARY = ("mean", "q05", "q25", "q50", "q75", "q95")
#: The per-prompt statistics, in table order (``energy`` only where defined, ``gram_rank`` on request).
STATISTICS = ("order_parameter", "energy", "n_clusters", "mean_inner", "merged_fraction", "gram_rank")
#: Default number of logits (or Gram entries) per block of prompts.
BLOCK_ELEMENTS = 1 << 18


class BatchMemoryError(ValueError):
    """A batch whose memory estimate exceeds the budget: ``estimate`` and ``budget`` in bytes."""

    def __init__(self, estimate: int, budget: int, detail: str):
        self.estimate, self.budget = int(estimate), int(budget)
        super().__init__(f"particles.batch: the batch needs about {_size(estimate)} ({detail}), more than the "
                         f"budget of {_size(budget)}; run fewer prompts per batch (or fewer kept snapshots)")


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{int(nbytes)} B"


def memory_budget() -> int:
    """The default budget: half the physical memory (``os.sysconf``; 4 GiB where unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _integer(name: str, value, lower: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lower:
        raise ValueError(f"{name} must be an integer >= {lower}, got {value!r}")
    return int(value)


def batch_memory(B: int, n: int, d: int, integrator: str = "rk4", outputs: int = 1, keep_points: bool = False,
                 block_elements: int = BLOCK_ELEMENTS) -> tuple[int, str]:
    """``(bytes, what)``: the estimated peak memory of a batch of ``B`` prompts of ``n`` tokens in
    R^d, and the terms of the estimate in words.

    ``8 B n d (s + 6)`` for the state, the ``s`` stage slopes of the integrator (4 for ``rk4``,
    7 for ``dopri5``, 4 for ``bs32``, 1 for Euler) and the work arrays (new state, error,
    ``A y``, ``w V y``, the projection); ``8 T B n d`` for ``outputs = T`` kept snapshots;
    ``24 max(block, n^2)`` for a block of logits (or of Gram matrices, their threshold and the
    labels of the components: at least one prompt's ``n x n``); ``8 T B`` per statistic.
    """
    B, n, d = (_integer(k, v, 1) for k, v in (("particles.batch", B), ("n", n), ("d", d)))
    stages = {"rk4": 4, "dopri5": 7, "bs32": 4, "euler": 1, "euler_tangent": 1}.get(integrator, 7)
    state = 8 * B * n * d * (stages + 6)
    kept = 8 * int(outputs) * B * n * d if keep_points else 0
    block = 24 * max(int(block_elements), n * n)
    stats = 8 * int(outputs) * B * len(STATISTICS)
    total = state + kept + block + stats
    what = (f"{B} prompts x {n} tokens x d = {d}: state and {stages} stages {_size(state)}, "
            f"logit/Gram blocks {_size(block)}" + (f", {outputs} kept snapshots {_size(kept)}" if kept else ""))
    return total, what


def check_memory(B: int, n: int, d: int, budget: int | None = None, **kw) -> int:
    """The estimate of :func:`batch_memory`; :class:`BatchMemoryError` when it exceeds
    ``budget`` bytes (default :func:`memory_budget`)."""
    total, what = batch_memory(B, n, d, **kw)
    budget = memory_budget() if budget is None else int(budget)
    if total > budget:
        raise BatchMemoryError(total, budget, what)
    return total


# -- sampling --------------------------------------------------------------------------------------
def sample_prompts(initial_spec: dict, d: int, n: int, prompts, seed: int = 0, causal: bool = False):
    """``(x (B, n, d), w (n,))``: prompt ``b`` drawn by
    ``sample(initial_spec, d, n, seed=[seed, b])`` for ``b`` in ``range(prompts)`` (an int) or
    in the given indices (a rank's share of a split batch). Every prompt must get the same
    weights (``1/n`` for the sampled kinds)."""
    from .sampling import sample

    idx = range(_integer("particles.batch", prompts, 1)) if isinstance(prompts, (int, np.integer)) else prompts
    idx = [_integer("prompt index", b, 0) for b in idx]
    if not idx:
        raise ValueError("particles.batch: no prompts to draw")
    seed = _integer("seed", seed, 0)
    xs, w = [], None
    for b in idx:
        xb, wb = sample(initial_spec, d, n, [seed, b], causal=causal)
        if w is None:
            w = wb
        elif not np.array_equal(w, wb):
            raise ValueError("the prompts of a batch must have the same token weights")
        xs.append(xb)
    return np.stack(xs), w


def write_rows(path, rows: list[dict]) -> str:
    """``rows`` (dicts with the same keys) as a CSV file with a header row; returns ``path``."""
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# -- statistics ------------------------------------------------------------------------------------
def connected_groups(adjacent: np.ndarray) -> np.ndarray:
    """The number of connected components ``(B,)`` of each graph of the boolean adjacency
    matrices ``adjacent (B, n, n)`` (symmetric; the diagonal is ignored).

    Minimum-label propagation with pointer jumping, all graphs at once: start from
    ``L_i = i``; repeat ``L_i <- min(L_i, min_{j ~ i} L_j)``, ``L <- L[L]`` until nothing
    changes. Labels only decrease and always name a vertex of the same component; at the
    fixed point adjacent vertices share a label (else the larger would drop), so each
    component carries one label, its smallest vertex (which no propagation can lower), and
    the components are the ``i`` with ``L_i = i``. Each sweep is ``O(B n^2)``; the sweeps
    needed grow like the logarithm of the components' hop diameter (one or two for clusters).
    """
    A = np.asarray(adjacent, dtype=bool)
    if A.ndim != 3 or A.shape[1] != A.shape[2]:
        raise ValueError(f"adjacency must have shape (B, n, n), got {A.shape}")
    B, n, _ = A.shape
    if n == 0:
        return np.zeros(B, dtype=np.intp)
    idx = np.arange(n)
    L = np.broadcast_to(idx, (B, n)).copy()
    big = np.intp(n)
    while True:
        cand = np.where(A, L[:, None, :], big).min(axis=2)
        new = np.minimum(L, cand)
        new = np.take_along_axis(new, new, axis=1)
        if np.array_equal(new, L):
            break
        L = new
    return np.count_nonzero(L == idx, axis=1)


def batch_energy(field, x: np.ndarray, w: np.ndarray, t: float = 0.0, block_elements: int = BLOCK_ELEMENTS):
    """The energy ``(B,)`` of every prompt (the single run's energy column,
    :func:`~meanfield.diagnostics.run_energy`), or ``None`` where it is undefined: causal
    models, terms that are not a gradient flow, fields without a :class:`VelocityModel`
    (per-prompt ensembles). Blocks of ``(prompts, n, n)`` logits; ``inf`` on overflow."""
    from ..dynamics.model import as_velocity_model
    from ..fields.energy import _shifted_expm1

    model = getattr(field, "model", None)
    if model is None or not hasattr(model, "terms_at"):
        return None
    model = as_velocity_model(model)
    if model.causal:
        return None
    x = np.asarray(x, dtype=float)
    B, n, d = x.shape
    w = np.asarray(w, dtype=float)
    single = model.single_head
    if single is not None:
        heads, perceptron = [(single, 1.0, True if single.shift else None)], None
    else:
        terms = model.terms_at(t)
        form = terms.gradient_weights()
        if form is None:
            return None
        heads = [(h.attention, s, None) for h, s in zip(terms.heads, form[0]) if s]
        perceptron = terms.perceptron
    total = np.zeros(B)
    pb = max(1, block_elements // max(1, n * n))
    with np.errstate(over="ignore", invalid="ignore"):
        for head, scale, shifted in heads:
            qk = head.Q.T @ head.K
            beta = head.beta
            if beta == 0.0 or not beta * float(np.abs(qk).max()) > 0.0:
                m = np.einsum("j,bjd->bd", w, x)
                form_ = head.V if single is None and beta == 0.0 else qk  # (run_energy's conventions)
                total += 0.5 * scale * np.einsum("bd,de,be->b", m, form_, m)
                continue
            offset = head.logit_offset if shifted is None else beta * float(np.linalg.norm(qk, 2))
            ky = x @ qk.T
            for b0 in range(0, B, pb):
                s = np.matmul(x[b0:b0 + pb], np.swapaxes(ky[b0:b0 + pb], 1, 2))
                s *= beta
                if offset:
                    s = _shifted_expm1(s, offset)
                else:
                    np.expm1(s, out=s)
                total[b0:b0 + pb] += scale * np.einsum("i,bij,j->b", w, s, w) / (2.0 * beta)
        if perceptron is not None:
            total += perceptron.potential(x.reshape(-1, d)).reshape(B, n) @ w
    return total


def batch_statistics(x: np.ndarray, w: np.ndarray, threshold: float = 0.999, rank: bool = False,
                     block_elements: int = BLOCK_ELEMENTS) -> dict:
    """The per-prompt statistics ``{name: (B,)}`` of the tokens ``x (B, n, d)`` with weights
    ``w (n,)`` (module docstring): ``order_parameter``, ``n_clusters``, ``mean_inner``,
    ``merged_fraction`` and, with ``rank``, ``gram_rank``. The Gram matrices are formed a block
    of prompts at a time (about ``block_elements`` entries, at least one prompt)."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 3:
        raise ValueError(f"a batch of prompts must have shape (B, n, d), got {x.shape}")
    B, n, d = x.shape
    w = np.asarray(w, dtype=float)
    out = {"order_parameter": np.linalg.norm(np.einsum("j,bjd->bd", w, x), axis=1),
           "n_clusters": np.zeros(B), "mean_inner": np.zeros(B), "merged_fraction": np.zeros(B)}
    if rank:
        out["gram_rank"] = np.zeros(B)
    pairs = n * (n - 1) // 2
    off = ~np.eye(n, dtype=bool)
    pb = max(1, block_elements // max(1, n * n))
    for b0 in range(0, B, pb):
        b1 = min(B, b0 + pb)
        xb = x[b0:b1]
        G = np.matmul(xb, np.swapaxes(xb, 1, 2))
        A = G >= threshold
        if pairs:
            # sum over i != j of G and of the threshold, halved: the pairs i < j
            out["mean_inner"][b0:b1] = (G.sum(axis=(1, 2)) - np.einsum("bii->b", G)) / (2 * pairs)
            out["merged_fraction"][b0:b1] = np.count_nonzero(A & off, axis=(1, 2)) / (2 * pairs)
        out["n_clusters"][b0:b1] = connected_groups(A)
        if rank:
            out["gram_rank"][b0:b1] = np.linalg.matrix_rank(A.astype(float))
    if not pairs:
        out["mean_inner"][:] = np.nan
        out["merged_fraction"][:] = np.nan
    return out


def reduce_statistics(values: np.ndarray) -> np.ndarray:
    """``values (..., B)`` per prompt -> ``(..., 6)``: the mean and the :data:`QUANTILES`
    (``numpy.quantile``, linear interpolation) over the last axis."""
    v = np.asarray(values, dtype=float)
    q = np.moveaxis(np.quantile(v, QUANTILES, axis=-1), 0, -1)
    return np.concatenate([v.mean(axis=-1)[..., None], q], axis=-1)


# -- the result ------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    """A batch run: ``per_prompt[name] (T, B)`` at the output ``times (T,)``, their summaries
    ``summary[name] (T, 6)`` (:data:`SUMMARY`: mean, q05, q25, q50, q75, q95), the final tokens
    ``x (B, n, d)`` and, when kept, ``points (T, B, n, d)``. ``steps``: iterations (stage
    evaluations of all moving prompts at once); ``rejected``: rejected prompt steps."""

    times: np.ndarray
    weights: np.ndarray
    x: np.ndarray
    per_prompt: dict
    integrator: str
    threshold: float
    points: np.ndarray | None = None
    steps: int = 0
    rejected: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def prompts(self) -> int:
        return self.x.shape[0]

    @property
    def summary(self) -> dict:
        return {k: reduce_statistics(v) for k, v in self.per_prompt.items()}

    def rows(self) -> list[dict]:
        """One dict per output time: ``t``, ``prompts`` and, per statistic, its mean under the
        statistic's name and the quantiles as ``NAME_q05`` ... ``NAME_q95`` (the columns of a
        batch run's diagnostics table)."""
        summary = self.summary
        rows = []
        for k, t in enumerate(self.times):
            row = {"t": float(t), "prompts": self.prompts}
            for name in STATISTICS:
                if name not in summary:
                    continue
                s = summary[name][k]
                row[name] = float(s[0])
                for col, value in zip(SUMMARY[1:], s[1:]):
                    row[f"{name}_{col}"] = float(value)
            rows.append(row)
        return rows

    def write_csv(self, path) -> str:
        """:meth:`rows` as CSV (header row); returns ``path``."""
        return write_rows(path, self.rows())

    def table(self) -> str:
        """The means and the median per output time, as text."""
        summary = self.summary
        names = [k for k in STATISTICS if k in summary]
        head = f"{'t':>8} " + " ".join(f"{k[:15]:>15} {'(median)':>9}" for k in names)
        lines = [f"{self.prompts} prompts x {self.x.shape[1]} tokens x d = {self.x.shape[2]}, {self.integrator}, "
                 f"threshold {self.threshold:g}", head]
        for k, t in enumerate(self.times):
            lines.append(f"{t:8.4g} " + " ".join(f"{summary[n][k, 0]:15.6g} {summary[n][k, 3]:9.4g}" for n in names))
        return "\n".join(lines)


@dataclass
class BatchState:
    """Tokens ``x (B, n, d)`` at the common time ``t`` after ``steps`` iterations."""

    t: float
    x: np.ndarray
    steps: int = 0


# -- the system ------------------------------------------------------------------------------------
class BatchSystem(Stepper):
    """``B`` independent prompts moving together.

    Parameters
    ----------
    field : Velocity, EnsembleField or AttentionField backend
        Anything with ``batch(x, w, project=, t=)``; a backend or an :class:`AttentionModel`
        is wrapped in its :class:`~meanfield.dynamics.velocity.Velocity`.
    weights : array (n,)
        The token weights of every prompt (normalized to sum 1, as a single run's).
    integrator : str
        ``"rk4"`` (default), ``"euler"`` (the authors' scheme), ``"euler_tangent"``,
        ``"dopri5"``, ``"bs32"`` (module docstring).
    dt : float or "auto"
        The fixed step (``rk4`` and the Euler schemes), or ``"auto"``: the automatic rule of
        :class:`~meanfield.particles.system.ParticleSystem` per prompt (the first trial step of
        the error-controlled methods, which need ``"auto"``).
    cfl, rate_cfl, dt_max, rtol, atol, max_steps
        As :class:`~meanfield.particles.system.ParticleSystem`; ``max_steps`` bounds the
        iterations of the whole run.
    """

    def __init__(self, field, weights, integrator: str = "rk4", dt="auto", cfl: float = 0.4, rate_cfl: float = 0.1,
                 dt_max: float = math.inf, rtol: float = 1e-8, atol: float = 1e-10, max_steps: int | None = 1_000_000,
                 noise: float = 0.0, seeds=None):
        if not hasattr(field, "batch"):
            from ..dynamics.velocity import as_velocity
            from ..fields.attention import AttentionModel, DirectField

            field = as_velocity(DirectField(field) if isinstance(field, AttentionModel) else field)
        self.field = field
        w = np.array(weights, dtype=float)
        if w.ndim != 1 or w.size == 0 or np.any(w < 0) or not np.all(np.isfinite(w)) or not w.sum() > 0:
            raise ValueError("weights must be n >= 1 finite nonnegative numbers with a positive sum")
        self.weights = w / w.sum()
        if integrator not in INTEGRATORS:
            raise ValueError(f"unknown integrator {integrator!r}; choose one of {sorted(INTEGRATORS)}")
        self.integrator = INTEGRATORS[integrator]
        if dt != "auto":
            if isinstance(dt, bool) or not isinstance(dt, (int, float, np.floating)) or not (math.isfinite(dt) and dt > 0):
                raise ValueError(f"dt must be a finite number > 0 or \"auto\", got {dt!r}")
            if self.integrator.adaptive:
                raise ValueError(f"integrator {integrator!r} chooses its own steps: dt must be \"auto\" "
                                 f"(dt_max caps them), got {dt!r}")
            dt = float(dt)
        self.dt = dt
        self.cfl, self.rate_cfl, self.dt_max = float(cfl), float(rate_cfl), float(dt_max)
        self.rtol, self.atol = float(rtol), float(atol)
        self.max_steps = None if max_steps is None else int(max_steps)
        #: prompt steps rejected by the error control
        self.rejected = 0
        #: Brownian tokens (``model.noise``): sigma, and the noise seed of every prompt
        #: (prompt b draws the normals of :func:`~meanfield.particles.system.noise_normals` with
        #: its own seed, so it follows the single run with that seed)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.noise = float(noise)
        self.seeds = None
        if self.noise > 0:
            if self.integrator.adaptive or self.dt == "auto":
                raise ValueError("model.noise: a noisy batch needs a fixed step (solver.integrator \"rk4\", \"euler\" "
                                 "or \"euler_tangent\" with a number solver.dt)")
            if seeds is None:
                raise ValueError("a noisy batch needs the noise seed of every prompt (seeds)")
            self.seeds = [tuple(sd) if not isinstance(sd, (int, np.integer)) else int(sd) for sd in seeds]

    # -- the field --------------------------------------------------------------------------------
    @property
    def per_prompt_field(self) -> bool:
        """Whether the field has per-prompt parameters (it must then be given the prompts' indices)."""
        return hasattr(self.field, "subset")

    def _field_of(self, idx):
        return self.field.subset(idx) if idx is not None and self.per_prompt_field else self.field

    def velocity(self, x: np.ndarray, t: float = 0.0, project: bool = True, idx=None) -> np.ndarray:
        """The field of every prompt at its tokens ``x (B, n, d)`` (``idx``: the prompts' indices
        in the batch, for a per-prompt field evaluated on a subset)."""
        return self._field_of(idx).batch(x, self.weights, project=project, t=t)

    def _next_switch(self, t: float) -> float:
        f = getattr(self.field, "next_switch", None)
        return math.inf if f is None else f(t)

    # -- the fixed-step path ----------------------------------------------------------------------
    def step(self, state: BatchState, t_limit: float = math.inf) -> float:
        """One fixed step of every prompt not passing ``t_limit`` (nor the next switch time)."""
        t_limit = min(t_limit, self._next_switch(state.t))
        dt = self.clip_step(state.t, min(self.dt, self.dt_max), t_limit)
        if not (dt > 0 and math.isfinite(dt)) or state.t + dt == state.t:
            raise StalledRunError(f"t={state.t:.6g}: the step {dt:.3g} does not advance the time")
        t0 = state.t
        integ = self.integrator

        def rhs(x):
            return self.velocity(x, t0)

        if self.noise > 0:  # Strang: Brownian half step, the integrator's step, Brownian half step
            x = self._noisy(state, dt, rhs, t0)
        else:
            v0 = self.velocity(state.x, t0, project=not integ.unprojected)
            x = integ.step(rhs, state.x, dt, v0)
        if not np.all(np.isfinite(x)):
            raise NonFiniteStateError(f"t={t0 + dt:.6g}: a token position became non-finite")
        state.x = x
        self.finish_step(state, dt, t_limit)
        self._count(state)
        return dt

    def _noisy(self, state, dt: float, rhs, t0: float) -> np.ndarray:
        """``B(h/2) A(dt) B(h/2) x`` for every prompt (``h = sigma^2 dt``), as
        :meth:`ParticleSystem._noisy_step`: prompt b with the normals of its own seed at step
        ``state.steps``; the Brownian steps act row by row, so the prompts are stacked."""
        from .system import brownian_step, noise_normals

        B, n, d = state.x.shape
        if len(self.seeds) != B:
            raise ValueError(f"{len(self.seeds)} noise seeds for {B} prompts")
        g = np.stack([noise_normals(sd, state.steps, n, d) for sd in self.seeds])  # (B, n, 2, d)
        half = 0.5 * self.noise ** 2 * dt
        integ = self.integrator
        x = brownian_step(state.x.reshape(-1, d), half, np.ascontiguousarray(g[:, :, 0].reshape(-1, d))).reshape(B, n, d)
        v0 = self.velocity(x, t0, project=not integ.unprojected)
        x = integ.step(rhs, x, dt, v0)
        return brownian_step(x.reshape(-1, d), half, np.ascontiguousarray(g[:, :, 1].reshape(-1, d))).reshape(B, n, d)

    def _count(self, state):
        if self.max_steps is not None and state.steps > self.max_steps:
            raise StalledRunError(f"t={state.t:.6g}: more than max_steps = {self.max_steps} iterations")

    # -- the per-prompt path ----------------------------------------------------------------------
    def _evaluate(self, x, t, idx):
        """``(v, a)``: the projected field and the attention average before ``P_x``."""
        a = self.velocity(x, t, project=False, idx=idx)
        v = a - np.einsum("bij,bij->bi", a, x)[..., None] * x
        return v, a

    def _scales(self, t: float, idx):
        """``(rate, length)`` of the terms at ``t`` (scalars, or per prompt for an ensemble) as
        :meth:`ParticleSystem.time_scales`."""
        f = self._field_of(idx)
        a = np.max(f.interaction_norm(t))
        rate = f.rate_bound(t, max_mode=max(64, int(4.0 * math.sqrt(2.0 * a)) + 1))
        return np.asarray(rate, dtype=float), np.asarray(f.length_scale(t), dtype=float)

    def _auto(self, v, a, rate, length) -> np.ndarray:
        """The automatic step per prompt (:meth:`ParticleSystem._auto_rule`, without noise)."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            vmax = np.max(np.hypot.reduce(v, axis=2), axis=1)
            local = np.max(np.hypot.reduce(a, axis=2), axis=1)
            r = np.maximum(rate, local)
            if not (np.all(np.isfinite(vmax)) and np.all(np.isfinite(r))):
                raise NonFiniteStateError("the token speeds are not finite: the field overflowed; for USA at large "
                                          "beta use model.shift = true, SA, or a smaller beta")
            dt = self.rate_cfl / r
            cfl = np.where(vmax > 0, self.cfl * length / np.where(vmax > 0, vmax, 1.0), np.inf)
            dt = np.minimum(dt, cfl)
        if not np.all((dt > 0) & np.isfinite(dt)):
            raise StalledRunError(f"the automatic step is {float(np.min(dt)):.3g}: the run cannot advance")
        return np.minimum(dt, self.dt_max)

    def _clip(self, t: np.ndarray, h: np.ndarray, t_limit: float) -> np.ndarray:
        remaining = t_limit - t
        return np.where(h >= remaining * (1.0 - self.LANDING_SLACK), remaining, h)

    def _error_norm(self, x, x_new, err) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            err = err - np.einsum("bij,bij->bi", err, x_new)[..., None] * x_new
            scale = self.atol + self.rtol * np.maximum(np.abs(x), np.abs(x_new))
            return np.sqrt(np.mean(np.square(err / scale), axis=(1, 2)))

    def _per_prompt(self, state: BatchState, t_limit: float) -> None:
        """Every prompt from ``state.t`` to ``t_limit`` (no switch time between) with its own steps."""
        integ = self.integrator
        t0 = state.t
        x = state.x.copy()
        B = x.shape[0]
        rate, length = self._scales(t0, None)
        v, a = self._evaluate(x, t0, None)
        t = np.full(B, t0)
        h_trial = self._auto(v, a, rate, length)
        rejected = np.zeros(B, dtype=bool)
        exponent = -1.0 / (integ.error_order + 1) if integ.adaptive else 0.0
        while True:
            active = t < t_limit
            if not active.any():
                break
            idx = None if active.all() else np.flatnonzero(active)
            sub = (lambda arr: arr) if idx is None else (lambda arr: arr[idx])
            xs, vs, ts = sub(x), sub(v), sub(t)
            h = self._clip(ts, sub(h_trial), t_limit)
            floor = 10.0 * np.spacing(np.abs(ts))  # solve_ivp's smallest step
            if np.any(~(h > floor) & (h != t_limit - ts)):
                raise StalledRunError(f"t={float(ts.min()):.6g}: the error control needs steps at round-off "
                                      f"(rtol = {self.rtol:g}, atol = {self.atol:g})")
            hh = h[:, None, None]
            last = {}

            def rhs(y, _idx=idx):
                vv, aa = self._evaluate(y, t0, _idx)
                last["x"], last["a"] = y, aa
                return vv

            if integ.adaptive:
                with np.errstate(over="ignore", invalid="ignore"):
                    x_new, v_new, err = integ.step(rhs, xs, hh, vs)
                    norm = self._error_norm(xs, x_new, err)
                finite = np.isfinite(norm) & np.all(np.isfinite(x_new), axis=(1, 2))
                ok = finite & (norm <= 1.0)
                a_new = last["a"] if last.get("x") is x_new else self._evaluate(x_new, t0, idx)[1]
            else:
                x_new = integ.step(rhs, xs, hh, sub(a) if integ.unprojected else vs)
                if not np.all(np.isfinite(x_new)):
                    raise NonFiniteStateError(f"t={float(ts.max()):.6g}: a token position became non-finite")
                v_new, a_new = self._evaluate(x_new, t0, idx)
                ok = np.ones(h.size, dtype=bool)
            state.steps += 1
            self._count(state)
            pos = np.arange(B) if idx is None else idx
            acc, rej = pos[ok], pos[~ok]
            landed = h == t_limit - ts
            if integ.adaptive:
                self.rejected += int(rej.size)
                bad = ~ok
                nb = np.where(finite[bad], norm[bad], 1.0)
                h_trial[rej] = h[bad] * np.where(finite[bad], np.maximum(MIN_FACTOR, SAFETY * nb ** exponent), MIN_FACTOR)
                rejected[rej] = True
                with np.errstate(divide="ignore"):
                    ideal = np.where(norm[ok] == 0.0, np.inf, SAFETY * norm[ok] ** exponent)
                factor = np.minimum(MAX_FACTOR, ideal)
                factor = np.where(rejected[acc], np.minimum(1.0, factor), factor)
                h_trial[acc] = h[ok] * factor
                rejected[acc] = False
            else:
                rate_a, length_a = rate, length
                if rate.ndim:  # per prompt
                    rate_a, length_a = rate[acc], length[acc]
                h_trial[acc] = self._auto(v_new[ok], a_new[ok], rate_a, length_a)
            x[acc] = x_new[ok]
            v[acc] = v_new[ok]
            a[acc] = a_new[ok]
            t[acc] = np.where(landed[ok], t_limit, ts[ok] + h[ok])
        state.x = x
        state.t = t_limit

    # -- driving ----------------------------------------------------------------------------------
    def advance(self, state: BatchState, t_target: float, callback=None) -> BatchState:
        """Move every prompt from ``state.t`` to ``t_target`` exactly (through the switch times of
        the model); ``callback(state, dt)`` after each fixed step."""
        if self.dt != "auto":
            return super().advance(state, t_target, callback)
        while state.t < t_target:
            limit = min(t_target, self._next_switch(state.t))
            self._per_prompt(state, limit)
            if callback is not None:
                callback(state, None)
        return state

    def run(self, x0, times, keep_points: bool = False, threshold: float = 0.999, rank: bool = False,
            energy: bool = True, memory_limit: int | None = None, callback: Callable | None = None) -> BatchResult:
        """Run the batch from ``x0 (B, n, d)`` (rows normalized onto the sphere) through the
        output ``times`` (increasing, ``>= 0``; the run starts at ``t = 0``, and a time 0 records
        the start), recording the statistics there (:func:`batch_statistics`, the energy when
        ``energy`` and defined); ``callback(t, x)`` at every output time (e.g. to write the
        snapshots ``points (B, n, d)``). :class:`BatchMemoryError` first when the estimate
        exceeds ``memory_limit`` bytes (default :func:`memory_budget`)."""
        x = np.array(x0, dtype=float)
        if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 2:
            raise ValueError(f"x0 must have shape (B, n, d) with B, n >= 1 and d >= 2, got {x.shape}")
        B, n, d = x.shape
        if n != self.weights.size:
            raise ValueError(f"x0 has {n} tokens per prompt but the weights are for {self.weights.size}")
        if d != getattr(self.field, "d", d):
            raise ValueError(f"tokens live in R^{d} but the model is for d = {self.field.d}")
        if not np.all(np.isfinite(x)):
            raise ValueError("x0 must be finite")
        r = np.linalg.norm(x, axis=2, keepdims=True)
        if np.any(r == 0):
            raise ValueError("x0 has a zero token, which cannot be projected onto the sphere")
        x /= r
        t_out = np.atleast_1d(np.asarray(times, dtype=float))
        if t_out.ndim != 1 or t_out.size == 0 or not np.all(np.isfinite(t_out)) or t_out[0] < 0 \
                or np.any(np.diff(t_out) <= 0):
            raise ValueError(f"times must be a nonempty increasing sequence of finite numbers >= 0, got {times!r}")
        if not (0.0 < float(threshold) <= 1.0):
            raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
        check_memory(B, n, d, budget=memory_limit, integrator=self.integrator.name, outputs=t_out.size,
                     keep_points=keep_points)
        state = BatchState(0.0, x)
        per: dict[str, list] = {}
        points = np.empty((t_out.size, B, n, d)) if keep_points else None
        start = _time.perf_counter()
        for k, t in enumerate(t_out):
            self.advance(state, float(t))
            stats = batch_statistics(state.x, self.weights, threshold, rank)
            if energy:
                e = batch_energy(self.field, state.x, self.weights, float(t))
                if e is not None:
                    stats["energy"] = e
            for name, value in stats.items():
                per.setdefault(name, []).append(value)
            if keep_points:
                points[k] = state.x
            if callback is not None:
                callback(float(t), state.x)
        seconds = _time.perf_counter() - start
        per_prompt = {name: np.stack(per[name]) for name in STATISTICS if name in per}
        return BatchResult(times=t_out, weights=self.weights, x=state.x, per_prompt=per_prompt,
                           integrator=self.integrator.name, threshold=float(threshold), points=points,
                           steps=state.steps, rejected=self.rejected, seconds=seconds)


def run_batch(field, x0, times, integrator: str = "rk4", dt="auto", weights=None, keep_points: bool = False,
              threshold: float = 0.999, rank: bool = False, energy: bool = True, memory_limit: int | None = None,
              callback: Callable | None = None, **settings) -> BatchResult:
    """Run ``B`` prompts ``x0 (B, n, d)`` (weights ``1/n`` unless given) to the output ``times``
    with :class:`BatchSystem` ``(field, weights, integrator, dt, **settings)`` and return the
    :class:`BatchResult` (arguments of :meth:`BatchSystem.run`).

    >>> import numpy as np, meanfield as mf
    >>> from meanfield.particles.batch import run_batch, sample_prompts
    >>> x0, w = sample_prompts({"kind": "uniform"}, d=4, n=3, prompts=5, seed=1)
    >>> res = run_batch(mf.AttentionModel(d=4, beta=1.0), x0, [0.0, 30.0], dt=0.1)
    >>> res.per_prompt["n_clusters"][-1].tolist()   # d >= n: every prompt one cluster
    [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    x0 = np.asarray(x0, dtype=float)
    if weights is None:
        if x0.ndim != 3:
            raise ValueError(f"x0 must have shape (B, n, d), got {x0.shape}")
        weights = np.full(x0.shape[1], 1.0 / max(1, x0.shape[1]))
    system = BatchSystem(field, weights, integrator=integrator, dt=dt, **settings)
    return system.run(x0, times, keep_points=keep_points, threshold=threshold, rank=rank, energy=energy,
                      memory_limit=memory_limit, callback=callback)

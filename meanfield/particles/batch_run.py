"""``meanfield particles`` with ``particles.batch = B``: B independent prompts in one run.

Prompt b is drawn from the case's initial density with the seed ``[particles.seed, b]``
(:func:`~meanfield.particles.batch.sample_prompts`; a function of the seed and b alone) and
all prompts move together under the same velocity (:class:`~meanfield.particles.batch.BatchSystem`:
one vectorized evaluation of every prompt's field, B x n x n logits in blocks). The run
writes the files of a particle run (:func:`meanfield.run.drive`), with

* snapshots: ``points (B, n, d)``, ``masses (n,)`` (the token weights, the same for every
  prompt), ``velocity (B, n, d)``, and the per-prompt statistics ``order_parameter (B,)``,
  ``n_clusters (B,)`` (connected groups at ``<x_i, x_j> >= 0.999``), ``mean_inner (B,)``,
  ``merged_fraction (B,)`` (the fraction of pairs at ``>= 0.999``) and ``energy (B,)`` where
  defined;
* ``diagnostics.csv``: their mean over the prompts in the usual columns (``order_parameter``,
  ``energy``; ``n_clusters`` the median), the quantiles 5, 25, 50, 75, 95 % of the order
  parameter and the cluster count (``order_parameter_q05`` ..), ``merged_fraction`` and
  ``mean_inner``; ``min_density`` / ``max_density`` stay empty (no cells).

docs/batch.md has the model and the measured numbers. Restart continues from the last
snapshot bitwise (the points of every prompt are stored). Under ``mpiexec`` every rank runs its
contiguous share of the prompts (``Distributor.share``; at least one each) and the snapshots
gather them, so the files do not depend on the number of ranks. Noise (``model.noise``):
prompt b takes the Brownian normals of the seed ``[particles.seed, b]``, as the single run
with that seed; a fixed step is needed (``solver.integrator`` ``"rk4"`` or an Euler with a
number ``solver.dt``).
"""

from __future__ import annotations

import math

import numpy as np

from ..io.case import CaseError
from ..pde.timestepping import RunHealthError

__all__ = ["BatchRun", "build_batch"]

#: The quantiles written to diagnostics.csv (percent).
QUANTILES = (5, 25, 50, 75, 95)


def build_batch(case: dict, n: int, seed: int, source="<case>", dist=None):
    """``(system, state)`` of a batch case: the prompts, their system (checked: what a batch
    cannot do is a :class:`CaseError` naming the key)."""
    from ..initial import InitialDataError
    from ..pde.solver import make_velocity
    from ..run import build_model
    from .batch import BatchMemoryError, BatchState, BatchSystem, check_memory, sample_prompts

    B = case["particles"]["batch"]
    dom = case["domain"]
    d = 2 if dom["manifold"] == "circle" else int(dom.get("d") or 3)
    prompts = B
    if dist is not None and dist.size > 1:  # each rank its contiguous share of the prompts
        if B < dist.size:
            raise CaseError(source, "particles.batch", f"{B} prompts cannot be split across {dist.size} MPI ranks "
                            f"(at least one prompt per rank): run fewer ranks or more prompts")
        share = dist.share(B)
        prompts = list(range(share.start, share.stop))
    if case["initial"]["kind"] == "points":
        raise CaseError(source, "initial.kind", "\"points\" give one prompt; a batch samples its prompts from a "
                        "density (particles.batch = 1 for given points)")
    s = case["solver"]
    try:
        check_memory(B, n, d, integrator=s["integrator"])
    except BatchMemoryError as exc:
        raise CaseError(source, "particles.batch", str(exc).removeprefix("particles.batch: ")) from None
    model = build_model(case, d, source)
    try:
        x0, w = sample_prompts(case["initial"], d, n, prompts, seed, causal=model.causal)
    except (InitialDataError, ValueError) as exc:
        key = {"python": "initial.function"}.get(case["initial"]["kind"], "initial.kind")
        raise CaseError(source, key, str(exc)) from None
    velocity = make_velocity(model, "direct", s["tolerance"])
    indices = prompts if isinstance(prompts, list) else list(range(B))
    noise = case["model"]["noise"]
    try:
        system = BatchSystem(velocity, w, integrator=s["integrator"], dt=s["dt"], cfl=s["cfl"],
                             rate_cfl=s["rate_cfl"], dt_max=s["dt_max"], rtol=s["rtol"], atol=s["atol"], max_steps=None,
                             noise=noise, seeds=[[seed, b] for b in indices] if noise else None)
    except ValueError as exc:
        text = str(exc)
        key = "model.noise" if text.startswith("model.noise") else (
            "solver.integrator" if "integrator" in text else "solver.dt")
        raise CaseError(source, key, text.removeprefix("model.noise: ")) from None
    return system, BatchState(0.0, np.array(x0, dtype=float))  # (unit rows: the sampler normalizes)


class BatchRun:
    """Adapter of a :class:`~meanfield.particles.batch.BatchSystem` to :func:`meanfield.run.drive`."""

    RESTART_KEYS = ("t", "points", "masses")
    UNREAD_SECTIONS = ("compare",)  # (see meanfield.run.PdeRun)
    mesh = None  # no cells: no VTK, no density histogram

    def __init__(self, system, state, threshold: float = 0.999, dist=None, prompts: int | None = None):
        self.system, self.state, self.threshold = system, state, threshold
        #: the MPI split (each rank holds the contiguous share ``dist.share(prompts)`` of the prompts)
        self.dist = dist if dist is not None and dist.size > 1 else None
        self.prompts = int(prompts if prompts is not None else state.x.shape[0])
        self.snapshots: list[tuple[float, np.ndarray]] = []

    def _all(self, local: np.ndarray) -> np.ndarray:
        """The rows of every rank's prompts, in prompt order (serial: ``local`` itself)."""
        if self.dist is None:
            return local
        return self.dist.allgather_rows(np.ascontiguousarray(local, dtype=float), self.prompts)

    def _steps(self) -> int:
        """The iterations so far, the largest over the ranks (per-prompt steps may differ)."""
        if self.dist is None:
            return int(self.state.steps)
        return int(round(-self.dist.allreduce_min([-float(self.state.steps)])[0]))

    def describe(self) -> str:
        from ..dynamics.model import describe_model

        _, n, d = self.state.x.shape
        B = self.prompts
        split = f" ({self.dist.size} MPI ranks, each its share of the prompts)" if self.dist is not None else ""
        model = describe_model(self.system.field.model, self.system.noise)
        return (f"a batch of {B} prompts x {n} tokens on S^{d - 1}{split}; {model}; "
                f"{self.system.integrator.name}, {'automatic step' if self.system.dt == 'auto' else f'dt={self.system.dt:g}'}"
                ", direct sums over every prompt at once")

    def advance(self, t_out, on_step):
        self.system.advance(self.state, t_out, on_step)

    def snapshot(self):
        from .batch import batch_energy, batch_statistics

        st, w = self.state, self.system.weights
        stats = {k: self._all(val) for k, val in batch_statistics(st.x, w, self.threshold).items()}
        energy = batch_energy(self.system.field, st.x, w, st.t)
        if energy is not None:
            energy = self._all(energy)
        v = self._all(self.system.velocity(st.x, st.t))
        points = self._all(st.x)
        steps = self._steps()
        arrays = {"t": np.float64(st.t), "points": points.copy(), "masses": w.copy(), "velocity": v,
                  "steps": np.int64(steps)}
        arrays.update({k: np.asarray(val, dtype=float) for k, val in stats.items()})
        if energy is not None:
            arrays["energy"] = np.asarray(energy, dtype=float)
        order, clusters = stats["order_parameter"], stats["n_clusters"]
        row = {"t": float(st.t), "prompts": self.prompts, "mass": 1.0, "min_density": None,
               "max_density": None, "energy": None if energy is None else float(np.mean(energy)),
               "order_parameter": float(order.mean()), "n_clusters": int(round(float(np.median(clusters)))),
               "max_speed": float(np.sqrt(np.einsum("bij,bij->bi", v, v)).max()), "steps": steps}
        for q in QUANTILES:
            row[f"order_parameter_q{q:02d}"] = float(np.percentile(order, q))
        for q in QUANTILES:
            row[f"n_clusters_q{q:02d}"] = float(np.percentile(clusters, q))
        row["merged_fraction"] = float(np.nanmean(stats["merged_fraction"])) if st.x.shape[1] > 1 else None
        row["mean_inner"] = float(np.nanmean(stats["mean_inner"])) if st.x.shape[1] > 1 else None
        self.snapshots.append((st.t, points))
        return arrays, row

    def _share(self, points: np.ndarray) -> np.ndarray:
        if self.dist is None:
            return points
        return points[self.dist.share(self.prompts)]

    def check_restore(self, arrays: dict) -> None:
        x, w = arrays["points"], arrays["masses"]
        shape = (self.prompts,) + self.state.x.shape[1:]
        if x.dtype != np.float64 or x.shape != shape or w.shape != self.system.weights.shape:
            raise ValueError(f"points of shape {x.shape} and masses of shape {w.shape}, the case has a batch of shape "
                             f"{shape} (float64)")
        if arrays["t"].shape != ():
            raise ValueError("t is not a scalar")

    def restore(self, arrays: dict, history=()) -> None:
        st = self.state
        st.t = float(arrays["t"])
        full = np.array(arrays["points"], dtype=np.float64, order="C", copy=True)
        st.x = np.ascontiguousarray(self._share(full))
        st.steps = int(arrays["steps"])
        self.snapshots = [(float(h["t"]), h["points"]) for h in history] + [(st.t, full)]

    def polydata(self, arrays):  # pragma: no cover - drive writes VTK only for a mesh
        raise NotImplementedError

    def checkpoint(self) -> dict:
        return {"t": np.float64(self.state.t), "points": self._all(self.state.x).copy(),
                "masses": self.system.weights.copy(), "steps": np.int64(self._steps())}

    def summary(self) -> str:
        return f"{self.state.steps} steps" + (f" ({self.system.rejected} prompt steps rejected by the error control)"
                                              if self.system.rejected else "")

    def check_health(self) -> None:
        x = self.state.x
        r = np.einsum("bij,bij->bi", x, x)
        dev = np.abs(r - 1.0)
        if not np.all(np.isfinite(dev)):
            raise RunHealthError(f"t={self.state.t:.6g}: a token position became non-finite")
        if dev.max() > 1e-10:
            b, i = np.unravel_index(int(np.argmax(dev)), dev.shape)
            raise RunHealthError(f"t={self.state.t:.6g}: token {i} of prompt {b} left the sphere (|x|^2 = {r[b, i]!r})")

    def first_step(self) -> tuple[float, str]:
        s = self.system
        if s.dt != "auto":
            return min(float(s.dt), s.dt_max), ("dt" if s.dt <= s.dt_max else "dt_max")
        return math.inf, "error"

    def stall_hint(self) -> str:
        return "a smaller beta, the shifted kernel (model.shift = true) or SA helps; raise solver.max_steps"

"""Run a case: build the objects from a resolved case dict, evolve, write the outputs.

This is what ``meanfield run`` calls; scripts can call :func:`run_case` (or build
:class:`~meanfield.solver.Simulation` themselves, see ``cases/api_example.py``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import diagnostics as diag
from .attention import USA_LOGIT_LIMIT, AttentionModel, FieldOverflowError
from .case import CaseError, dump_case
from .initial import InitialDataError, density_function, project
from .mesh import CircleMesh, Mesh
from .output import RunWriter
from .solver import NonFiniteStateError, Simulation, State

__all__ = ["build_mesh", "build_model", "build_simulation", "output_times", "run_case", "RunResult", "RunFailure"]

log = logging.getLogger("meanfield")


class RunFailure(RuntimeError):
    """The run failed after it started; the last good state was saved."""


@dataclass
class RunResult:
    state: State
    rows: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    snapshots: list[tuple[float, np.ndarray]] = field(default_factory=list)


def build_mesh(case: dict, source="<case>") -> Mesh:
    dom = case["domain"]
    if dom["manifold"] == "circle":
        return CircleMesh(dom["cells"])
    from .sphere import MeshError, parse_mesh_spec

    try:
        return parse_mesh_spec(dom["mesh"], edge_points=dom["edge_points"])
    except MeshError as exc:
        raise CaseError(source, "domain.mesh", str(exc)) from None


def build_model(case: dict, d: int, source="<case>") -> AttentionModel:
    """The attention model of a case; USA that must overflow is invalid input."""
    m = case["model"]
    model = AttentionModel(d=d, beta=m["beta"], Q=m["Q"], K=m["K"], V=m["V"], normalized=m["kind"] == "SA")
    if not model.normalized:
        top = float(np.linalg.norm(model.interaction, 2))
        if top > USA_LOGIT_LIMIT:
            raise CaseError(source, "model.beta", f"USA attention overflows double precision when beta ||Q^T K||_2 > "
                            f"{USA_LOGIT_LIMIT:.1f} (here {top:.4g}); use model.kind = \"SA\" or a smaller beta")
    return model


def build_simulation(case: dict, source="<case>", dist=None) -> tuple[Simulation, State]:
    """The simulation and its initial state for a resolved case."""
    mesh = build_mesh(case, source)
    model = build_model(case, mesh.d, source)
    s = case["solver"]
    if s["scheme"] == "spectral":
        from .spectral_scheme import SpectralCircleSimulation

        if mesh.manifold != "circle":
            raise CaseError(source, "solver.scheme", "\"spectral\" exists on the circle only; use \"muscl\"")
        try:
            sim = SpectralCircleSimulation(mesh, model, dt_max=s["dt_max"])
        except ValueError as exc:
            raise CaseError(source, "solver.scheme", str(exc)) from None
        # the spectral state holds point values at the grid points, not cell averages
        f = density_function(case["initial"], mesh.d)
        rho0 = project(mesh, case["initial"]) if f is None else np.asarray(f(mesh.centers), dtype=float)
        return sim, State(0.0, rho0 / (rho0 @ mesh.areas))
    try:
        sim = Simulation(mesh, model, scheme=s["scheme"], backend=s["backend"], cfl=s["cfl"], rate_cfl=s["rate_cfl"],
                         dt_max=s["dt_max"], tolerance=s["tolerance"], dist=dist)
    except ValueError as exc:
        raise CaseError(source, "solver.backend", str(exc)) from None
    try:
        rho0 = project(mesh, case["initial"])
    except InitialDataError as exc:
        key = {"modes": "modes", "vmf": "centers", "python": "function", "points": "points"}.get(case["initial"]["kind"], "kind")
        raise CaseError(source, f"initial.{key}", str(exc)) from None
    except Exception as exc:  # the user's function raised or returned garbage
        if case["initial"]["kind"] == "python":
            raise CaseError(source, "initial.function", f"{type(exc).__name__}: {exc}") from None
        raise
    return sim, State(0.0, rho0)


def output_times(t_end: float, every: float) -> list[float]:
    """0, every, 2 every, ... (computed by multiplication, no drift) and t_end."""
    n = int(math.floor(t_end / every * (1 + 1e-12)))
    times = [k * every for k in range(n + 1)]
    if t_end - times[-1] > 1e-12 * t_end:
        times.append(t_end)
    else:
        times[-1] = t_end
    return times


#: Cell data of the ParaView files.
VTK_FIELDS = ("density", "masses", "areas", "velocity")


def _snapshot_arrays(sim: Simulation, state: State) -> dict:
    mesh = sim.mesh
    return {
        "t": np.float64(state.t),
        "points": mesh.centers,
        "masses": state.rho * mesh.areas,
        "areas": mesh.areas,
        "density": state.rho,
        "velocity": sim.velocity(state.rho),
    }


class PdeRun:
    """Adapter of a :class:`Simulation` to :func:`drive` (the finite-volume run)."""

    def __init__(self, sim: Simulation, state: State, criterion: diag.ClusterCriterion):
        self.sim, self.state, self.criterion = sim, state, criterion
        self.mesh = sim.mesh
        self.snapshots: list[tuple[float, np.ndarray]] = []

    def describe(self) -> str:
        sim = self.sim
        scheme = f"scheme {sim.fv.scheme}, backend {sim.fv.field.name}" if hasattr(sim, "fv") else "Fourier pseudo-spectral"
        return f"{self.mesh.manifold}, {self.mesh.n_cells} cells; {sim.model.kind} beta={sim.model.beta:g}; {scheme}"

    def advance(self, t_out, on_step):
        self.sim.advance(self.state, t_out, on_step)

    def snapshot(self):
        state, mesh = self.state, self.mesh
        arrays = _snapshot_arrays(self.sim, state)
        clusters = diag.find_clusters(mesh, state.rho, self.criterion)
        arrays["cluster_masses"], arrays["cluster_centers"] = clusters
        row = diag.compute(mesh, self.sim.model, state.rho, arrays["velocity"], state.t, state.steps, self.criterion,
                           clusters)
        self.snapshots.append((state.t, state.rho.copy()))
        return arrays, row

    def polydata(self, arrays):
        from .vtk_output import surface_polydata

        return surface_polydata(self.mesh, {k: arrays[k] for k in VTK_FIELDS})

    def checkpoint(self) -> dict:
        rho = self.state.rho.copy()
        mesh = self.mesh
        return {"t": np.float64(self.state.t), "points": mesh.centers, "masses": rho * mesh.areas, "areas": mesh.areas,
                "density": rho}

    def summary(self) -> str:
        return f"{self.state.steps} steps ({getattr(self.sim, 'rejected', 0)} rejected)"


def drive(run, case: dict, out_dir=None, progress: bool = False, source="<case>", label: str = "meanfield", dist=None):
    """The time loop shared by every kind of run: snapshots at the output times, the
    progress bar, the output files, and on failure ``last_good.npz`` and :class:`RunFailure`.

    ``run`` provides ``describe()``, ``advance(t_out, on_step)``, ``snapshot() -> (arrays,
    row)``, ``polydata(arrays)``, ``checkpoint() -> arrays``, ``summary()``, ``mesh`` and
    ``state`` (with ``t`` and ``steps``). Returns the diagnostics rows. Under MPI (``dist``)
    only rank 0 writes files and draws the progress bar.
    """
    times = output_times(case["solver"]["t_end"], case["output"]["every"])
    root = dist is None or dist.root
    writer = RunWriter(out_dir) if out_dir is not None and root else None
    problem = None
    if writer is not None:
        try:
            writer.prepare()
        except OSError as exc:
            problem = f"output directory is not writable: {exc}"
    if dist is not None and out_dir is not None:
        problem = dist.bcast(problem)  # every rank stops before the run, none waits
    if problem is not None:
        raise CaseError("--out", str(out_dir), problem)
    if writer is not None:
        writer.write_case(dump_case(case))
    progress = progress and root
    log.info("%s: %s; t_end=%g, %d snapshots%s", label, run.describe(), times[-1], len(times),
             f" -> {out_dir}" if out_dir is not None else "")
    rows: list[dict] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=times[-1], unit="t", file=sys.stderr, dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| t={n:.4g}/{total:.4g} [{elapsed}<{remaining}] {postfix}")
    vtk = None
    if writer is not None and run.mesh.manifold == "sphere":
        from .vtk_output import VtkSeries

        vtk = VtkSeries(writer.dir)

    def on_step(st, dt):
        if bar is not None:
            bar.n = st.t
            bar.set_postfix_str(f"step {st.steps}, dt={dt:.2e}", refresh=False)
            bar.update(0)

    def snapshot(index):
        arrays, row = run.snapshot()
        rows.append(row)
        if writer is not None:
            writer.write_snapshot(index, arrays, row)
            if vtk is not None:
                vtk.write(index, row["t"], run.polydata(arrays))
        return arrays

    wall = time.perf_counter()
    last_good = run.checkpoint()
    try:
        arrays = snapshot(0)
        for index, t_out in enumerate(times[1:], start=1):
            run.advance(t_out, on_step)
            last_good = run.checkpoint()
            arrays = snapshot(index)
    except Exception as exc:
        # NonFiniteStateError and FieldOverflowError are the expected failures; anything
        # else raised while stepping (e.g. the field refusing a non-finite intermediate
        # stage) is a failure of the run too, with the last good state saved all the same.
        if bar is not None:
            bar.close()
        reason = str(exc) if isinstance(exc, (NonFiniteStateError, FieldOverflowError)) else f"{type(exc).__name__}: {exc}"
        where = ""
        if writer is not None:
            t_good = float(last_good["t"])
            try:
                path = writer.write_npz("last_good.npz", last_good)
                where = f"; last good state (t={t_good:.6g}) saved to {path}"
            except OSError as write_exc:
                where = f"; could not save the last good state (t={t_good:.6g}): {write_exc}"
        raise RunFailure(f"{reason}{where}") from exc
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.write_npz("final.npz", arrays)
    log.info("done: t=%g in %s, %.2f s; mass %.16g, min density %.3e, %d clusters", run.state.t, run.summary(),
             time.perf_counter() - wall, rows[-1]["mass"], rows[-1]["min_density"], rows[-1]["n_clusters"])
    return rows


def run_case(case: dict, out_dir=None, progress: bool = False, source="<case>", dist=None) -> RunResult:
    """Run a resolved case. Writes outputs to ``out_dir`` when given (else nothing).

    Raises :class:`CaseError` for invalid input (before anything runs) and
    :class:`RunFailure` for a failure during the run, after saving the last good state
    to ``last_good.npz``.
    """
    sim, state = build_simulation(case, source, dist)
    criterion = diag.ClusterCriterion(case["diagnostics"]["cluster_contrast"], case["diagnostics"]["cluster_mass"])
    run = PdeRun(sim, state, criterion)
    rows = drive(run, case, out_dir, progress, source, dist=dist)
    result = RunResult(state=state, rows=rows, out_dir=Path(out_dir) if out_dir is not None else None,
                       snapshots=run.snapshots)
    if out_dir is not None and case["output"]["plots"] and (dist is None or dist.root):
        from . import plots

        plots.write_run_plots(out_dir, sim.mesh, result)
    return result

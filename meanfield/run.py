"""Run a case: build the objects from a resolved case dict, evolve, write the outputs.

This is what ``meanfield run`` calls; scripts can call :func:`run_case` (or build
:class:`~meanfield.pde.solver.Simulation` themselves, see ``cases/api_example.py``).
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
from .dynamics.model import Head, RandomHeads, Terms, VelocityModel, describe_model, run_label
from .fields.attention import USA_LOGIT_LIMIT, AttentionModel, FieldOverflowError
from .io.case import CaseError, case_output_times, dump_case, output_times
from .initial import InitialDataError, density_function, project
from .geometry.mesh import CircleMesh, Mesh
from .io.output import RunWriter
from .pde.health import FloatingPointWatch, StepBudget, check_density, check_row
from .pde.solver import NonFiniteStateError, Simulation, State
from .pde.timestepping import INTEGRATORS, RunHealthError, StalledRunError

__all__ = ["build_mesh", "build_model", "build_simulation", "output_times", "run_case", "RunResult", "RunFailure",
           "check_same_case", "restart_paths"]

log = logging.getLogger("meanfield")


class RunFailure(RuntimeError):
    """The run failed after it started; the last good state was saved. ``replicated``: the
    failure was found from state that every MPI rank holds alike (so every rank fails at
    the same point and may return normally); otherwise it may be one rank's alone."""

    def __init__(self, message: str, replicated: bool = False):
        super().__init__(message)
        self.replicated = replicated


def preflight(case: dict, kind: str, source="<case>", dist=None, max_memory=None, n: int | None = None):
    """The cost and memory estimate of a case before anything is built
    (:mod:`meanfield.budget`): logged in one line, and the case refused
    (:class:`CaseError` naming ``domain.cells``, ``domain.mesh``, ``particles.n``, ...) when
    its memory exceeds ``max_memory`` bytes (``None``: the memory available on this machine,
    read by rank 0 and shared, so every rank decides alike; ``math.inf``: no check)."""
    from . import budget

    ranks = dist.size if dist is not None else 1
    est = budget.estimate(case, kind, n=n, ranks=ranks, source=source)
    log.info("%s", budget.describe(est))
    available = None
    if max_memory is None:
        available = budget.available_memory()
        if dist is not None and dist.size > 1:
            available = dist.bcast(available)
    budget.check(est, max_memory, source, available=available)
    return est


def agreed(distributor, build, *args, **kwargs):
    """``build(*args, **kwargs)`` on every rank; under MPI an error on any rank (invalid
    input as :class:`CaseError`, anything else as :class:`RunFailure`) is raised on every
    rank alike (:meth:`~meanfield.parallel.Distributor.agree`), so no rank is left waiting
    for one that gave up. Serial: just the call."""
    dist = distributor
    if dist is None or dist.size == 1:
        return build(*args, **kwargs)
    error, result = None, None
    try:
        result = build(*args, **kwargs)
    except CaseError as exc:
        error = ("case", exc.source, exc.key, exc.reason)
    except Exception as exc:  # noqa: BLE001 -- told to every rank below
        error = ("error", f"{type(exc).__name__}: {_one_line(exc)}")
    got = dist.agree(error)
    if got is None:
        return result
    rank, err = got
    if err[0] == "case":
        raise CaseError(err[1], err[2], err[3] + (f" (found on rank {rank})" if rank else ""))
    raise RunFailure(f"setting up the run failed on rank {rank}: {err[1]}", replicated=True)


@dataclass
class RunResult:
    state: State
    rows: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    snapshots: list[tuple[float, np.ndarray]] = field(default_factory=list)


def build_mesh(case: dict, source="<case>") -> Mesh:
    """The case's mesh: circle cells, the zonal bands of ``domain.d``, or a sphere mesh (which
    needs ``domain.d = 3``: a :class:`CaseError` naming ``domain.d`` otherwise)."""
    dom = case["domain"]
    if dom["manifold"] == "circle":
        return CircleMesh(dom["cells"])
    if dom["manifold"] == "zonal":
        from .geometry.zonal import ZonalMesh

        return ZonalMesh(dom["d"], dom["cells"])
    if dom.get("d", 3) != 3:
        raise CaseError(source, "domain.d", f"the PDE on sphere meshes is for S^2 (d = 3), got d = {dom['d']}: on "
                        f"S^{dom['d'] - 1} solve the zonal PDE (domain.manifold = \"zonal\": densities symmetric "
                        "about e_1), or run the particles (meanfield particles)")
    from .geometry.sphere import MeshError, parse_mesh_spec

    try:
        return parse_mesh_spec(dom["mesh"], edge_points=dom["edge_points"])
    except MeshError as exc:
        raise CaseError(source, "domain.mesh", str(exc)) from None


def _head_model(h: dict, d: int, key: str, source, check: bool = True) -> AttentionModel:
    """One head's :class:`AttentionModel` from its resolved table (``h["kind"]``, ``beta``,
    ``Q``, ``K``, ``V``, ``shift``); USA that must overflow is invalid input naming ``key``."""
    model = AttentionModel(d=d, beta=h["beta"], Q=h["Q"], K=h["K"], V=h["V"], normalized=h["kind"] == "SA",
                           shift=h.get("shift", False))
    if check and not model.normalized and not model.shift:
        top = float(np.linalg.norm(model.interaction, 2))
        if top > USA_LOGIT_LIMIT:
            raise CaseError(source, key, f"USA attention overflows double precision when beta ||Q^T K||_2 > "
                            f"{USA_LOGIT_LIMIT:.1f} (here {top:.4g}); use model.shift = true (the shifted kernel "
                            f"exp(beta (<Qx, Ky> - ||Q^T K||_2)), a rescaling of time), model.kind = \"SA\" "
                            f"or a smaller beta")
    return model


def _terms(heads: list, perceptron: dict | None, d: int, key: str, source, check: bool = True) -> Terms:
    out = []
    for h in heads:
        out.append(Head(_head_model(h, d, key, source, check), h.get("weight", 1.0)))
    p = None
    if perceptron is not None:
        from .dynamics.perceptron import Perceptron, gradient_residual

        try:
            p = Perceptron(W=perceptron["W"], U=perceptron["U"], b=perceptron["b"], activation=perceptron["activation"])
        except ValueError as exc:
            raise CaseError(source, "model.schedule" if key == "model.schedule" else "model.perceptron", str(exc)) from None
        _, residual = gradient_residual(p.W, p.U)
        if check and 1e-12 < residual <= 1e-3:  # (once: the cost estimate builds the model with check=False)
            log.warning("%s: the perceptron is %.1e (relative) from the gradient form W = U^T diag(w), not the "
                        "1e-12 the energy needs: its energy column stays empty; write W as the exact products "
                        "w_i u_i to have one", "model.schedule" if key == "model.schedule" else "model.perceptron",
                        residual)
    return Terms(d, tuple(out), p)


def build_model(case: dict, d: int, source="<case>", check: bool = True) -> VelocityModel:
    """The velocity model of a case (:mod:`meanfield.dynamics`): the one head of ``[model]``
    (``kind, beta, Q, K, V``) or ``model.heads``, plus ``model.perceptron``, changed by
    ``model.schedule``, or ``model.random_heads``. USA that must overflow is invalid input
    (shifted USA, ``model.shift = true``, never overflows); ``check=False`` skips that check
    (the cost estimate, which runs before the checks that name their source)."""
    m = case["model"]
    perceptron = m.get("perceptron")
    if m.get("random_heads") is not None:
        r = m["random_heads"]
        p = _terms([], perceptron, d, "model.perceptron", source).perceptron
        rh = RandomHeads(d=d, count=r["count"], interval=r["interval"], seed=r["seed"], normalized=r["kind"] == "SA",
                         beta=r["beta"], Q_std=r["Q_std"], K_std=r["K_std"], V_std=r["V_std"], shift=m["shift"],
                         perceptron=p)
        return VelocityModel(d, random_heads=rh, mask=m.get("mask", "none"), alibi=m.get("alibi", 0.0))
    heads = m.get("heads")
    if heads is None:  # the one head of the one-head keys
        base = _terms([m], perceptron, d, "model.beta", source, check)
    else:
        base = _terms(heads, perceptron, d, "model.heads", source, check)
    schedule = [(e["t"], _terms(e["heads"], e.get("perceptron"), d, "model.schedule", source, check))
                for e in m.get("schedule", [])]
    return VelocityModel(d, base, schedule, mask=m.get("mask", "none"), alibi=m.get("alibi", 0.0))


def build_simulation(case: dict, source="<case>", dist=None) -> tuple[Simulation, State]:
    """The simulation and its initial state for a resolved case."""
    mesh = build_mesh(case, source)
    model = build_model(case, mesh.d, source)
    s = case["solver"]
    if model.causal:
        return _causal_simulation(case, mesh, model, source, dist)
    if s["scheme"] == "spectral":
        from .pde.spectral_scheme import SpectralCircleSimulation

        if mesh.manifold != "circle":
            raise CaseError(source, "solver.scheme", "\"spectral\" exists on the circle only; use \"muscl\"")
        if s["time_integrator"] != "ssprk3":  # the key's default: the scheme has its own RK4
            raise CaseError(source, "solver.time_integrator", f"\"spectral\" (the pseudo-spectral scheme) steps with "
                            f"its own RK4; {s['time_integrator']!r} is a finite-volume time integrator: leave "
                            "solver.time_integrator out, or take solver.scheme = \"muscl\"")
        if model.single_head is None:
            raise CaseError(source, "solver.scheme", "\"spectral\" (the pseudo-spectral scheme) solves one fixed "
                            "attention head; for several heads, a perceptron or parameters that change in time use "
                            "\"muscl\"")
        try:
            sim = SpectralCircleSimulation(mesh, model.single_head, dt_max=s["dt_max"], noise=case["model"]["noise"])
        except ValueError as exc:
            raise CaseError(source, "solver.scheme", str(exc)) from None
        # the spectral state holds point values at the grid points, not cell averages
        f = density_function(case["initial"], mesh.d)
        rho0 = project(mesh, case["initial"]) if f is None else np.asarray(f(mesh.centers), dtype=float)
        return sim, State(0.0, rho0 / (rho0 @ mesh.areas))
    field = None
    if mesh.manifold == "zonal":
        field = _zonal_field(case, mesh, model, source)
    if s["time_integrator"] == "implicit":
        sim = _implicit_simulation(case, mesh, model, field, source, dist)
    else:
        try:
            sim = Simulation(mesh, model, scheme=s["scheme"], backend=s["backend"], cfl=s["cfl"],
                             rate_cfl=s["rate_cfl"], dt_max=s["dt_max"], tolerance=s["tolerance"], dist=dist,
                             integrator=INTEGRATORS[s["time_integrator"]], noise=case["model"]["noise"], field=field)
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


def _implicit_simulation(case: dict, mesh, model, field, source, dist):
    """``solver.time_integrator = "implicit"`` (:class:`~meanfield.pde.implicit.ImplicitSimulation`)."""
    from .pde.implicit import ImplicitSimulation

    s = case["solver"]
    if s["scheme"] not in ("upwind", "muscl"):
        raise CaseError(source, "solver.scheme", f"the implicit stepper solves finite-volume fluxes (an M-matrix: "
                        f"positive at any step); set solver.scheme = \"muscl\" or \"upwind\" (got {s['scheme']!r})")
    if dist is not None and dist.size > 1:
        raise CaseError(source, "solver.time_integrator", "\"implicit\" runs on one process for now: run it without "
                        "mpiexec, or take \"ssprk3\"")
    try:
        return ImplicitSimulation(mesh, model, scheme=s["scheme"], field=field, backend=s["backend"],
                                  rtol=s["step_rtol"], atol=s["step_atol"], rate_cfl=s["rate_cfl"], dt_max=s["dt_max"],
                                  tolerance=s["tolerance"], noise=case["model"]["noise"])
    except ValueError as exc:
        text = str(exc)
        key = next((k for k in ("rtol", "atol", "noise", "positions") if k in text), "time_integrator")
        key = {"rtol": "solver.step_rtol", "atol": "solver.step_atol", "noise": "model.noise",
               "positions": "model.mask"}.get(key, "solver.time_integrator")
        raise CaseError(source, key, text) from None


def _zonal_field(case: dict, mesh, model, source):
    """The zonal velocity (:func:`meanfield.fields.zonal.zonal_velocity`): heads symmetric about
    e_1 only; what cannot stay zonal is invalid input naming its key."""
    from .fields.zonal import zonal_velocity

    m, init = case["model"], case["initial"]
    if m.get("perceptron") is not None:
        raise CaseError(source, "model.perceptron", "a perceptron term breaks the symmetry about e_1: the zonal PDE "
                        "takes attention heads only")
    if m.get("random_heads") is not None:
        raise CaseError(source, "model.random_heads", "random Q, K, V break the symmetry about e_1: the zonal PDE "
                        "takes heads with Q^T K = diag(a, c, ..., c), V = diag(p, q, ..., q)")
    if init["kind"] == "points":
        raise CaseError(source, "initial.kind", "\"points\" are tokens: the zonal PDE needs a density (uniform, "
                        "modes {l, amplitude}, vmf with centres +-e_1, or a function of x)")
    if init["kind"] == "vmf":
        c = np.asarray(init["centers"], dtype=float)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
        if np.abs(c[:, 1:]).max() > 1e-12:
            raise CaseError(source, "initial.centers", "a zonal density is symmetric about e_1: the vMF centres must "
                            "be +e_1 or -e_1")
    if case["diagnostics"].get("target_points"):
        raise CaseError(source, "diagnostics.target_points", "the W1 distance to a target measure is not defined "
                        "for the zonal PDE")
    try:
        return zonal_velocity(model, mesh)
    except ValueError as exc:
        key = "model.mask" if model.causal else ("model.heads" if case["model"].get("heads") is not None
                                                 else "model.Q")
        raise CaseError(source, key, str(exc)) from None


def _causal_simulation(case: dict, mesh, model, source, dist) -> tuple[Simulation, State]:
    """The causal mean field (``model.mask = "causal"``): ``domain.positions`` bands x the cells."""
    from .causal_run import causal_initial

    s = case["solver"]
    P = case["domain"]["positions"]
    if P is None:
        raise CaseError(source, "domain.positions", "a causal mean field (model.mask = \"causal\") lives on [0, 1] x "
                        f"the {mesh.manifold}: give the number of position cells of [0, 1], e.g. domain.positions = 32 "
                        "(the error of the bands falls like 1/positions^2, docs/causal.md)")
    if s["scheme"] == "spectral":
        raise CaseError(source, "solver.scheme", "\"spectral\" (the pseudo-spectral scheme) solves one fixed, unmasked "
                        "head; the causal mean field uses the finite volumes: \"muscl\" or \"upwind\"")
    if s["time_integrator"] == "implicit":
        raise CaseError(source, "solver.time_integrator", "the implicit stepper solves one density; the causal mean "
                        "field (domain.positions bands) steps explicitly: take \"ssprk3\" or \"ssprk43\"")
    try:
        sim = Simulation(mesh, model, scheme=s["scheme"], backend=s["backend"], cfl=s["cfl"], rate_cfl=s["rate_cfl"],
                         dt_max=s["dt_max"], tolerance=s["tolerance"], dist=dist,
                         integrator=INTEGRATORS[s["time_integrator"]], noise=case["model"]["noise"], positions=P)
    except ValueError as exc:
        raise CaseError(source, "solver.backend", str(exc)) from None
    return sim, State(0.0, causal_initial(mesh, case["initial"], P, source))


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
        "velocity": sim.velocity(state.rho, state.t),
    }


class PdeRun:
    """Adapter of a :class:`Simulation` to :func:`drive` (the finite-volume run)."""

    #: the case sections a PDE run does not read (its case.toml keeps only what they set)
    UNREAD_SECTIONS = ("particles", "compare")

    def __init__(self, sim: Simulation, state: State, criterion: diag.ClusterCriterion, target=None):
        self.sim, self.state, self.criterion = sim, state, criterion
        self.target = target
        self.mesh = sim.mesh
        self.snapshots: list[tuple[float, np.ndarray]] = []
        self.mass0 = float(state.rho @ sim.mesh.areas)

    def check_health(self) -> None:
        """After every step (:mod:`meanfield.pde.health`): finite, nonnegative, mass kept."""
        check_density(self.state.t, self.state.rho, self.mesh.areas, self.mass0)

    def first_step(self) -> tuple[float, str]:
        """``(dt, what sets it)`` of the step rule at the current state (the implicit stepper's
        steps grow with the error control: its first step predicts nothing)."""
        if hasattr(self.sim, "dt_next"):
            return math.inf, "error"
        bounds = self.sim.step_bounds(self.state.rho)
        bound = min(bounds, key=bounds.get)
        return float(bounds[bound]), bound

    @property
    def predicts_steps(self) -> bool:
        """Whether the current step predicts the steps to t_end (not for the implicit
        stepper, whose error control shrinks the step in a merger and grows it after)."""
        return not hasattr(self.sim, "dt_next")

    def stall_hint(self) -> str:
        if hasattr(self.sim, "dt_next"):
            return ("the implicit stepper's error control sets the step: a larger solver.step_rtol or "
                    "solver.max_steps allows the run more steps")
        if not hasattr(self.sim, "fv"):
            return "the pseudo-spectral scheme's step is bound by its grid: try solver.scheme = \"muscl\""
        return ("once clusters collapse, the transport CFL bound of the cells around them sets the step: a coarser "
                "mesh or a shorter solver.t_end helps; raise solver.max_steps to allow more steps")

    def describe(self) -> str:
        sim = self.sim
        scheme = f"scheme {sim.fv.scheme}, backend {sim.fv.field.name}" if hasattr(sim, "fv") else "Fourier pseudo-spectral"
        if hasattr(sim, "dt_next"):  # ImplicitSimulation
            scheme += ", linearly implicit error-controlled steps"
        return f"{self.mesh.manifold}, {self.mesh.n_cells} cells; {describe_model(sim.model, getattr(sim, 'noise', 0.0))}; {scheme}"

    def advance(self, t_out, on_step):
        self.sim.advance(self.state, t_out, on_step)

    def snapshot(self):
        state, mesh = self.state, self.mesh
        arrays = _snapshot_arrays(self.sim, state)
        clusters = diag.find_clusters(mesh, state.rho, self.criterion)
        arrays["cluster_masses"], arrays["cluster_centers"] = clusters
        row = diag.compute(mesh, self.sim.model, state.rho, arrays["velocity"], state.t, state.steps, self.criterion,
                           clusters)
        if self.target is not None:
            row["w1_target"] = self.target.distance_to_cells(mesh, arrays["masses"])
        arrays["steps"] = np.int64(state.steps)
        arrays["rejected"] = np.int64(getattr(self.sim, "rejected", 0))
        if getattr(self.sim, "dt_next", None) is not None:  # the implicit stepper's controller: for a bitwise restart
            arrays["dt_next"] = np.float64(self.sim.dt_next)
        self.snapshots.append((state.t, state.rho.copy()))
        return arrays, row

    #: The snapshot arrays a restart needs (:func:`meanfield.io.output.read_run`).
    RESTART_KEYS = ("t", "density")

    def check_restore(self, arrays: dict) -> None:
        """``ValueError`` when the snapshot ``arrays`` cannot be this run's state."""
        rho = arrays["density"]
        if rho.dtype != np.float64 or rho.shape != self.state.rho.shape:
            raise ValueError(f"density of shape {rho.shape} and type {rho.dtype}, the case's mesh has "
                             f"{self.state.rho.shape[0]} cells (float64)")
        if arrays["t"].shape != ():
            raise ValueError("t is not a scalar")

    def restore(self, arrays: dict, history=()) -> None:
        """Continue from the snapshot ``arrays`` (``t``, ``density``, ``steps``, ``rejected``):
        the state becomes bitwise what it was when that snapshot was taken. ``history``:
        the ``t`` and ``density`` of the earlier snapshots (for :attr:`snapshots`)."""
        rho = arrays["density"]
        self.state.t = float(arrays["t"])
        self.state.rho = np.array(rho, dtype=np.float64, order="C", copy=True)
        self.state.steps = int(arrays["steps"])
        if "rejected" in arrays and hasattr(self.sim, "rejected"):
            self.sim.rejected = int(arrays["rejected"])
        if "dt_next" in arrays and hasattr(self.sim, "dt_next"):
            self.sim.dt_next = float(arrays["dt_next"])
        self.snapshots = [(float(h["t"]), np.array(h["density"], dtype=np.float64)) for h in history]
        self.snapshots.append((self.state.t, self.state.rho.copy()))

    def polydata(self, arrays):
        from .io.vtk_output import surface_polydata

        return surface_polydata(self.mesh, {k: arrays[k] for k in VTK_FIELDS})

    def checkpoint(self) -> dict:
        rho = self.state.rho.copy()
        mesh = self.mesh
        return {"t": np.float64(self.state.t), "points": mesh.centers, "masses": rho * mesh.areas, "areas": mesh.areas,
                "density": rho}

    def summary(self) -> str:
        return f"{self.state.steps} steps ({getattr(self.sim, 'rejected', 0)} rejected)"


def _resolved(path, flag: str) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # e.g. a loop of symbolic links
        raise CaseError(flag, str(path), f"cannot resolve the path: {exc}") from None


def restart_paths(out_dir, restart) -> tuple[Path, Path] | None:
    """``(source, target)`` of a restart: the continued run reads the run in ``source`` and
    writes into ``target``; ``None`` for a fresh run (``restart`` is ``False``/``None``).

    ``restart`` is ``True`` (continue the run in ``out_dir``, in place) or the directory of
    the run to continue; the continued run writes into ``out_dir`` when that names another
    directory (compared after resolving the paths: ``..``, symbolic links), else into the
    run's own directory (``target`` is then ``source``). ``source`` and ``target`` may not
    lie one inside the other. Raises :class:`CaseError` (naming ``--out``/``--restart``).
    """
    if restart is None or restart is False:
        return None
    if restart is True:
        if out_dir is None:
            raise CaseError("--restart", "", "needs the directory of the run to continue")
        return Path(out_dir), Path(out_dir)
    source = Path(restart)
    if out_dir is None:
        return source, source
    s, t = _resolved(source, "--restart"), _resolved(out_dir, "--out")
    if s == t:
        return source, source
    if t.is_relative_to(s):
        raise CaseError("--out", str(out_dir), f"lies inside --restart {source}: the continued run may not write "
                        "into the run it reads; name a directory outside it (or leave --out out)")
    if s.is_relative_to(t):
        raise CaseError("--out", str(out_dir), f"contains --restart {source}: the continued run may not write "
                        "around the run it reads; name a directory outside it (or leave --out out)")
    return source, Path(out_dir)


def check_same_case(case: dict, stored: dict, source="<case>", where="the run", t_end: bool = False,
                    advice: str = "a restart may change solver.t_end only") -> None:
    """Raise :class:`CaseError` naming the first key (in case order) where the resolved
    ``case`` differs from ``stored`` (the ``case.toml`` of a run), ``solver.t_end`` excepted
    unless ``t_end`` (for a restart its change is checked against the output times by
    :func:`drive`); ``advice`` ends the message."""
    from .io.case import SCHEMA, show_value

    given = dump_case(case)
    sections = list(SCHEMA) + [s for s in stored if s not in SCHEMA]
    for section in sections:
        a, b = stored.get(section, {}), given.get(section, {})
        if not isinstance(a, dict):
            raise CaseError(source, section, f"{where} has no table [{section}]")
        keys = list(SCHEMA.get(section, {})) + [k for k in a if k not in SCHEMA.get(section, {})]
        from .io.case import applies

        for key in keys:
            if ((section, key) == ("solver", "t_end") and not t_end) or a.get(key) == b.get(key):
                continue
            if not applies(case, section, key):
                continue  # a key another manifold reads (older runs wrote them all)
            spec = SCHEMA.get(section, {}).get(key)
            if key not in a and spec is not None and b.get(key) == spec.default:
                continue  # a key added after that run was made, at its default: the same case
            if (section, key) == ("domain", "d") and key not in a and b.get(key) == {"circle": 2}.get(
                    given["domain"].get("manifold"), 3):
                continue  # domain.d (added later) resolves to the manifold's own dimension
            old = "not set" if key not in a else show_value(a[key])
            new = "not set" if key not in b else show_value(b[key])
            raise CaseError(source, f"{section}.{key}", f"differs from {where} ({old} there, {new} here); {advice}")


def _open_restart(run, case: dict, where: Path, times: list[float], source, vtk: bool):
    """Validate a restart of the run in ``where`` on rank 0 (nothing is changed): the stored
    case, the last complete snapshot, the output times. Returns the :class:`SavedRun`."""
    import tomllib

    from .io.output import RestartError, read_run

    if not where.is_dir():
        raise CaseError("--restart", str(where), "no such directory")
    try:
        stored = tomllib.loads((where / "case.toml").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaseError("--restart", str(where), "holds no case.toml: not the directory of a run") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CaseError("--restart", str(where), f"case.toml is unreadable: {exc}") from None
    check_same_case(case, stored, source, f"the run in {where}")
    try:
        saved = read_run(where, required=run.RESTART_KEYS, keep=run.RESTART_KEYS, vtk=vtk)
    except RestartError as exc:
        raise CaseError("--restart", str(where), str(exc)) from None
    k, t_k = saved.index, float(saved.arrays["t"])
    if "steps" not in saved.arrays:  # a snapshot written before `steps` was stored
        saved.arrays["steps"] = np.int64(saved.rows[k]["steps"])
    if k >= len(times):
        raise CaseError(source, "solver.t_end", f"{times[-1]!r} is before snapshot {k} (t = {t_k!r}) of the run in "
                        f"{where}; a restart cannot shorten a run past its last snapshot")
    if times[k] != t_k:
        raise CaseError(source, "solver.t_end", f"{times[-1]!r} moves the output times of the run in {where}: "
                        f"snapshot {k} is at t = {t_k!r} there, at {times[k]!r} with this t_end (a run can be "
                        "extended only from one of its output times: a multiple of output.every, or a geometric time of "
                        "output.per_decade)")
    try:
        run.check_restore(saved.arrays)
    except ValueError as exc:
        raise CaseError("--restart", str(where), f"snapshot {k} does not fit the case: {exc}") from None
    return saved


class RunInterrupted(RunFailure):
    """The run was stopped by SIGINT (Ctrl-C); ``t`` the time reached, ``kept`` the index
    and time of the last complete snapshot (``None`` if none), ``out_dir`` the run's directory."""

    def __init__(self, message: str, t: float, kept, out_dir):
        super().__init__(message)
        self.t, self.kept, self.out_dir = t, kept, out_dir


def _check_out_dir(out_dir: Path, case: dict, overwrite: bool) -> None:
    """A fresh run may replace the run of the same case in ``out_dir``; a different case's
    run, or a non-empty directory that holds no run, needs ``overwrite``."""
    import tomllib

    if overwrite or not out_dir.is_dir():
        return
    try:
        entries = [p.name for p in out_dir.iterdir()]
    except OSError:
        return  # prepare() reports what is wrong with it
    if not entries:
        return
    stored_path = out_dir / "case.toml"
    if not stored_path.is_file():
        raise CaseError("--out", str(out_dir), f"is not empty ({len(entries)} entries, e.g. {sorted(entries)[0]!r}) "
                        "and holds no meanfield run (case.toml); name a new or empty directory, or pass --overwrite "
                        "to write into it anyway")
    try:
        stored = tomllib.loads(stored_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CaseError("--out", str(out_dir), f"holds an unreadable case.toml ({_one_line(exc)}); pass --overwrite "
                        "to replace that run, or name another directory") from None
    try:
        check_same_case(case, stored, "--out", f"the run already in {out_dir}", t_end=True,
                        advice="pass --overwrite to replace that run, or name another directory with --out")
    except CaseError as exc:
        raise CaseError("--out", str(out_dir), f"holds the run of a different case: {exc.key} {exc.reason}") from None


def _refuse_hopeless(run, case: dict, source) -> None:
    """Exit 2 before the run when the step at t = 0 predicts more than ``solver.max_steps``
    steps to ``t_end`` (e.g. USA at a beta whose interaction rate makes the step underflow)."""
    first = getattr(run, "first_step", None)
    if first is None:
        return
    try:
        with np.errstate(all="ignore"):
            dt0, bound = first()
    except Exception:  # noqa: BLE001 -- the first step fails the same way, inside the run (exit 1)
        return
    if not math.isfinite(dt0):
        return
    t_end, limit = case["solver"]["t_end"], case["solver"]["max_steps"]
    need = t_end / dt0 if dt0 > 0 else math.inf
    run.predicted_steps, run.first_dt, run.first_bound = need, dt0, bound
    if need <= limit:
        return
    table = getattr(run, "STEP_BOUND_ADVICE", STEP_BOUND_ADVICE)
    key, advice = table.get(bound, ("solver.max_steps", "raise solver.max_steps"))
    if bound == "rate" and case["model"]["kind"] == "USA" and not case["model"]["shift"]:
        advice = ("USA's interaction rate grows like e^beta: use the shifted kernel (model.shift = true), "
                  "a smaller beta, or model.kind = \"SA\"")
    raise CaseError(source, key, f"the run would take about {need:.3g} steps to t_end = {t_end:g} (the step at "
                    f"t = 0 is {dt0:.3g}, set by {STEP_BOUND_NAMES.get(bound, bound)}), more than solver.max_steps = "
                    f"{limit}; {advice}")


#: What sets the first step -> (the key to name, what to change).
STEP_BOUND_ADVICE = {
    "rate": ("model.beta", "a smaller beta (the step is rate_cfl over the interaction rate), or raise solver.max_steps"),
    "cfl": ("solver.max_steps", "a coarser mesh (domain.cells, domain.mesh), a shorter solver.t_end, or raise "
            "solver.max_steps"),
    "dt_max": ("solver.dt_max", "a larger solver.dt_max, or raise solver.max_steps"),
    "dt": ("solver.dt", "a larger solver.dt, or raise solver.max_steps"),
    "error": ("solver.rtol", "a looser solver.rtol/solver.atol, or raise solver.max_steps"),
}
STEP_BOUND_NAMES = {"rate": "the interaction rate bound rate_cfl / sigma_max", "cfl": "the transport CFL bound",
                    "dt_max": "solver.dt_max", "dt": "solver.dt", "error": "the error control"}


def drive(run, case: dict, out_dir=None, progress: bool = False, source="<case>", label: str = "meanfield", dist=None,
          restart: bool = False, overwrite: bool = False):
    """The time loop shared by every kind of run: snapshots at the output times, the
    progress bar, the output files, and on failure ``last_good.npz`` and :class:`RunFailure`.

    ``run`` provides ``describe()``, ``advance(t_out, on_step)``, ``snapshot() -> (arrays,
    row)``, ``polydata(arrays)``, ``checkpoint() -> arrays``, ``summary()``, ``mesh`` and
    ``state`` (with ``t`` and ``steps``); for ``restart``, also ``RESTART_KEYS``,
    ``check_restore(arrays)`` and ``restore(arrays, history)``. Returns the diagnostics rows.
    Under MPI (``dist``) only rank 0 writes files and draws the progress bar.

    With ``restart`` (``True``: the run in ``out_dir``; or the directory of a run) that run
    is continued from its last complete snapshot k (:func:`meanfield.io.output.read_run`):
    rank 0 checks the case against its ``case.toml`` and reads snapshot k and the
    diagnostics rows 0..k. Continued in place, the products after k are removed; continued
    into another ``out_dir``, the run's directory is only read: ``out_dir`` is prepared as
    for a fresh run and gets the case, the snapshots 0..k, the rows 0..k and the VTK files
    0..k. The state (bitwise that of snapshot k) is broadcast to every rank; the loop then
    goes on with the output times k+1, ... of an uninterrupted run.
    """
    times = case_output_times(case)
    restart_from = None  # the directory of the run that is continued
    paths = restart_paths(out_dir, restart)
    if paths is not None:
        restart_from, out_dir = paths
        restart = True
    copying = paths is not None and paths[0] != paths[1]  # else continued in place
    if not restart:
        _refuse_hopeless(run, case, source)  # the same on every rank (replicated state)
    sink = _Outputs.open(run, case, out_dir, times, source, dist, restart_from if restart else None, copying,
                         overwrite)
    rows, first = _restored(run, sink.saved, dist) if restart else ([], 0)
    _log_start(run, case, label, times, out_dir, restart_from if restart else None, first, copying,
               dist.size if dist is not None else 1)
    bar = None
    if progress and (dist is None or dist.root):
        t0 = run.state.t if restart else None
        ranks = dist.size if dist is not None else 1
        bar = (_ProgressLog(times[-1], t0, ranks, first=case["output"].get("first")) if progress == "log"
               else _progress_bar(times[-1], t0))
    try:
        arrays, seconds = _time_loop(run, case, times, first, rows, sink, bar)
    finally:
        if bar is not None:
            bar.close()
    sink.finish(arrays)
    n_clusters = rows[-1]["n_clusters"]
    low = rows[-1]["min_density"]
    log.info("done: t=%g in %s, %.2f s; mass %.16g, %s, %d cluster%s", run.state.t, run.summary(), seconds,
             rows[-1]["mass"], "no density cells" if low is None else f"min density {low:.3e}", n_clusters,
             "" if n_clusters == 1 else "s")
    if "w1_target" in rows[-1]:
        log.info("W1 to the target (diagnostics.target_points): %.6g at t=%g (%.6g at t=%g)", rows[-1]["w1_target"],
                 rows[-1]["t"], rows[0]["w1_target"], rows[0]["t"])
    return rows


@dataclass
class _Outputs:
    """What a run writes (rank 0 only; the attributes are ``None`` elsewhere and for
    ``out_dir=None``): the run directory, the VTK series, and the run continued (``saved``)."""

    writer: RunWriter | None = None
    vtk: object = None
    saved: object = None
    #: the clusters matched across snapshots (:class:`~meanfield.clusters.ClusterTracker`):
    #: ``clusters.csv`` and ``clusters_events.csv``, rewritten after every snapshot
    tracker: object = None

    @classmethod
    def open(cls, run, case, out_dir, times, source, dist, restart_from, copying: bool, overwrite: bool):
        """Prepare the output directory (a fresh run, the run continued in place, or copied
        into ``out_dir``); a problem is raised as :class:`CaseError` on every rank."""
        sink = cls()
        restart = restart_from is not None
        problem = None
        if out_dir is not None and (dist is None or dist.root):
            try:
                sink._prepare(run, case, Path(out_dir), times, source, restart_from, copying, overwrite)
            except Exception as exc:  # noqa: BLE001 -- say it on every rank rather than leave them waiting
                problem = _setup_problem(exc, out_dir, restart_from, restart)
        if dist is not None and out_dir is not None:
            problem = dist.bcast(problem)  # every rank stops before the run, none waits
        if problem is not None:
            raise CaseError(*problem)
        return sink

    def _prepare(self, run, case, out_dir: Path, times, source, restart_from, copying, overwrite) -> None:
        restart = restart_from is not None
        vtk_on = run.mesh is not None and run.mesh.manifold == "sphere" and run.mesh.d == 3
        self.writer = writer = RunWriter(out_dir)
        if restart:
            self.saved = _open_restart(run, case, restart_from, times, source, vtk_on)  # reads only
        saved = self.saved
        if not restart or copying:
            _check_out_dir(out_dir, case, overwrite)
        writer.prepare(fresh=not restart or copying)  # into another directory: as a fresh run
        if saved is not None and not copying:
            writer.resume(saved)  # the products after snapshot k go
        writer.write_case(dump_case(case, unread=getattr(run, "UNREAD_SECTIONS", ())))
        if copying:
            writer.copy_snapshots(saved)  # snapshots 0..k and the rows 0..k, read from restart_from
        from .clusters import ClusterTracker

        if saved is not None and "cluster_masses" in saved.arrays:
            # the table of snapshots 0..k, rebuilt (the ids are a function of the snapshots): a
            # continued run extends it without duplicates
            self.tracker = ClusterTracker.from_run(writer.dir, radius=case["diagnostics"]["track_radius"])
            self.tracker.write_csv(writer.dir / "clusters.csv")
        elif saved is None:
            self.tracker = ClusterTracker(radius=case["diagnostics"]["track_radius"])
        if vtk_on:
            from .io.vtk_output import VtkSeries

            self.vtk = VtkSeries(writer.dir)
            if saved is not None:
                if copying:
                    self.vtk.copy(saved.vtk_files, [row["t"] for row in saved.rows])
                else:
                    self.vtk.resume([row["t"] for row in saved.rows])

    def write(self, run, index: int, arrays: dict, row: dict) -> None:
        if self.writer is not None:
            self.writer.write_snapshot(index, arrays, row)
            if self.vtk is not None:
                self.vtk.write(index, row["t"], run.polydata(arrays))
            if self.tracker is not None and "cluster_masses" in arrays:
                self.tracker.update(row["t"], arrays["cluster_masses"], arrays["cluster_centers"])
                self.tracker.write_csv(self.writer.dir / "clusters.csv")

    def save_last_good(self, last_good: dict) -> str:
        """``last_good.npz`` written; the words the failure message ends with."""
        if self.writer is None:
            return ""
        t_good = float(last_good["t"])
        try:
            path = self.writer.write_npz("last_good.npz", last_good)
            return f"; last good state (t={t_good:.6g}) saved to {path}"
        except OSError as write_exc:
            return f"; could not save the last good state (t={t_good:.6g}): {write_exc}"

    def finish(self, arrays: dict) -> None:
        if self.writer is not None:
            self.writer.write_npz("final.npz", arrays)


def _setup_problem(exc: Exception, out_dir, restart_from, restart: bool) -> tuple[str, str, str]:
    """``(source, key, reason)`` of a failure while preparing the output directory."""
    from .io.output import RestartError

    if isinstance(exc, CaseError):
        return (exc.source, exc.key, exc.reason)
    if isinstance(exc, RestartError):  # a file of the run to continue could not be read for the copy
        return ("--restart", str(restart_from), str(exc))
    if isinstance(exc, OSError):
        return ("--out", str(out_dir), f"output directory is not writable: {exc}")
    return ("--restart" if restart else "--out", str(out_dir), f"{type(exc).__name__}: {_one_line(exc)}")


def _restored(run, saved, dist) -> tuple[list[dict], int]:
    """Restore the run from rank 0's reading of its last complete snapshot k (broadcast, so
    every rank starts bitwise alike); returns the rows 0..k and the next output index k + 1."""
    payload = None
    if saved is not None:
        payload = ({k: saved.arrays[k] for k in (*run.RESTART_KEYS, "steps", "rejected", "dt_next") if k in saved.arrays},
                   saved.rows, saved.index)
    if dist is not None:
        payload = dist.bcast(payload)
    state_arrays, rows, k = payload
    run.restore(state_arrays, saved.history if saved is not None else ())
    return list(rows), k + 1


def _log_start(run, case, label, times, out_dir, restart_from, first: int, copying: bool, ranks: int = 1) -> None:
    log.info("%s: %s; t_end=%g, %d snapshots%s%s", label, run.describe(), times[-1], len(times),
             f" -> {out_dir}" if out_dir is not None else "", f"; {ranks} MPI ranks" if ranks > 1 else "")
    if getattr(run, "first_dt", None) is not None:
        fixed = run.first_bound == "dt"
        log.info("steps: %s to t_end at the step of t = 0 (%.3g, set by %s%s); limit solver.max_steps = %d",
                 f"{run.predicted_steps:,.0f}", run.first_dt, STEP_BOUND_NAMES.get(run.first_bound, run.first_bound),
                 "" if fixed else "; more once clusters collapse", case["solver"]["max_steps"])
    if restart_from is not None:
        log.info("restart: continuing the run in %s from t = %r (snapshot %d of %d, step %d)%s", restart_from,
                 run.state.t, first - 1, len(times) - 1, run.state.steps,
                 f", writing into {out_dir} (snapshots 0..{first - 1} copied)" if copying else "")


#: Seconds between the progress lines of a run whose stderr is not a terminal (job logs).
PROGRESS_SECONDS = 30.0


class _ProgressLog:
    """The progress bar's stand-in when stderr is not a terminal: one log line every
    ``interval`` seconds (:data:`PROGRESS_SECONDS`; the environment variable
    ``MEANFIELD_PROGRESS_SECONDS`` overrides it) with the time reached, the steps, the last
    step size, the elapsed time and an estimate of the time left (proportional to the model
    time still to go), and the MPI ranks."""

    def __init__(self, t_end: float, t_start=None, ranks: int = 1, interval: float | None = None,
                 first: float | None = None):
        import os

        if interval is None:
            try:
                interval = float(os.environ.get("MEANFIELD_PROGRESS_SECONDS", PROGRESS_SECONDS))
            except ValueError:
                interval = PROGRESS_SECONDS
        self.t_end, self.t_start, self.ranks, self.interval = float(t_end), float(t_start or 0.0), int(ranks), interval
        self.n = self.t_start
        #: geometric snapshots (output.per_decade): the share done is measured in log t from
        #: the first output on, as the run spends comparable wall time per decade
        self.first = first
        self._postfix = ""
        self._wall = self._last = time.perf_counter()

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self._postfix = text

    def update(self, _increment=0) -> None:
        now = time.perf_counter()
        if now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self._wall
        p, p0 = self.fraction(self.n), self.fraction(self.t_start)
        left = elapsed * (1.0 - p) / (p - p0) if p > p0 else math.inf
        eta = f"{left:.1f} s" if math.isfinite(left) else "unknown"
        share = 100.0 * p
        log.info("progress: t=%.6g of %.6g (%.0f%%), %s, %.1f s elapsed, about %s left%s", self.n, self.t_end, share,
                 self._postfix, elapsed, eta, f", {self.ranks} MPI ranks" if self.ranks > 1 else "")

    def fraction(self, t: float) -> float:
        """The share of the run done at ``t``: ``t / t_end``, or with geometric snapshots
        ``log(t / first) / log(t_end / first)`` (0 before the first output)."""
        if self.t_end <= 0:
            return 1.0
        if self.first is None or not 0 < self.first < self.t_end:
            return t / self.t_end
        return max(0.0, math.log(max(t, self.first) / self.first) / math.log(self.t_end / self.first))

    def close(self) -> None:
        pass


def _progress_bar(t_end: float, t_start=None):
    from tqdm import tqdm

    bar = tqdm(total=t_end, unit="t", file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| t={n:.4g}/{total:.4g} [{elapsed}<{remaining}] {postfix}")
    if t_start is not None:
        bar.n = t_start
        bar.update(0)
    return bar


def _time_loop(run, case, times, first: int, rows: list, sink: _Outputs, bar) -> tuple[dict, float]:
    """Snapshots ``first, ...`` of ``times`` (0 included for a fresh run), with the run-health
    checks after every step and snapshot; returns the last snapshot's arrays and the seconds
    the loop took. A failure
    saves ``last_good.npz`` and raises :class:`RunFailure`; Ctrl-C raises :class:`RunInterrupted`."""
    budget = StepBudget(times[-1], case["solver"]["max_steps"], hint=getattr(run, "stall_hint", lambda: "")(),
                        predict=getattr(run, "predicts_steps", True))
    watch = FloatingPointWatch()
    landings = set(times)

    def on_step(st, dt):
        watch.check(st.t)
        run.check_health()
        budget.update(st, dt, landed=st.t in landings)
        if bar is not None:
            bar.n = st.t
            bar.set_postfix_str(f"step {st.steps}, dt={dt:.2e}", refresh=False)
            bar.update(0)

    kept = None  # (index, t) of the last complete snapshot

    def snapshot(index):
        nonlocal kept
        arrays, row = run.snapshot()
        watch.check(row["t"])
        check_row(row)
        rows.append(row)
        sink.write(run, index, arrays, row)
        kept = (index, row["t"])
        return arrays

    wall = time.perf_counter()
    last_good = run.checkpoint()
    saved = sink.saved
    arrays = saved.arrays if saved is not None else None
    if first > 0:
        kept = (first - 1, float(run.state.t))
    try:
        with watch:
            if first == 0:
                arrays = snapshot(0)
                first = 1
            for index in range(first, len(times)):
                run.advance(times[index], on_step)
                arrays = snapshot(index)
                last_good = run.checkpoint()
    except KeyboardInterrupt:
        where = "no snapshot was completed" if kept is None else \
            f"snapshot {kept[0]} (t = {kept[1]:.6g}) is the last one kept"
        out_dir = sink.writer.dir if sink.writer is not None else None
        raise RunInterrupted(f"interrupted at t = {run.state.t:.6g}; {where}", run.state.t, kept, out_dir) from None
    except Exception as exc:
        # NonFiniteStateError, RunHealthError, StalledRunError and FieldOverflowError are the
        # expected failures; anything else raised while stepping (e.g. the field refusing a
        # non-finite intermediate stage) is a failure of the run too, with the last good
        # state saved all the same.
        expected = (NonFiniteStateError, FieldOverflowError, RunHealthError, StalledRunError)
        reason = str(exc) if isinstance(exc, expected) else f"{type(exc).__name__}: {exc}"
        where = sink.save_last_good(last_good)
        replicated = isinstance(exc, (NonFiniteStateError, StalledRunError)) or \
            (isinstance(exc, RunHealthError) and exc.replicated)
        raise RunFailure(f"{reason}{where}", replicated=replicated) from exc
    return arrays, time.perf_counter() - wall


def _one_line(text) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def run_case(case: dict, out_dir=None, progress: bool = False, source="<case>", dist=None,
             restart=False, overwrite: bool = False, max_memory=None, estimate: bool = True) -> RunResult:
    """Run a resolved case. Writes outputs to ``out_dir`` when given (else nothing).

    ``restart``: ``True`` continues the stopped (or finished, to extend ``solver.t_end``)
    run in ``out_dir`` from its last complete snapshot, a directory continues that run,
    writing into that directory when ``out_dir`` is ``None`` or names it, else into
    ``out_dir`` (the run's directory is then only read; :func:`restart_paths`); the case
    must be the one in its ``case.toml`` but for ``solver.t_end``. The result is bitwise
    that of an uninterrupted run on the same number of ranks (docs/outputs.md, "Restart").

    Before anything is built, the memory and cost are estimated and logged, and a case
    whose memory estimate exceeds ``max_memory`` bytes (default: the memory available on
    this machine; ``math.inf``: no check) is refused (:func:`preflight`; ``estimate=False``
    skips it, for a caller that made it already).

    A fresh run replaces the run of the same case in ``out_dir``; a directory that holds
    another case's run (or is not empty and holds no run) is refused unless ``overwrite``.

    Raises :class:`CaseError` for invalid input (before anything runs) and
    :class:`RunFailure` for a failure during the run, after saving the last good state
    to ``last_good.npz`` (:class:`RunInterrupted` for Ctrl-C).
    """
    paths = restart_paths(out_dir, restart)
    if paths is not None:
        out_dir = paths[1]
    if estimate:
        preflight(case, "run", source, dist, max_memory)
    sim, state = agreed(dist, build_simulation, case, source, dist)
    criterion = diag.ClusterCriterion(case["diagnostics"]["cluster_contrast"], case["diagnostics"]["cluster_mass"])
    if state.rho.ndim == 2:  # the causal mean field: position bands x cells
        from .causal_run import CausalPdeRun

        run = CausalPdeRun(sim, state, criterion, diag.Target.from_case(case["diagnostics"]))
    else:
        run = PdeRun(sim, state, criterion, diag.Target.from_case(case["diagnostics"]))
    rows = drive(run, case, out_dir, progress, source, dist=dist, restart=paths[0] if paths is not None else False,
                 overwrite=overwrite)
    result = RunResult(state=state, rows=rows, out_dir=Path(out_dir) if out_dir is not None else None,
                       snapshots=run.snapshots)
    if out_dir is not None and case["output"]["plots"] and (dist is None or dist.root):
        from .io import plots

        switches = [e["t"] for e in case["model"]["schedule"] if e["t"] > 0]
        if state.rho.ndim == 2:
            plots.write_causal_plots(out_dir, sim.mesh, result, switches=switches,
                                     label=run_label(source, sim.model, getattr(sim, "noise", 0.0)))
        else:
            plots.write_run_plots(out_dir, sim.mesh, result, shifted=case["model"]["shift"], switches=switches,
                                  label=run_label(source, sim.model, getattr(sim, "noise", 0.0)),
                                  model=sim.model)
        plots.plot_cluster_tracks(out_dir, sim.mesh.manifold, radius=case["diagnostics"]["track_radius"],
                                  title=run_label(source, sim.model, getattr(sim, "noise", 0.0)))
    if out_dir is not None and case["output"].get("movie") and (dist is None or dist.root):
        from .io.movie import write_movie

        write_movie(Path(out_dir) / "movie.gif", sim.mesh, result.snapshots,
                    title=run_label(source, sim.model, getattr(sim, "noise", 0.0)))
    return result

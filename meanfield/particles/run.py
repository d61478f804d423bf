"""``meanfield particles`` and ``meanfield compare``: the n-particle system of a case, and
its distance to the PDE solution.

Particle runs write the same files as PDE runs (:func:`meanfield.run.drive`): ``points``
are the particle positions and ``masses`` their weights (no ``areas``). The density
diagnostics (``min_density``, ``max_density``) use the histogram of the particles binned
into cells (:func:`histogram_mesh`: the case's kind of mesh, coarse enough for about 64
particles per cell); clusters (``n_clusters``, ``cluster_masses``, ``cluster_centers``) are
counted from the tokens themselves (:func:`meanfield.diagnostics.find_particle_clusters`:
groups of diameter at most ``diagnostics.cluster_distance`` and mass at least
``diagnostics.cluster_mass``).

``compare`` runs the PDE once and the particles for every ``n`` and seed to the same
output times, and writes ``compare.csv`` (``t, n, seed, metric, distance``), a table of
the mean distance per ``n`` and time with the fitted exponent of ``distance ~ n^a``, and
``compare.png`` (log-log) plus ``particles.png`` (particles over the PDE density).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

import numpy as np

from .. import diagnostics as diag
from ..io.case import CaseError
from .distances import bin_particles, distance
from ..initial import InitialDataError
from ..io.output import atomic_write
from .system import ParticleState, ParticleSystem
from ..dynamics.model import describe_model, run_label
from ..pde.timestepping import RunHealthError
from ..run import agreed, preflight, build_mesh, build_model, drive, restart_paths, run_case
from .sampling import sample
from ..pde.solver import make_velocity

__all__ = ["ParticleRun", "band_distances", "build_particles", "run_particles", "run_compare", "fit_exponent"]

log = logging.getLogger("meanfield")


def build_particles(case: dict, n: int | None = None, seed: int | None = None, source="<case>", dist=None):
    """``(mesh, system, state)`` for a resolved case; ``n``/``seed`` default to ``[particles]``
    (the seed of the sample and, with ``model.noise``, of the Brownian increments)."""
    # the case's mesh (pictures, VTK, the density histogram); none for tokens on S^{d-1}, d != 3
    dom = case["domain"]
    mesh = None if dom["manifold"] == "sphere" and dom.get("d", 3) != 3 else build_mesh(case, source)
    d = mesh.d if mesh is not None else dom["d"]
    model = build_model(case, d, source)
    s = case["solver"]
    n = case["particles"]["n"] if n is None else n
    seed = case["particles"]["seed"] if seed is None else seed
    if case["initial"]["kind"] == "points":
        n = None  # the given points
    try:
        x, w = sample(case["initial"], d, n, seed, causal=model.causal)
    except (InitialDataError, ValueError) as exc:
        key = {"python": "initial.function", "points": "initial.points"}.get(case["initial"]["kind"], "initial.kind")
        raise CaseError(source, key, str(exc)) from None
    try:
        field = make_velocity(model, s["backend"], s["tolerance"], n_targets=len(x), n_sources=len(x), dist=dist,
                              tokens=model.causal)
    except ValueError as exc:
        raise CaseError(source, "solver.backend", str(exc)) from None
    try:
        system = ParticleSystem(field, integrator=s["integrator"], dt=s["dt"], cfl=s["cfl"], rate_cfl=s["rate_cfl"],
                                dt_max=s["dt_max"], rtol=s["rtol"], atol=s["atol"], max_steps=None,
                                noise=case["model"]["noise"], seed=seed)
    except ValueError as exc:  # a ParticleSettingError names the key to change (solver.max_steps: drive's budget)
        raise CaseError(source, getattr(exc, "key", "solver.integrator"), getattr(exc, "reason", str(exc))) from None
    return mesh, system, ParticleState.create(x, w)


def histogram_mesh(mesh, n: int):
    """The cells the particle histogram is binned into for the density diagnostics
    (``min_density``, ``max_density``; clusters are counted from the tokens): about 64 or
    more particles per cell, so sampling noise (relative size ~ 1/sqrt(particles per
    cell)) stays moderate; never finer than the case's mesh."""
    from ..geometry.mesh import CircleMesh

    if mesh is None:  # tokens on S^{d-1}, d != 3: no cells (the density columns stay empty)
        return None
    if mesh.manifold == "circle":
        return CircleMesh(max(8, min(mesh.n_cells, n // 64)))
    if mesh.manifold == "zonal":
        from ..geometry.zonal import ZonalMesh

        return ZonalMesh(mesh.d, max(8, min(mesh.n_cells, n // 64)))
    from ..geometry.sphere import icosahedral

    level = 0
    while 20 * 4 ** (level + 1) <= min(n // 64, mesh.n_cells):
        level += 1
    return icosahedral(level)


class ParticleRun:
    """Adapter of a :class:`ParticleSystem` to :func:`meanfield.run.drive`.

    ``mesh`` is the case's mesh (pictures, VTK); the density diagnostics bin the particles
    into :func:`histogram_mesh` cells; clusters are groups of tokens
    (:func:`meanfield.diagnostics.find_particle_clusters` with ``criterion``).
    """

    UNREAD_SECTIONS = ("compare",)  # (see meanfield.run.PdeRun)

    def __init__(self, mesh, system: ParticleSystem, state: ParticleState, criterion: diag.ClusterCriterion):
        self.mesh, self.system, self.state, self.criterion = mesh, system, state, criterion
        self.target = None  # diag.Target: the w1_target column
        #: causal models: the number of position bands of the per-position diagnostics
        self.bands = None
        if system.velocity_field.model.causal:
            from ..causal_run import PARTICLE_BANDS

            self.bands = min(PARTICLE_BANDS, state.n)
        self.bins = histogram_mesh(mesh, state.n)
        self.snapshots: list[tuple[float, np.ndarray, np.ndarray]] = []

    def describe(self) -> str:
        where = f"S^{self.state.d - 1}" if self.mesh is None or self.mesh.manifold == "zonal" else self.mesh.manifold
        return (f"{self.state.n} particles on {where}; {describe_model(self.system.model, self.system.noise)}; "
                f"{self.system.describe()}, backend {self.system.field.name}")

    def advance(self, t_out, on_step):
        self.system.advance(self.state, t_out, on_step)

    def snapshot(self):
        st = self.state
        v = self.system.velocity(st)
        hist = None if self.bins is None else bin_particles(self.bins, st.x, st.weights) / self.bins.areas
        clusters = diag.find_particle_clusters(st.x, st.weights, self.criterion)
        arrays = {"t": np.float64(st.t), "points": st.x.copy(), "masses": st.weights.copy(), "velocity": v,
                  "cluster_masses": clusters[0], "cluster_centers": clusters[1]}
        row = {
            "t": float(st.t),
            "mass": math.fsum(st.weights),
            "min_density": None if hist is None else float(hist.min()),
            "max_density": None if hist is None else float(hist.max()),
            "energy": diag.run_energy(self.system.model, st.x, st.weights, st.t),
            "order_parameter": float(np.linalg.norm(st.weights @ st.x)),
            "n_clusters": int(len(clusters[0])),
            "max_speed": diag.max_speed(v),
            "steps": int(st.steps),
        }
        if self.target is not None:
            row["w1_target"] = self.target.distance_to_points(st.x, st.weights)
        if self.bands is not None:  # causal tokens: the per-position diagnostics of the causal PDE's bands
            from ..causal_run import band_centres, particle_band_diagnostics

            arrays["positions"] = band_centres(self.bands)
            arrays["band_order_parameter"], arrays["band_clusters"] = particle_band_diagnostics(
                st.x, st.weights, self.bands, self.criterion)
        arrays["steps"] = np.int64(st.steps)
        self.snapshots.append((st.t, st.x.copy(), st.weights.copy()))
        return arrays, row

    #: The snapshot arrays a restart needs (:func:`meanfield.io.output.read_run`).
    RESTART_KEYS = ("t", "points", "masses")

    def check_restore(self, arrays: dict) -> None:
        """``ValueError`` when the snapshot ``arrays`` cannot be this run's state."""
        if "areas" in arrays or "density" in arrays:
            raise ValueError("it holds cells (areas, density): the directory is that of a PDE run (meanfield run)")
        x, w = arrays["points"], arrays["masses"]
        n, d = self.state.x.shape
        if (x.dtype, w.dtype) != (np.float64, np.float64) or x.shape != (n, d) or w.shape != (n,):
            raise ValueError(f"points of shape {x.shape} and masses of shape {w.shape}, the case has "
                             f"{n} particles in R^{d} (float64)")
        if arrays["t"].shape != ():
            raise ValueError("t is not a scalar")

    def restore(self, arrays: dict, history=()) -> None:
        """Continue from the snapshot ``arrays`` (``t``, ``points``, ``masses``, ``steps``):
        positions and weights become bitwise what they were (the initial sample is not
        needed), and the step count, which keys the noise of the next steps
        (:func:`~meanfield.particles.system.noise_normals`): a noisy run continues its path.
        ``history``: the earlier snapshots (for :attr:`snapshots`)."""
        st = self.state
        st.t = float(arrays["t"])
        st.x = np.array(arrays["points"], dtype=np.float64, order="C", copy=True)
        st.weights = np.array(arrays["masses"], dtype=np.float64, order="C", copy=True)
        st.steps = int(arrays["steps"])
        self.snapshots = [(float(h["t"]), h["points"], h["masses"]) for h in history]
        self.snapshots.append((st.t, st.x.copy(), st.weights.copy()))

    def polydata(self, arrays):
        import pyvista as pv

        cloud = pv.PolyData(np.asarray(arrays["points"], dtype=float))
        cloud.point_data["weights"] = arrays["masses"]
        cloud.point_data["velocity"] = arrays["velocity"]
        return cloud

    def checkpoint(self) -> dict:
        return {"t": np.float64(self.state.t), "points": self.state.x.copy(), "masses": self.state.weights.copy()}

    def summary(self) -> str:
        rejected = getattr(self.system, "rejected", 0)
        return f"{self.state.steps} steps" + (f" ({rejected} rejected by the error control)" if rejected else "")

    def check_health(self) -> None:
        """After every step (:mod:`meanfield.pde.health`): finite positions on the sphere."""
        x = self.state.x
        r = np.einsum("ij,ij->i", x, x)  # one pass: a non-finite coordinate makes |x|^2 non-finite
        deviation = np.abs(r - 1.0)
        worst = int(np.argmax(deviation))  # (a NaN is the maximum)
        if not math.isfinite(deviation[worst]):
            raise RunHealthError(f"t={self.state.t:.6g}: the position of particle {worst} became non-finite")
        if deviation[worst] > 1e-10:
            raise RunHealthError(f"t={self.state.t:.6g}: particle {worst} left the sphere (|x|^2 = {r[worst]!r})")

    def first_step(self) -> tuple[float, str]:
        """``(dt, what sets it)`` of the step rule at the current state."""
        system = self.system
        proposed = getattr(system, "proposed_step", None)
        if proposed is not None:
            return proposed(self.state)
        if system.dt != "auto":
            return min(float(system.dt), system.dt_max), ("dt" if system.dt <= system.dt_max else "dt_max")
        v = system.velocity(self.state)
        dt = system.auto_dt(v)
        return (min(dt, system.dt_max), "dt_max" if system.dt_max < dt else "rate")

    #: What sets the first particle step -> (the key to name, what to change).
    STEP_BOUND_ADVICE = {
        "rate": ("model.beta", "a smaller beta (the step is rate_cfl over the interaction rate), or raise "
                 "solver.max_steps"),
        "cfl": ("solver.cfl", "a larger solver.cfl (no particle moves more than cfl kernel widths per step), or "
                "raise solver.max_steps"),
        "dt_max": ("solver.dt_max", "a larger solver.dt_max, or raise solver.max_steps"),
        "dt": ("solver.dt", "a larger solver.dt, or raise solver.max_steps"),
        "error": ("solver.rtol", "a looser solver.rtol/solver.atol, or raise solver.max_steps"),
        "noise": ("model.noise", "a smaller model.noise or a larger solver.cfl (no particle diffuses more than cfl "
                  "kernel widths per step: dt <= (cfl ell)^2 / ((d-1) sigma^2)), or raise solver.max_steps"),
    }

    def stall_hint(self) -> str:
        return ("the particle step follows the fastest contraction (a collapsing cluster under USA): a smaller beta, "
                "the shifted kernel (model.shift = true) or SA helps; raise solver.max_steps to allow more steps")


def _criterion(case):
    d = case["diagnostics"]
    return diag.ClusterCriterion(d["cluster_contrast"], d["cluster_mass"], d["cluster_distance"])


def run_particles(case: dict, out_dir=None, n: int | None = None, seed: int | None = None, progress: bool = False,
                  source="<case>", label: str = "meanfield particles", dist=None, restart=False,
                  overwrite: bool = False, max_memory=None, estimate: bool = True) -> ParticleRun:
    """Run the particle system of a resolved case (``--n``, ``--seed`` override ``[particles]``).

    ``restart`` continues a stopped run as in :func:`meanfield.run.run_case` (``True``: the
    run in ``out_dir``; or its directory, continued into ``out_dir`` when that names another
    one): the particles are restored from the last complete
    snapshot (the initial sample is drawn all the same, then replaced).
    """
    paths = restart_paths(out_dir, restart)
    if paths is not None:
        out_dir = paths[1]
    chosen = dict(case["particles"])
    chosen.update({k: v for k, v in (("n", n), ("seed", seed)) if v is not None})
    case = {**case, "particles": chosen}  # the resolved case.toml repeats this run
    if estimate:  # the memory and cost, logged; refused if it cannot fit (meanfield.run.preflight)
        preflight(case, "particles", source, dist, max_memory)
    if chosen.get("batch", 1) > 1:
        return _run_batch(case, out_dir, chosen, progress, source, label, dist, paths, overwrite)
    mesh, system, state = agreed(dist, build_particles, case, source=source, dist=dist)
    run = ParticleRun(mesh, system, state, _criterion(case))
    run.target = diag.Target.from_case(case["diagnostics"])
    if run.bands is not None and case["domain"]["positions"] is not None:
        run.bands = min(case["domain"]["positions"], state.n)
    run.rows = drive(run, case, out_dir, progress, source, label=label, dist=dist,
                     restart=paths[0] if paths is not None else False, overwrite=overwrite)
    title = f"{run_label(source, system.model, system.noise)}, particles"  # of every picture and the movie
    if out_dir is not None and case["output"]["plots"] and (dist is None or dist.root):
        from ..io import plots

        plots.plot_diagnostics(Path(out_dir) / "diagnostics.png", run.rows, title=title,
                               shifted=case["model"]["shift"],
                               switches=[e["t"] for e in case["model"]["schedule"] if e["t"] > 0])
        t, x, w = run.snapshots[-1]
        histogram = bin_particles(mesh, x, w) / mesh.areas if mesh is not None and mesh.manifold == "sphere" else None
        plots.plot_particles(Path(out_dir) / "particles.png", mesh, x, w, t=t, histogram=histogram, label=title)
        if run.bands is not None:
            plots.plot_causal_tokens(Path(out_dir) / "causal.png", x, run.snapshots[0][1],
                                     t, run.bands, run.criterion)
        if mesh is not None and mesh.d <= 3:
            plots.plot_cluster_tracks(out_dir, mesh.manifold, radius=case["diagnostics"]["track_radius"], title=title)
    if out_dir is not None and case["output"].get("movie") and (dist is None or dist.root):
        from ..io.movie import write_movie

        write_movie(Path(out_dir) / "movie.gif", mesh, run.snapshots, title=title, particles=True)
    return run


def _run_batch(case, out_dir, chosen, progress, source, label, dist, paths, overwrite):
    """``particles.batch = B > 1`` (:mod:`meanfield.particles.batch_run`)."""
    from .batch_run import BatchRun, build_batch

    system, state = agreed(dist, build_batch, case, chosen["n"], chosen["seed"], source, dist)
    run = BatchRun(system, state, dist=dist, prompts=chosen["batch"])
    run.rows = drive(run, case, out_dir, progress, source, label=label, dist=dist,
                     restart=paths[0] if paths is not None else False, overwrite=overwrite)
    if out_dir is not None and case["output"]["plots"] and (dist is None or dist.root):
        from ..io import plots

        title = f"{run_label(source, system.field.model, system.noise)}, a batch of {chosen['batch']} prompts"
        plots.plot_diagnostics(Path(out_dir) / "diagnostics.png", run.rows, title=title,
                               shifted=case["model"]["shift"],
                               switches=[e["t"] for e in case["model"]["schedule"] if e["t"] > 0])
        plots.plot_batch(Path(out_dir) / "batch.png", run.rows, run.state.x)
    return run


def fit_exponent(ns, values) -> float:
    """Least-squares slope of ``log(value)`` against ``log(n)`` (nan with fewer than 2 n)."""
    ns, values = np.asarray(ns, dtype=float), np.asarray(values, dtype=float)
    ok = values > 0
    if np.unique(ns[ok]).size < 2:
        return math.nan
    return float(np.polyfit(np.log(ns[ok]), np.log(values[ok]), 1)[0])


def run_compare(case: dict, out_dir, ns=None, seeds=None, metric: str | None = None, progress: bool = False,
                source="<case>", dist=None, overwrite: bool = False, max_memory=None):
    """Run the PDE once and the particles for each ``n`` and seed; write ``compare.csv``.

    Returns the rows ``{"t", "n", "seed", "metric", "distance"}``.
    """
    comp = case["compare"]
    ns = list(comp["particles"] if ns is None else ns)
    seeds = comp["seeds"] if seeds is None else seeds
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    metric = comp["metric"] if metric is None else metric
    if case["initial"]["kind"] == "points":
        raise CaseError(source, "initial.kind", "compare samples n particles from a density; \"points\" gives fixed points")
    if case["domain"]["manifold"] == "zonal" and metric not in ("w1", "w2"):
        raise CaseError(source, "compare.metric", f"{metric!r} would treat the zonal bands as points on one meridian; "
                        "the zonal PDE is compared by \"w1\" or \"w2\" of the polar-angle laws (exact)")
    case = {**case, "compare": {"particles": ns, "seeds": seeds, "metric": metric}}
    out = Path(out_dir)
    preflight(case, "compare", source, dist, max_memory)  # the PDE, every particle run and the distances
    pde = run_case(case, out_dir=out / "pde", progress=progress, source=source, dist=dist, overwrite=overwrite,
                   estimate=False)
    mesh = build_mesh(case, source)
    masses = {round(t, 12): rho * mesh.areas for t, rho in pde.snapshots}
    causal = pde.snapshots[0][1].ndim == 2  # bands x cells: compared band by band
    rows, band_rows = [], []
    last = None
    for n in ns:
        for seed in seeds:
            part = run_particles(case, out_dir=None, n=n, seed=seed, progress=False, source=source,
                                 label=f"particles n={n} seed={seed}", dist=dist, estimate=False)
            for t, x, w in part.snapshots:
                m = masses[round(t, 12)]
                if causal:
                    per_band = band_distances(metric, mesh, m, x, w)
                    band_rows += [{"t": t, "n": n, "seed": seed, "band": p, "metric": metric, "distance": float(v)}
                                  for p, v in enumerate(per_band)]
                    value = float(np.mean(per_band))
                else:
                    value = distance(metric, mesh, m, x, w)
                rows.append({"t": t, "n": n, "seed": seed, "metric": metric, "distance": value})
            last = part.snapshots[-1]
    if dist is not None and not dist.root:
        return rows
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["t", "n", "seed", "metric", "distance"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "t": repr(row["t"]), "distance": repr(row["distance"])})
    atomic_write(out / "compare.csv", buf.getvalue())
    if causal:  # compare.csv holds the mean over the bands; this file each band's distance
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["t", "n", "seed", "band", "metric", "distance"], lineterminator="\n")
        writer.writeheader()
        for row in band_rows:
            writer.writerow({**row, "t": repr(row["t"]), "distance": repr(row["distance"])})
        atomic_write(out / "compare_bands.csv", buf.getvalue())
    table = summary_table(rows)
    log.info("%s", table)
    atomic_write(out / "compare.txt", table + "\n")
    if case["output"]["plots"]:
        from ..io import plots

        title = f"{run_label(source, part.system.model, part.system.noise)}, particles against the PDE"
        plots.plot_compare(out / "compare.png", rows, title=title)
        t, x, w = last
        density = pde.snapshots[-1][1].mean(axis=0) if causal else pde.snapshots[-1][1]
        plots.plot_particles(out / "particles.png", mesh, x, w, t=t, density=density, label=title)
    return rows


def band_distances(metric: str, mesh, masses: np.ndarray, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Causal runs: the distance ``metric`` between band ``p`` of the causal PDE (``masses (P, N)``,
    each row of mass 1) and the tokens in band ``p`` (token i at ``s = i/n``,
    :func:`~meanfield.causal_run.token_bands`), their weights renormalized; ``(P,)``."""
    from ..causal_run import token_bands

    P = masses.shape[0]
    bands = token_bands(len(x), P)
    out = np.full(P, np.nan)
    for p in range(P):
        sel = bands == p
        if np.any(sel):
            out[p] = distance(metric, mesh, masses[p], x[sel], w[sel] / w[sel].sum())
    return out


def summary_table(rows) -> str:
    """Mean distance per n (columns) and time (rows), and the fitted exponent per time."""
    ns = sorted({r["n"] for r in rows})
    times = sorted({r["t"] for r in rows})
    metric = rows[0]["metric"] if rows else ""
    head = f"{'t':>8} " + " ".join(f"{'n=' + str(n):>12}" for n in ns) + f" {'exponent':>9}"
    lines = [f"mean {metric} distance between the PDE and n particles (over seeds); exponent a in distance ~ n^a",
             head]
    for t in times:
        means = [np.mean([r["distance"] for r in rows if r["t"] == t and r["n"] == n]) for n in ns]
        a = fit_exponent(ns, means)
        lines.append(f"{t:8.4g} " + " ".join(f"{m:12.4e}" for m in means) + f" {a:9.3f}")
    return "\n".join(lines)

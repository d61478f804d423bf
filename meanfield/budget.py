"""Cost and memory estimate of a case, before anything is built (issue 10, item 3).

A case of ``domain.cells = 100000000`` or ``domain.mesh = "icosahedral:10"`` used to be
accepted silently and grow until the machine ran out of memory. :func:`estimate` predicts,
from the resolved case alone (no mesh is generated, no array allocated), the size of the
problem (cells, edges, flux points, particles, snapshots), the peak memory of the run and
its time per step; :func:`describe` is the one log line saying so; :func:`check` refuses
(:class:`~meanfield.io.case.CaseError`, exit status 2) a case whose estimate exceeds the
memory this machine has available (:func:`available_memory`), naming the key to change
(``domain.cells``, ``domain.mesh``, ``particles.n``, ``compare.particles``; ``output.every``
when many kept snapshots make most of the memory) and the largest value that fits. ``--max-memory GIB`` (:func:`parse_memory_limit`) sets another limit;
``inf`` disables the check.

The memory model
----------------
The peak resident memory is the largest, over the phases of a run, of ``libraries +
OVERHEAD * arrays``: the libraries loaded by then (:data:`BASE_BYTES`, then VTK for the
sphere's files, matplotlib and VTK's rendering for the pictures) and the arrays alive at
that moment, in bytes per cell (per particle), counted from the solver's code and measured
with ``tracemalloc`` (every coefficient below is such a measurement, rounded up;
``docs/numerics.md``, "Cost and memory estimate", has the table of estimates against
measured peak RSS: 1.04 to 1.30 times the measurement). For ``N`` cells, ``q`` =
``domain.edge_points`` and ``nq`` points of the projection rule
(``initial.quadrature_degree``):

* building the mesh (sorting the edges): circle 408 N, sphere (692 + 456 q) N;
* the mesh itself: circle 216 N, sphere (286 + 156 q) N; the finite-volume operator
  (flux points, normals, slots): circle 112 N, sphere (106 + 84 q) N;
* projecting the initial density: (8 + 40 nq) N on the circle, (80 + 64 nq) N on the
  sphere (``nq`` = 16 at the default degree 8 on triangles, 5 on the circle);
* a step: the stage arrays, circle 200 N, sphere (44 + 241 q) N; the spectral sphere
  backend's plans of the edge points and cell centres (angles, frames), (72 + 108 q) N
  (measured with the coordinate-matching angle cache the plans replaced, which kept the
  same angles and frames; a plan's copy of the points replaces the operator's own, so this
  overestimates a little); the direct backend 48 N and its ~2 MiB blocks; the general-``Q, K, V`` sphere backend its coefficient matrix;
* a snapshot: the snapshot arrays and their ``.npz`` image, ``3 (2 d + 3) 8 N``; the
  density of every snapshot is kept for the pictures, ``8 N`` each, and the circle's
  space-time picture copies them once more;
* particles: ``(d + 1) 8 n`` for the state, a step's stages (``8 d n`` each, 7 for
  ``dopri5``), the field's work arrays, ``(d + 1) 8 n`` per snapshot kept, and the case's
  mesh (built for the pictures);
* ``compare``: the PDE run, then the particle runs while the PDE snapshots are kept, and
  the distance: exact optimal transport on the sphere (``w1``, ``w2``) builds the dense
  ``N x n`` cost matrix, ~42 bytes per entry with POT's copies (refused above
  ``MAX_DENSE_ENTRIES`` = 2e7 entries by :mod:`meanfield.particles.distances`, which :func:`check`
  reports before the run instead of after the PDE).

Under MPI every rank holds the whole mesh, the whole density and the snapshots (the
sources of the field and the neighbours of the update are replicated); only the flux
points, the stage arrays and the field's targets are split. ``ranks`` ranks on one machine
therefore need about ``ranks`` times the replicated part: more ranks never reduce it.

The time model
--------------
A PDE step evaluates the field once per stage (3 for ``ssprk3``, 4 for ``ssprk43``, 2, 1)
at the ``E q`` flux points from the ``N`` cells: direct sums cost ``E q N`` pairs at
:data:`PAIR_SECONDS` each (~5e8 pairs/s on one core), the spectral backends their cost
models (:func:`meanfield.fields.spectral_circle.spectral_cost`,
:func:`meanfield.fields.spectral_sphere_general.spectral_sphere_cost`, in the same pair units); the
finite-volume work adds :data:`FV_STAGE_SECONDS` per cell and stage. A particle step costs
its field evaluations (``dopri5`` 6, ``bs32`` 3, ``rk4`` 4, Euler 1) of ``n x n``.
``backend = "auto"`` is resolved exactly as :func:`meanfield.pde.solver.make_field` does.
Work is divided by the number of ranks. The number of steps is not estimated here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .io.case import CaseError

__all__ = ["Estimate", "available_memory", "check", "describe", "estimate", "format_bytes", "parse_memory_limit",
           "mesh_file_cells", "MEMORY_FLAG"]

#: The command-line flag that sets the memory limit (named in the refusal).
MEMORY_FLAG = "--max-memory"
GIB = float(1 << 30)

# -- calibration ------------------------------------------------------------------------
#: Resident memory of the interpreter with numpy, scipy, basix, ducc0 and the package, and
#: of the libraries loaded later: VTK/pyvista to write ``.vtp`` files (sphere), matplotlib
#: for the pictures, VTK's offscreen rendering (OpenGL) for the sphere pictures. Measured
#: 79 MB, +75 MB, +50 MB, +250 MB. Bytes.
BASE_BYTES = 85e6
VTK_BYTES = 80e6
PLOT_BYTES = 55e6
RENDER_BYTES = 270e6
#: Resident memory over the arrays counted (allocator slack: freed arrays are not all
#: returned to the system; short-lived temporaries the count leaves out); measured 1.1..1.2.
OVERHEAD = 1.25
#: Seconds of one direct (target, source) pair on one core (5e8 pairs/s).
PAIR_SECONDS = 2e-9
#: Finite-volume work per cell and stage besides the field (reconstruction, limiter,
#: fluxes, positivity bound), seconds: measured 2.2e-7 on the circle, 1.2e-7 on the sphere
#: (q = 1; the flux work grows with q).
FV_STAGE_SECONDS = {"circle": 2.2e-7, "sphere": 1.3e-7}
#: Particle work per particle and stage besides the field (combinations, retraction).
PARTICLE_STAGE_SECONDS = 1e-7

#: Bytes per cell (see the module docstring); sphere values are ``a + b q``.
_CIRCLE = {"build": 408.0, "mesh": 216.0, "fv": 112.0, "step": 200.0, "proj_cell": 8.0, "proj_point": 40.0}
_SPHERE = {"build": (692.0, 456.0), "mesh": (286.0, 156.0), "fv": (106.0, 84.0), "step": (44.0, 241.0),
           "cache": (72.0, 108.0), "proj_cell": 80.0, "proj_point": 64.0}
#: Per cell: the VTK copy of a snapshot being written, and the buffers of a rendering.
_VTK_CELL = 150.0
_RENDER_CELL = 400.0
#: Replicated stage arrays per cell under MPI (the whole density, the gathered stage, masses).
_REPLICATED_STAGE = 64.0
#: The direct backend: source arrays per cell and its work blocks (2 MiB each, a few alive).
_DIRECT_PER_SOURCE = 48.0
_DIRECT_BLOCKS = 8.0 * (1 << 20)
#: Field evaluations per PDE step (one per stage) and per particle step.
_PDE_STAGES = {"ssprk3": 3, "ssprk43": 4, "ssprk2": 2, "euler": 1}
_PARTICLE_EVALS = {"dopri5": 6, "bs32": 3, "rk4": 4, "euler": 1, "euler_tangent": 1}
#: Particle runs, in arrays of ``n x d`` doubles alive at the peak of a step (state,
#: stages, the field's work arrays; measured when the spherical spectral backend kept the
#: angles of its last 4 point sets, 12 of them: moving particles now prepare their angles
#: for each call only, so this overestimates), of a snapshot, and of the sampling.
_PARTICLE_STEP = {2: 20.0, 3: 31.0}
_PARTICLE_SNAPSHOT = {2: 12.0, 3: 32.0}
_PARTICLE_SAMPLE = 5.0
#: Above this many snapshots whose kept arrays make most of the memory, ``output.every`` is
#: the key to change (the default, t_end / 20, gives 21).
_MANY_SNAPSHOTS = 50
#: glibc's largest mmap threshold (bytes): smaller arrays come from the heap, which keeps
#: freed memory resident.
_MMAP_THRESHOLD = 32.0 * (1 << 20)


def _max_dense_entries() -> int:
    """The largest dense transport problem :mod:`meanfield.particles.distances` accepts."""
    from .particles.distances import MAX_DENSE_ENTRIES

    return int(MAX_DENSE_ENTRIES)


@dataclass(frozen=True)
class Estimate:
    """What :func:`estimate` predicts for one case.

    ``memory`` is the peak resident memory of the whole job on this machine in bytes
    (``ranks`` processes), ``memory_per_rank`` that of one process. ``key`` is the case
    key that drives it (named when :func:`check` refuses), ``value`` its value as the case
    gives it. ``seconds_per_step``: one PDE step (``run``, ``compare``) or one particle
    step of ``particles`` (``particles``); ``particle_seconds_per_step``: one step of the
    largest particle run (``particles``, ``compare``; else ``None``).
    ``seconds_per_snapshot``: the diagnostics and files of one snapshot.
    """

    kind: str
    manifold: str
    cells: int
    edges: int
    edge_points: int
    particles: int
    snapshots: int
    ranks: int
    backend: str
    memory: float
    memory_per_rank: float
    seconds_per_step: float
    particle_seconds_per_step: float | None
    seconds_per_snapshot: float
    key: str
    value: object
    mesh_label: str
    phases: dict = field(default_factory=dict, compare=False)
    #: a problem found regardless of memory: ``(key, reason)`` (see :func:`check`).
    problem: tuple | None = None
    #: the largest value of ``key`` that fits in a given number of bytes (used by :func:`check`).
    fits: object = field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------------------
def _icosahedral_level(spec: str) -> int | None:
    if isinstance(spec, str) and spec.startswith("icosahedral:"):
        text = spec.split(":", 1)[1].strip()
        if text.isdigit():
            return int(text)
    return None


def mesh_file_cells(path) -> int:
    """Triangles of the surface in a mesh file (the cells the solver will have), read with
    pyvista as :func:`meanfield.geometry.sphere.load_mesh` reads it (the file's own arrays only: a
    small fraction of what the solver allocates for the same cells)."""
    from .geometry.sphere import read_surface

    _, tri = read_surface(Path(path))
    return int(tri.shape[0])


def _mesh_size(case: dict, cells: int | None) -> tuple[int, int, int, str]:
    """``(cells, edges, q, label)`` of the case's mesh, from the case (no mesh built)."""
    dom = case["domain"]
    if dom["manifold"] == "circle":
        n = int(dom["cells"])
        return n, n, 1, f"{n:,} cells"
    if dom["manifold"] == "zonal":
        n = int(dom["cells"])
        return n, n - 1, 1, f"S^{int(dom['d']) - 1}, {n:,} bands"
    if dom.get("d", 3) != 3:  # particles on S^{d-1}: no mesh
        return 0, 0, 1, "no mesh"
    q = int(dom.get("edge_points", 1))
    level = _icosahedral_level(dom["mesh"])
    if cells is None:
        if level is not None:
            from .geometry.sphere import icosahedral_counts

            cells = icosahedral_counts(level)[0]
        else:
            cells = mesh_file_cells(dom["mesh"])
    n = int(cells)
    label = f"\"icosahedral:{level}\"" if level is not None else f"{Path(dom['mesh']).name}"
    return n, (3 * n) // 2, q, f"{label}, {n:,} cells"


def _snapshots(case: dict) -> int:
    """Number of output times (as :func:`meanfield.run.output_times`)."""
    from .io.case import case_output_times

    return len(case_output_times(case))


def _quadrature_points(manifold: str, degree: int) -> int:
    """Points of the projection rule: basix Gauss--Jacobi on the interval, its default
    (Xiao--Gimbutas) rule on the triangle."""
    if manifold == "circle":
        return degree // 2 + 1
    try:
        import basix

        return int(len(basix.make_quadrature(basix.CellType.triangle, int(degree))[1]))
    except Exception:  # noqa: BLE001 -- an estimate: the counts of basix 0.8 up to degree 30
        return max(1, int(math.ceil(0.19 * (degree + 1) ** 2)))


# ---------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------
def _segments(case: dict, d: int) -> list[list]:
    """The attention heads (:class:`~meanfield.fields.attention.AttentionModel`) of every
    interval of the case's velocity model (:func:`meanfield.run.build_model`; random heads:
    layer 0's, like every layer's in cost)."""
    from .run import build_model

    model = build_model(case, d, check=False)
    return [[h.attention for h in terms.heads if h.weight] for terms in model.all_terms()]


#: Factorizations the noise's implicit diffusion keeps (``Simulation``: ``max_factorizations``).
DIFFUSION_FACTORIZATIONS = 4


def _diffusion_bytes(manifold: str, n: int) -> float:
    """Memory of the implicit diffusion (``model.noise > 0``): the kept LU factors and the
    operators. LU fill measured (``benchmarks/bench_diffusion.py``, nested dissection): 109,
    148, 186, 220 entries per cell on icosahedral levels 3..6 (+18.5 per doubling of the
    cells), 6 on the circle; 12 bytes per entry (value and index); the flux operators hold
    10 entries per edge (sphere), and SuperLU's workspace about one more factor."""
    n = float(n)
    if manifold == "circle":
        per_cell = 6.0
        operators = 3 * 3 * 12.0 * n
    else:
        per_cell = max(60.0, 109.0 + 18.5 * (math.log2(max(n, 2.0)) - math.log2(1280.0)))
        operators = 2 * 10 * 1.5 * 12.0 * n + 2 * 10 * 12.0 * n  # fluxes (E = 1.5 N), matrices
    return (DIFFUSION_FACTORIZATIONS + 1) * 12.0 * per_cell * n + operators


#: Seconds per cell of one SDIRK2 diffusion step (two solves; measured 0.41, 2.4, 13, 92 ms on
#: icosahedral levels 3..6: about 1.1e-6 s per cell at level 6; 7.7e-8 s on the circle).
DIFFUSION_STEP_SECONDS = {"sphere": 1.1e-6, "circle": 8e-8}


def _heads_choice(segments, backend: str, tolerance: float, n_targets: int, n_sources: int):
    """``(name, pair cost of one call, extra bytes)`` of the velocity: the dearest interval's
    summed head costs, and the extra bytes of every head backend (all are built up front)."""
    names, cost, extra = [], 0.0, 0.0
    for heads in segments:
        seg_cost = 0.0
        for head in heads:
            name, c, e = _field_choice(head, backend, tolerance, n_targets, n_sources)
            names.append(name)
            seg_cost += c
            extra += e
        cost = max(cost, seg_cost)
    if not names:
        return "none", 0.0, 0.0
    unique = sorted(set(names))
    return (unique[0] if len(unique) == 1 else "+".join(unique)), cost, extra


def _field_choice(model, backend: str, tolerance: float, n_targets: int, n_sources: int):
    """``(name, pair cost of one call, extra bytes)`` of the backend :func:`make_field`
    would build; the extra bytes are the general sphere backend's coefficient matrix."""
    direct = float(n_targets) * float(n_sources)
    if backend == "direct" or model.d not in (2, 3):
        return "direct", direct, 0.0
    try:
        if model.d == 2:
            from .fields.spectral_circle import spectral_cost

            cost = spectral_cost(model, n_targets, n_sources, tolerance)
        else:
            from .fields.spectral_sphere_general import spectral_sphere_cost

            cost = spectral_sphere_cost(model, n_targets, n_sources, tolerance)
    except (ValueError, ImportError):
        cost = math.inf
    if backend == "auto" and not cost < 0.5 * direct:
        return "direct", direct, 0.0
    if not math.isfinite(cost):  # "spectral" where it is refused: the run says why
        return "direct", direct, 0.0
    extra = 0.0
    if model.d == 3 and model.isotropic() is None:
        try:
            from .fields.spectral_sphere_general import general_plan

            extra = 2.0 * float(general_plan(model, tolerance)["bytes"])  # the matrix, and its construction
        except ValueError:
            extra = 0.0
    return "spectral", cost, extra


def _energy_seconds(model, n: int) -> float:
    """The energy of one snapshot: spectral from ENERGY_SPECTRAL_MIN_POINTS points on where
    the model allows it (rotation invariant), else the O(n^2) double sum."""
    from .fields.energy import ENERGY_SPECTRAL_MIN_POINTS

    if model is None:
        return 0.0
    iso = model.d == 3 and model.isotropic() is not None
    if model.d == 2:
        qk = model.Q.T @ model.K
        iso = abs(qk[0, 0] - qk[1, 1]) + abs(qk[0, 1] + qk[1, 0]) <= 1e-14 * max(1.0, abs(qk).max())
    if model.beta == 0.0 or (iso and n >= ENERGY_SPECTRAL_MIN_POINTS):
        return 200e-9 * n
    return 0.7 * PAIR_SECONDS * float(n) * float(n)  # measured 1.2 ns per pair (level 5, general Q, K)


# ---------------------------------------------------------------------------------------
# memory of the phases of a run
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Phase:
    """The arrays alive at one moment of a run (bytes per rank), the libraries loaded by
    then (bytes), and whether only rank 0 goes through it (files, pictures)."""

    arrays: float
    libraries: float = BASE_BYTES
    root_only: bool = False

    @property
    def resident(self) -> float:
        return self.libraries + OVERHEAD * self.arrays


def _mesh_bytes(manifold: str, n: int, q: int, what: str) -> float:
    """``what`` = "build" (the mesh being built: its peak) or "mesh" (its arrays)."""
    if manifold == "circle":
        return _CIRCLE[what] * n
    a, b = _SPHERE[what]
    return (a + b * q) * n


def _pde_phases(manifold: str, n: int, q: int, nq: int, d: int, backend: str, field_extra: float, snapshots: int,
                ranks: int, pictures: bool, bands: int = 1) -> dict:
    """The phases of a PDE run of ``n`` cells (per rank; rank 0 writes); ``bands``: the position
    bands of a causal run, each holding the per-cell arrays of the state, the stages and the
    snapshots (the mesh and the field's per-call arrays are shared)."""
    n = float(n)
    b = float(max(1, int(bands)))
    if manifold == "circle":
        c = _CIRCLE
        fv, step, cache = c["fv"], c["step"], 0.0
        proj = c["proj_cell"] + c["proj_point"] * nq
        vtk = 0.0
    else:
        sp = _SPHERE
        fv, step, cache = (sp[k][0] + sp[k][1] * q for k in ("fv", "step", "cache"))
        proj = sp["proj_cell"] + sp["proj_point"] * nq
        cache = cache if backend == "spectral" else 0.0
        vtk = VTK_BYTES
    p = max(1, int(ranks))
    mesh = _mesh_bytes(manifold, n, q, "mesh")
    fv_rank = fv / p + (16.0 if p > 1 else 0.0)  # the owned share; the partition's maps
    step_rank = step / p + (_REPLICATED_STAGE if p > 1 else 0.0)
    direct = (_DIRECT_PER_SOURCE * n + _DIRECT_BLOCKS) if backend == "direct" else 0.0
    kept = 8.0 * n * snapshots * b  # the density of every snapshot (pictures, compare)
    held = mesh + (fv_rank + cache / p) * n + field_extra + direct
    snap = 3.0 * (2 * d + 3) * 8.0 * n * b  # the snapshot's arrays, the field at the centres, the npz image
    phases = {
        "mesh": _Phase(_mesh_bytes(manifold, n, q, "build")),
        "initial": _Phase(mesh + (fv_rank + proj) * n + field_extra + 8.0 * n * b),
        "step": _Phase(held + step_rank * n * b + kept, BASE_BYTES + vtk),
        "snapshot": _Phase(held + snap + kept, BASE_BYTES + vtk),
    }
    if manifold == "sphere":
        phases["vtk"] = _Phase(held + snap + _VTK_CELL * n + kept, BASE_BYTES + vtk, root_only=True)
    if pictures:
        if manifold == "circle":  # the space-time image copies the densities once more
            phases["pictures"] = _Phase(held + 2.0 * kept + 200.0 * n, BASE_BYTES + PLOT_BYTES, root_only=True)
        else:
            phases["pictures"] = _Phase(held + kept + _RENDER_CELL * n, BASE_BYTES + vtk + PLOT_BYTES + RENDER_BYTES,
                                        root_only=True)
    return phases


def _particle_phases(manifold: str, n: int, d: int, backend: str, snapshots: int, held: float, build: float,
                     field_extra: float, files: bool, pictures: bool, mesh_cells: int) -> dict:
    """The phases of a particle run of ``n`` particles in R^d, with ``held`` bytes of other
    arrays alive (the case's mesh; ``compare``: the PDE's snapshots) and the mesh's
    construction peak ``build``."""
    n = float(n)
    row = 8.0 * d * n
    state = (d + 1) * 8.0 * n + 30.0 * n  # positions, weights; the histogram cells (n / 64)
    step = _PARTICLE_STEP[d] if d in _PARTICLE_STEP else 31.0
    if backend == "direct":
        step = 20.0
        field_extra += _DIRECT_BLOCKS
    kept = (d + 1) * 8.0 * n * snapshots
    vtk = VTK_BYTES if (manifold == "sphere" and files) else 0.0
    phases = {
        "mesh": _Phase(held + build),
        "sample": _Phase(held + _PARTICLE_SAMPLE * row),
        "step": _Phase(held + state + step * row + field_extra + kept, BASE_BYTES + vtk),
        "snapshot": _Phase(held + state + _PARTICLE_SNAPSHOT.get(d, 32.0) * row + field_extra + kept
                           + (3.0 * (2 * d + 1) * 8.0 * n if files else 0.0), BASE_BYTES + vtk),
    }
    if pictures:
        if manifold == "circle":
            phases["pictures"] = _Phase(held + state + kept + 150.0 * n, BASE_BYTES + PLOT_BYTES, root_only=True)
        else:
            phases["pictures"] = _Phase(held + state + kept + _RENDER_CELL * mesh_cells + 200.0 * n,
                                        BASE_BYTES + vtk + PLOT_BYTES + RENDER_BYTES, root_only=True)
    return phases


def _transport_bytes(metric: str, manifold: str, cells: int, n: int) -> float:
    """The distance's own arrays for ``cells`` atoms against ``n`` particles (measured:
    exact transport 42 B per entry of the dense problem, dense Sinkhorn 70, the circle's
    quantile functions 165 B per atom, sliced ~120 MB of projection chunks, mmd and tv
    ~26 MB of blocks)."""
    entries = float(cells) * float(n)
    atoms = float(cells + n)
    dense = entries <= _max_dense_entries()
    if manifold == "circle" and metric in ("w1", "w2", "sliced"):
        return 200.0 * atoms
    if metric in ("w1", "w2"):
        return 48.0 * entries if dense else 0.0
    if metric == "sinkhorn":
        return 80.0 * entries if dense else 64.0 * (1 << 20) + 64.0 * atoms
    if metric == "sliced":
        return 140.0 * (1 << 20) + 64.0 * atoms
    return 32.0 * (1 << 20) + 64.0 * atoms


def _machine_total(phases: dict, ranks: int) -> tuple[float, float]:
    """``(rank 0, all ranks)`` peak resident bytes: rank 0 goes through every phase, the
    others through those that are not rank 0's alone (files, pictures)."""
    root = max(ph.resident for ph in phases.values())
    others = max((ph.resident for ph in phases.values() if not ph.root_only), default=0.0)
    return root, root + (max(1, ranks) - 1) * others


# ---------------------------------------------------------------------------------------
# the estimate
# ---------------------------------------------------------------------------------------
def estimate(case: dict, kind: str = "run", n: int | None = None, ranks: int = 1, cells: int | None = None,
             source="<case>") -> Estimate:
    """The cost and memory of running the resolved ``case`` (:func:`meanfield.io.case.load_case`).

    ``kind``: ``"run"`` (the PDE), ``"particles"`` (``n`` particles, default
    ``particles.n``; the given points for ``initial.kind = "points"``) or ``"compare"``
    (the PDE, then ``compare.particles`` x seeds particle runs and the distances).
    ``ranks``: MPI processes on this machine (each holds the replicated arrays). ``cells``:
    the cell count of a mesh file when the caller knows it (else the file is read; an
    unreadable one raises :class:`CaseError` naming ``source`` and ``domain.mesh``).
    Builds nothing but a few scalars; takes milliseconds (a mesh file: its reading; a
    general ``Q, K, V`` on the sphere: the backend's plan, up to a few tenths of a second).
    """
    if kind not in ("run", "particles", "compare"):
        raise ValueError(f"kind must be 'run', 'particles' or 'compare', got {kind!r}")
    ranks = max(1, int(ranks))
    zonal = case["domain"]["manifold"] == "zonal"
    # the zonal bands are a 1-D mesh: the circle's memory model, with the zonal field's kernels
    manifold = "circle" if zonal else case["domain"]["manifold"]
    d = int(case["domain"].get("d") or (2 if manifold == "circle" else 3))
    try:
        n_cells, n_edges, q, label = _mesh_size(case, cells)
    except ValueError as exc:  # MeshError: a mesh file that cannot be read
        raise CaseError(source, "domain.mesh", str(exc)) from None
    n_points = n_edges * q  # the field's targets
    snaps = _snapshots(case)
    s = case["solver"]
    segments = _segments(case, d)
    noise = case["model"].get("noise", 0.0) > 0
    model = next((h for heads in segments for h in heads), None)  # the energy's cost: the first head's
    pictures = bool(case["output"].get("plots", True))
    circle_spectral = manifold == "circle" and s["scheme"] == "spectral"
    #: the position bands of a causal PDE: P fields and densities per stage
    bands = (case["domain"].get("positions") or 1) if case["model"].get("mask") == "causal" else 1
    nq = _quadrature_points(manifold, case["initial"].get("quadrature_degree", 8))

    def pde(nc: int, snaps: int = snaps) -> tuple[dict, str, float]:
        ne = nc if manifold == "circle" else (3 * nc) // 2
        if circle_spectral:
            name, cost, extra = "Fourier pseudo-spectral", 60.0 * nc * math.log2(max(nc, 2)), 0.0
        elif zonal:  # three dense band-to-band kernels per plan (edges, centres), a product each
            name, cost, extra = "zonal", 0.5 * nc * nc, 2 * 3 * 8.0 * nc * nc
            if noise:
                extra += 200.0 * nc
        else:
            name, cost, extra = _heads_choice(segments, s["backend"], s["tolerance"], ne * q, nc)
            if noise:
                extra += _diffusion_bytes(manifold, nc)
        phases = _pde_phases(manifold, nc, q, nq, d, "spectral" if circle_spectral else name, extra, snaps, ranks,
                             pictures, bands)
        return phases, name, cost * bands

    def particle(nn: int, nc: int, held: float, build: float, files: bool, plots: bool,
                 snaps: int = snaps) -> tuple[dict, str, float]:
        name, cost, extra = _heads_choice(segments, s["backend"], s["tolerance"], nn, nn)
        return _particle_phases(manifold, nn, d, name, snaps, held, build, extra, files, plots, nc), name, cost

    def phases_for(nc: int, nn: int, snaps: int = snaps) -> dict:
        """Every phase of this kind of run for ``nc`` cells, ``nn`` particles and ``snaps``
        snapshots."""
        mesh = _mesh_bytes(manifold, nc, q, "mesh")
        build = _mesh_bytes(manifold, nc, q, "build")
        if kind == "run":
            return pde(nc, snaps)[0]
        if kind == "particles":  # the case's mesh is built for the pictures and VTK files
            return particle(nn, nc, mesh, build - mesh, True, pictures, snaps)[0]
        # compare: the PDE run; then its snapshots (twice) and the mesh (twice: one per
        # particle run) stay while the particle runs and the distances go on
        out = dict(pde(nc, snaps)[0])
        kept = 2.0 * 8.0 * nc * snaps + 2.0 * mesh
        pp = particle(nn, nc, kept, build - mesh, False, False, snaps)[0]
        pp["distance"] = _Phase(kept + _transport_bytes(case["compare"]["metric"], manifold, nc, nn)
                                + (d + 1) * 8.0 * nn * snaps)
        if pictures:
            sphere = manifold == "sphere"
            pp["pictures"] = _Phase(kept + (_RENDER_CELL * nc if sphere else 0.0) + 200.0 * nn,
                                    BASE_BYTES + PLOT_BYTES + (VTK_BYTES + RENDER_BYTES if sphere else 0.0),
                                    root_only=True)
        if 24.0 * nc < _MMAP_THRESHOLD:
            # arrays below glibc's mmap threshold live on the heap, which keeps what the PDE
            # run freed: the particle runs start from the PDE run's resident memory
            after = max(ph.resident for ph in out.values())
            pp = {k: _Phase(v.arrays, max(v.libraries, after), v.root_only) for k, v in pp.items()}
        out.update({f"particles {k}": v for k, v in pp.items()})
        return out

    stages = _PDE_STAGES.get(s["time_integrator"], 3)
    evals = _PARTICLE_EVALS.get(s["integrator"], 6)
    particle_seconds = None
    n_particles = 0
    problem = None
    key, value = ("domain.cells", n_cells) if manifold == "circle" else ("domain.mesh", case["domain"]["mesh"])
    if kind == "particles":
        n_particles = len(case["initial"]["points"]) if case["initial"]["kind"] == "points" else int(
            case["particles"]["n"] if n is None else n)
    elif kind == "compare":
        n_particles = max(case["compare"]["particles"])
    phases = phases_for(n_cells, n_particles)
    if kind in ("run", "compare"):
        _, backend, cost = pde(n_cells)
        fv_seconds = FV_STAGE_SECONDS[manifold] * n_cells * (1.0 + 0.5 * (q - 1)) * bands
        if circle_spectral:
            seconds = 4 * (cost * PAIR_SECONDS + fv_seconds) / ranks
        else:
            seconds = stages * (cost * PAIR_SECONDS + fv_seconds + 1e-3) / ranks
            if noise:  # one more transport stage (Strang), two half diffusion steps on every rank
                seconds += (cost * PAIR_SECONDS + fv_seconds) / ranks + 2 * DIFFUSION_STEP_SECONDS[manifold] * n_cells
        snap_seconds = (cost / max(n_points, 1) * n_cells * PAIR_SECONDS + _energy_seconds(model, n_cells)
                        + 3e-7 * n_cells * (3 if manifold == "sphere" else 1))
    if kind in ("particles", "compare"):
        _, pname, pcost = particle(n_particles, n_cells, 0.0, 0.0, False, False)
        particle_seconds = evals * (pcost * PAIR_SECONDS + PARTICLE_STAGE_SECONDS * n_particles + 2e-4) / ranks
    if kind == "particles":
        backend, seconds = pname, particle_seconds
        snap_seconds = pcost * PAIR_SECONDS + _energy_seconds(model, n_particles) + 3e-7 * n_particles
        # the key that drives the memory: the particles, or the case's mesh (built for the pictures)
        mesh_only = _machine_total(phases_for(n_cells, 1), ranks)[1]
        if _machine_total(phases, ranks)[1] - mesh_only >= mesh_only - BASE_BYTES:
            key, value = "particles.n", n_particles
    if kind == "compare":
        pde_part = max(v.resident for k, v in phases.items() if not k.startswith("particles"))
        part = max(v.resident for k, v in phases.items() if k.startswith("particles"))
        if part > pde_part and _machine_total(phases, 1)[0] > 1.5 * _machine_total(phases_for(n_cells, 1), 1)[0]:
            key, value = "compare.particles", list(case["compare"]["particles"])
        metric = case["compare"]["metric"]
        entries = float(n_cells) * n_particles
        limit = _max_dense_entries()
        if manifold != "circle" and metric in ("w1", "w2") and entries > limit:
            fit = limit // max(n_cells, 1)
            problem = ("compare.metric", f"{metric!r} (exact optimal transport on the sphere) needs a dense "
                       f"{n_cells:,} x {n_particles:,} cost matrix ({entries:.3g} entries, at most "
                       f"{limit:.3g}); use \"sinkhorn\" (blockwise), \"sliced\" or \"mmd\", a coarser "
                       f"mesh, or at most {fit:,} particles")
    per_rank, total = _machine_total(phases, ranks)
    if snaps > _MANY_SNAPSHOTS and total > 2.0 * _machine_total(phases_for(n_cells, n_particles, 2), ranks)[1]:
        # many snapshots, all kept (the densities for the pictures and compare): the problem
        if case["output"].get("per_decade") is None:
            key, value = "output.every", case["output"]["every"]
        else:
            key, value = "output.per_decade", case["output"]["per_decade"]

    def fits(limit: float):
        """The largest value of ``key`` whose estimate stays within ``limit`` bytes (for
        ``domain.mesh``: the finest icosahedral level), or ``None``."""
        if key == "domain.mesh":
            if _icosahedral_level(case["domain"]["mesh"]) is None:
                return None
            ok = [lv for lv in range(0, 11) if _machine_total(phases_for(20 * 4**lv, n_particles), ranks)[1] <= limit]
            return max(ok) if ok else None
        if key == "domain.cells":
            return _largest(lambda nc: _machine_total(phases_for(nc, n_particles), ranks)[1], limit, 3)
        if key == "output.every":  # the smallest interval: from the most snapshots that fit
            most = _largest(lambda k: _machine_total(phases_for(n_cells, n_particles, k), ranks)[1], limit, 2)
            return None if most is None else case["solver"]["t_end"] / (most - 1)
        if key == "output.per_decade":  # the most per decade: from the most snapshots that fit
            most = _largest(lambda k: _machine_total(phases_for(n_cells, n_particles, k), ranks)[1], limit, 3)
            decades = math.log10(case["solver"]["t_end"] / case["output"]["first"])
            return None if most is None else max(int((most - 2) / max(decades, 1e-12)), 0) or None
        return _largest(lambda nn: _machine_total(phases_for(n_cells, nn), ranks)[1], limit, 1)

    return Estimate(kind=kind, manifold=case["domain"]["manifold"], cells=n_cells, edges=n_edges, edge_points=n_points,
                    particles=n_particles, snapshots=snaps, ranks=ranks, backend=backend, memory=total,
                    memory_per_rank=per_rank, seconds_per_step=seconds, particle_seconds_per_step=particle_seconds,
                    seconds_per_snapshot=snap_seconds, key=key, value=value, mesh_label=label,
                    phases={k: v.resident for k, v in phases.items()}, problem=problem, fits=fits)


def _largest(f, limit: float, lo: int) -> int | None:
    """The largest integer ``x >= lo`` with ``f(x) <= limit`` (``f`` nondecreasing), or None."""
    if f(lo) > limit:
        return None
    hi = lo * 2
    while f(hi) <= limit and hi < 10**13:
        lo, hi = hi, hi * 2
    while hi - lo > max(1, lo // 1000):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if f(mid) <= limit else (lo, mid)
    return lo


# ---------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------
def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text in ("max", ""):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _cgroup_room(proc_cgroup="/proc/self/cgroup", root="/sys/fs/cgroup") -> int | None:
    """Bytes left below this process's cgroup memory limit (v2 ``memory.max`` or v1
    ``memory.limit_in_bytes``, minus the usage), the tightest over the cgroup and its
    parents; ``None`` without a limit."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(root)
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # v2
            mounts = [root, root / "unified"]
            files = ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            mounts = [root / "memory", root / controllers]
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        for mount in mounts:
            if not (mount / files[0]).is_file():
                continue
            # the cgroup's own directory and its parents (a namespaced mount shows the cgroup as its root)
            rel_path = Path(rel.lstrip("/"))
            chain = [mount / rel_path] + [mount / p for p in rel_path.parents]
            for folder in chain:
                limit = _read_int(folder / files[0])
                if limit is None or limit >= 1 << 60:
                    continue
                usage = _read_int(folder / files[1]) or 0
                room = max(0, limit - usage)
                best = room if best is None else min(best, room)
            break
    return best


def available_memory() -> int | None:
    """Bytes this process may still allocate: ``MemAvailable`` of ``/proc/meminfo``, lowered
    to the room below a cgroup (v1 or v2) memory limit; ``None`` where neither is known
    (then :func:`check` checks nothing)."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    room = _cgroup_room()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return int(avail)


def parse_memory_limit(text) -> float:
    """The value of ``--max-memory GIB``: a positive number of GiB, or ``inf`` (no check).
    Returns bytes (``math.inf`` for no limit); raises :class:`CaseError` naming the flag."""
    try:
        gib = float(text)
    except (TypeError, ValueError):
        raise CaseError(MEMORY_FLAG, "", f"expected a number of GiB or inf, got {text!r}") from None
    if math.isnan(gib) or gib <= 0:
        raise CaseError(MEMORY_FLAG, "", f"expected a positive number of GiB or inf, got {text!r}")
    return math.inf if math.isinf(gib) else gib * GIB


# ---------------------------------------------------------------------------------------
# reporting and refusing
# ---------------------------------------------------------------------------------------
def format_bytes(b: float) -> str:
    """``"1.9 GiB"``, ``"310 MiB"``."""
    if b >= 1000 * (1 << 20):
        g = b / GIB
        return f"{g:.2f} GiB" if g < 10 else (f"{g:.1f} GiB" if g < 100 else f"{g:,.0f} GiB")
    return f"{b / (1 << 20):.0f} MiB"


def _seconds(s: float) -> str:
    if s < 0.01:
        return f"{s * 1e3:.2g} ms"
    if s < 120:
        return f"{s:.2g} s"
    if s < 7200:
        return f"{s / 60:.2g} min"
    if s < 360000:
        return f"{s / 3600:.3g} h"
    return f"{s / 3600:,.0f} h"


def describe(est: Estimate) -> str:
    """One log line: the size, the memory and the time per step, e.g. ``estimate: sphere
    "icosahedral:7", 327,680 cells, 491,520 flux points, 11 snapshots; memory ~1.2 GiB;
    ~0.25 s per step (spectral)``."""
    ranks = f" on {est.ranks} ranks ({format_bytes(est.memory_per_rank)} each)" if est.ranks > 1 else ""
    mesh = f"{est.manifold} {est.mesh_label}"
    if est.kind == "run":
        size = f"{mesh}, {est.edge_points:,} flux points"
        time = f"~{_seconds(est.seconds_per_step)} per step ({est.backend})"
    elif est.kind == "particles":
        size = f"{est.particles:,} particles on the {est.manifold} (mesh {est.mesh_label})"
        time = f"~{_seconds(est.particle_seconds_per_step)} per step ({est.backend})"
    else:
        size = f"{mesh}, {est.edge_points:,} flux points, then up to {est.particles:,} particles"
        time = (f"~{_seconds(est.seconds_per_step)} per PDE step ({est.backend}), "
                f"~{_seconds(est.particle_seconds_per_step)} per particle step")
    return (f"estimate: {size}, {est.snapshots:,} snapshots; memory ~{format_bytes(est.memory)}{ranks}; {time}, "
            f"~{_seconds(est.seconds_per_snapshot)} per snapshot")


def check(est: Estimate, limit_bytes: float | None = None, source="<case>", available: float | None = None) -> None:
    """Refuse the case of ``est`` (:class:`~meanfield.io.case.CaseError`: exit status 2) when
    its memory estimate exceeds the limit, or when it is bound to fail for another reason
    the estimate found (``est.problem``: a dense transport problem too large for
    ``compare``; checked whatever the limit).

    ``limit_bytes``: the value of ``--max-memory`` (:func:`parse_memory_limit`; ``math.inf``:
    no memory check), or ``None`` for the memory available on this machine: ``available``
    when given (under MPI, rank 0's :func:`available_memory` broadcast, so that every rank
    decides alike), else :func:`available_memory` (``None`` there: nothing is checked).
    The reason names the estimate, the limit, what to change (with the largest value that
    fits) and how to override (``--max-memory GIB``, ``inf`` for no check)."""
    if est.problem is not None:
        raise CaseError(source, est.problem[0], est.problem[1])
    if limit_bytes is None:
        limit_bytes = available if available is not None else available_memory()
        where = "available on this machine"
    else:
        where = f"allowed by {MEMORY_FLAG}"
    if limit_bytes is None or math.isinf(limit_bytes) or est.memory <= limit_bytes:
        return
    key = est.key
    fit = est.fits(limit_bytes) if est.fits is not None else None
    if key == "domain.cells":
        size = f"{est.cells:,} cells need"
        change = "fewer cells" + (f" (at most {fit:,} fit)" if fit else "")
    elif key == "domain.mesh":
        size = f"\"{est.value}\" ({est.cells:,} cells) needs"
        level = _icosahedral_level(str(est.value))
        if level is None:
            change = "a coarser mesh"
        elif fit is None:
            change = "a coarser mesh (no icosahedral level fits)"
        else:
            change = f"a coarser mesh (\"icosahedral:{fit}\" fits; each level down needs about 4 times less)"
    elif key in ("output.every", "output.per_decade"):
        what = f"{est.particles:,} particles" if est.kind == "particles" else f"{est.cells:,} cells"
        size = f"{est.value:g} ({est.snapshots:,} snapshots of {what}, every one kept for the pictures) needs"
        bound = f"output.every >= {fit:.3g}" if key == "output.every" else f"output.per_decade <= {fit}"
        change = "fewer snapshots" + (f" ({bound})" if fit else "")
    else:
        if key == "particles.n":
            size = f"{est.particles:,} particles need"
        else:
            shown = ", ".join(f"{v:,}" for v in est.value)
            size = f"[{shown}] (up to {est.particles:,} particles, after the PDE on {est.cells:,} cells) need"
        change = "fewer particles" + (f" (at most {fit:,} fit)" if fit else "")
    ranks = f" on {est.ranks} MPI ranks" if est.ranks > 1 else ""
    held = "all the particles" if key == "particles.n" else "the whole mesh, density and snapshots"
    reason = (f"{size} about {format_bytes(est.memory)} of memory{ranks} (estimate), more than the "
              f"{format_bytes(limit_bytes)} {where}; use {change}. More MPI ranks on one machine do not help: every "
              f"rank holds {held}. To run anyway, pass {MEMORY_FLAG} GIB (a larger limit) or {MEMORY_FLAG} inf "
              f"(no check)")
    raise CaseError(source, key, reason)

"""Runs under ``mpiexec`` with 2 and 3 ranks give the serial results, and split the work:
each rank evaluates the attention field at its own share of the targets (edge points,
cell centres, particles) and sums only its share of the sources into spectral
coefficients, counted in the backends themselves (``_count_field.py``)."""

import time

import numpy as np
import pytest

from _helpers import MEANFIELD, MPIEXEC, launch, launch_counted

pytestmark = pytest.mark.mpi

if MPIEXEC is None or MEANFIELD is None:  # the mpich wheel provides mpiexec next to python
    pytest.skip("mpiexec or the meanfield script is not installed", allow_module_level=True)

CIRCLE = """
[domain]
cells = 200
[model]
beta = 4.0
[initial]
kind = "modes"
modes = [{k = 2, amplitude = 0.3}, {k = 3, amplitude = 0.2, phase = 1.0}]
[solver]
t_end = 1.0
[output]
every = 0.5
plots = false
"""

SPHERE = """
[domain]
manifold = "sphere"
mesh = "icosahedral:2"
[model]
beta = 4.0
[initial]
kind = "vmf"
centers = [[1, 0, 0], [0, 1, 0]]
kappas = [3.0, 3.0]
[solver]
t_end = 0.5
[output]
every = 0.25
plots = false
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def user_mesh(tmp_path):
    """Icosahedral level 2 with its cells numbered at random, as a user's mesh file (the
    split orders such cells along the Morton curve)."""
    import pyvista as pv

    from meanfield.geometry.sphere import icosahedral

    mesh = icosahedral(2)
    perm = np.random.default_rng(5).permutation(mesh.n_cells)
    path = tmp_path / "user.vtp"
    pv.PolyData.from_regular_faces(mesh.vertices, mesh.triangles[perm]).save(path)
    return path


def assert_split(serial, parallel, ranks, overlap=1.2, sources=False):
    """Every rank made the serial run's field evaluations (same steps and stages), each at
    about its share of the serial targets and no more: ``share <= overlap * total / ranks``
    (the edges on a share's boundary are evaluated by both sides), all together at least
    the serial total. With ``sources``: the spectral coefficient sums split exactly."""
    (total, calls, summed), = serial.values()
    assert sorted(parallel) == list(range(ranks)), parallel
    assert total > 0 and calls > 0
    for rank, (targets, rank_calls, rank_summed) in parallel.items():
        assert rank_calls == calls, (rank, rank_calls, calls)
        assert targets <= overlap * total / ranks, (rank, targets, total)
        if sources:
            assert rank_summed <= total and abs(rank_summed - summed / ranks) <= calls, (rank, rank_summed, summed)
    assert total <= sum(t for t, _, _ in parallel.values()) <= overlap * total
    if sources:
        assert summed > 0 and sum(s for _, _, s in parallel.values()) == summed


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("manifold, backend", [("circle", "direct"), ("circle", "spectral"),
                                               ("sphere", "direct"), ("sphere", "spectral"), ("user", "direct")])
def test_pde_is_independent_of_the_number_of_ranks(tmp_path, ranks, manifold, backend):
    text = CIRCLE if manifold == "circle" else SPHERE
    if manifold == "user":
        text = text.replace('"icosahedral:2"', f'"{user_mesh(tmp_path)}"')
    case = write(tmp_path, "c.toml", text)
    common = ("--set", f'solver.backend="{backend}"', "--quiet")
    serial, serial_counts = launch_counted(1, "run", case, "--out", tmp_path / "serial", *common)
    assert serial.returncode == 0, serial.stderr
    par, par_counts = launch_counted(ranks, "run", case, "--out", tmp_path / "par", *common)
    assert par.returncode == 0, par.stderr
    a, b = np.load(tmp_path / "serial" / "final.npz"), np.load(tmp_path / "par" / "final.npz")
    assert float(a["t"]) == float(b["t"])
    assert np.max(np.abs(a["masses"] - b["masses"])) <= 1e-12
    assert np.max(np.abs(a["velocity"] - b["velocity"])) <= 1e-12 * max(1.0, np.abs(a["velocity"]).max())
    # rank 0 alone wrote the snapshots: one set, complete
    assert len(list((tmp_path / "par" / "snapshots").glob("*.npz"))) == len(
        list((tmp_path / "serial" / "snapshots").glob("*.npz")))
    # the work was split: measured largest share / (total / ranks) = 1.01 (circle, 2 and 3
    # ranks), 1.05 and 1.15 (icosahedral level 2, 2 and 3 ranks), 1.05 and 1.15 (user mesh)
    assert_split(serial_counts, par_counts, ranks, sources=backend == "spectral")


@pytest.mark.parametrize("ranks", [2, 3])
def test_particles_and_compare_are_independent_of_the_number_of_ranks(tmp_path, ranks):
    case = write(tmp_path, "c.toml", CIRCLE)
    counts = {}
    for label, cmd in (("p", ("particles", case, "--n", 300, "--seed", 3)),
                       ("c", ("compare", case, "--particles", "64,256", "--seeds", 2))):
        serial, counts[label, 1] = launch_counted(1, *cmd, "--out", tmp_path / f"{label}1", "--quiet")
        par, counts[label, ranks] = launch_counted(ranks, *cmd, "--out", tmp_path / f"{label}{ranks}", "--quiet")
        assert serial.returncode == 0 and par.returncode == 0, (serial.stderr, par.stderr)
    a, b = np.load(tmp_path / "p1" / "final.npz"), np.load(tmp_path / f"p{ranks}" / "final.npz")
    assert np.max(np.abs(a["points"] - b["points"])) <= 1e-12
    rows = [np.genfromtxt(tmp_path / f"c{r}" / "compare.csv", delimiter=",", names=True, dtype=None, encoding=None)
            for r in (1, ranks)]
    assert np.allclose(rows[0]["distance"], rows[1]["distance"], rtol=0, atol=1e-12)
    # particles: each rank evaluates the field at its contiguous share of the 300 particles
    # and nothing else (no overlap: exactly total / ranks); compare: the PDE's edges and the
    # particles (measured largest share 1.01 .. 1.02 of total / ranks)
    assert_split(counts["p", 1], counts["p", ranks], ranks, overlap=1.0)
    assert_split(counts["c", 1], counts["c", ranks], ranks, overlap=1.05)


def test_invalid_input_under_mpiexec_exits_2_with_one_line(tmp_path):
    case = write(tmp_path, "c.toml", CIRCLE)
    p = launch(2, "run", case, "--set", "model.beta=-1", "--out", tmp_path / "x", timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.beta" in lines[0] and ">= 0" in lines[0]
    blocker = write(tmp_path, "file", "x")
    p = launch(2, "run", case, "--out", blocker / "out", timeout=60)
    assert p.returncode == 2 and "not writable" in p.stderr


def test_a_failure_on_one_rank_ends_the_job_promptly(tmp_path):
    """Rank 0 alone fails (it cannot write the VTK series: a file named ``vtk`` is in the
    way) while rank 1 goes on into the next field evaluation: the job must end at once with
    status 1 and rank 0's message, not hang in a collective."""
    case = write(tmp_path, "c.toml", SPHERE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "vtk").write_text("in the way")
    # (a directory with a stranger's file in it needs --overwrite)
    serial = launch(1, "run", case, "--out", out, "--quiet", "--overwrite", timeout=60)
    assert serial.returncode == 1 and "run failed" in serial.stderr
    start = time.perf_counter()
    p = launch(2, "run", case, "--out", out, "--quiet", "--overwrite", timeout=60)
    assert p.returncode == 1, p.stderr
    assert "run failed on rank 0" in p.stderr and "vtk" in p.stderr
    assert time.perf_counter() - start < 15  # measured about 2 s; a hang would run into the 60 s timeout



COMPOSITE = """
[domain]
cells = 160
[model]
heads = [{beta = 6.0}, {kind = "USA", beta = 1.0, weight = -0.4}]
perceptron = {W = [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]], U = [[1, 0], [0, 1], [0.5, 0.5]], activation = "tanh"}
schedule = [{t = 0.35, heads = [{beta = 3.0, Q = [[1.0, 0.3], [0.0, 1.0]]}]}]
[initial]
kind = "modes"
modes = [{k = 2, amplitude = 0.3}, {k = 3, amplitude = 0.2, phase = 1.0}]
[solver]
t_end = 0.8
[output]
every = 0.4
plots = false
[diagnostics]
target_points = [[1, 0], [0, 1]]
"""

RANDOM = COMPOSITE.replace('heads = [{beta = 6.0}, {kind = "USA", beta = 1.0, weight = -0.4}]',
                           "random_heads = {count = 3, interval = 0.3, seed = 4, beta = 2.0}").replace(
    "schedule = [{t = 0.35, heads = [{beta = 3.0, Q = [[1.0, 0.3], [0.0, 1.0]]}]}]\n", "")


@pytest.mark.parametrize("model", ["composite", "random"])
def test_composite_models_are_independent_of_the_number_of_ranks(tmp_path, model):
    """Several heads, a perceptron, a schedule, random heads: the PDE (spectral heads
    included) and the particles under mpiexec -n 2 give the serial results."""
    case = write(tmp_path, "c.toml", COMPOSITE if model == "composite" else RANDOM)
    for cmd, extra in (("run", ("--set", 'solver.backend="spectral"')), ("run", ()), ("particles", ("--n", 200))):
        label = f"{cmd}{len(extra)}"
        serial = launch(1, cmd, case, *extra, "--out", tmp_path / f"{label}s", "--quiet")
        par = launch(2, cmd, case, *extra, "--out", tmp_path / f"{label}p", "--quiet")
        assert serial.returncode == 0 and par.returncode == 0, (serial.stderr, par.stderr)
        a, b = np.load(tmp_path / f"{label}s" / "final.npz"), np.load(tmp_path / f"{label}p" / "final.npz")
        key = "masses" if cmd == "run" else "points"
        assert float(a["t"]) == float(b["t"]) == 0.8
        assert np.max(np.abs(a[key] - b[key])) <= 1e-12, (cmd, extra, np.max(np.abs(a[key] - b[key])))
        rows = [(tmp_path / f"{label}{s}" / "diagnostics.csv").read_text().splitlines() for s in "sp"]
        assert rows[0][0] == rows[1][0] and rows[0][0].endswith("w1_target")


@pytest.mark.parametrize("manifold", ["circle", "sphere"])
def test_noise_pde_is_independent_of_the_number_of_ranks(tmp_path, manifold):
    """The implicit diffusion runs on the whole (replicated) density on every rank: the PDE
    with noise under mpiexec -n 2 gives the serial result."""
    text = (CIRCLE if manifold == "circle" else SPHERE).replace("[initial]", "noise = 0.4\n[initial]")
    case = write(tmp_path, "c.toml", text)
    serial = launch(1, "run", case, "--out", tmp_path / "s", "--quiet")
    par = launch(2, "run", case, "--out", tmp_path / "p", "--quiet")
    assert serial.returncode == 0 and par.returncode == 0, (serial.stderr, par.stderr)
    a, b = np.load(tmp_path / "s" / "final.npz"), np.load(tmp_path / "p" / "final.npz")
    assert float(a["t"]) == float(b["t"])
    assert np.max(np.abs(a["masses"] - b["masses"])) <= 1e-12

"""``particles.batch = B`` from the command line: what a batch run writes, its restart, noise
(prompt b follows the single run of seed [S, b]), MPI, and the refusals (batch < 1, a batch
too large for the memory, noise with an error-controlled integrator)."""

import csv

import numpy as np
import pytest

from _helpers import MEANFIELD, MPIEXEC, launch

pytestmark = pytest.mark.skipif(MEANFIELD is None, reason="the meanfield script is not installed")

CASE = """
[domain]
manifold = "sphere"
d = 8
[model]
beta = 4.0
[initial]
kind = "uniform"
[solver]
t_end = 2.0
integrator = "rk4"
dt = 0.1
[output]
every = 1.0
plots = false
[particles]
n = 12
batch = 20
seed = 3
"""


def write(tmp_path, text=CASE):
    path = tmp_path / "b.toml"
    path.write_text(text)
    return path


def test_a_batch_run_writes_every_prompt_and_their_statistics(tmp_path):
    out = tmp_path / "run"
    proc = launch(1, "particles", write(tmp_path), "--out", out)
    assert proc.returncode == 0, proc.stderr
    z = np.load(out / "final.npz")
    assert z["points"].shape == (20, 12, 8) and z["velocity"].shape == (20, 12, 8)
    assert np.allclose(np.linalg.norm(z["points"], axis=2), 1.0, rtol=0, atol=1e-12)
    assert z["order_parameter"].shape == (20,) and z["energy"].shape == (20,)
    # prompt b is the sample of seed [3, b]: independent prompts
    z0 = np.load(out / "snapshots" / "00000.npz")
    from meanfield.particles.sampling import sample
    x, _ = sample({"kind": "uniform"}, 8, 12, [3, 7])
    assert np.array_equal(z0["points"][7], x)
    with open(out / "diagnostics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[-1]["prompts"] == "20"
    assert float(rows[-1]["order_parameter"]) == pytest.approx(z["order_parameter"].mean(), rel=1e-12)
    assert float(rows[-1]["order_parameter_q05"]) <= float(rows[-1]["order_parameter_q95"])


def test_a_batch_run_restarts_bitwise(tmp_path):
    case = write(tmp_path)
    full, part = tmp_path / "full", tmp_path / "part"
    assert launch(1, "particles", case, "--out", full, "--set", "solver.t_end=3.0").returncode == 0
    assert launch(1, "particles", case, "--out", part).returncode == 0
    proc = launch(1, "particles", case, "--restart", part, "--set", "solver.t_end=3.0")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(full / "final.npz")["points"], np.load(part / "final.npz")["points"])


@pytest.mark.parametrize("setting, key", [
    ("particles.batch=0", "particles.batch"),
    ("particles.batch=1000000000", "particles.batch"),  # far beyond the memory
])
def test_batch_refusals_exit_2_naming_the_key(tmp_path, setting, key):
    proc = launch(1, "particles", write(tmp_path), "--set", setting)
    assert proc.returncode == 2 and key in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed")
def test_a_batch_is_split_across_mpi_ranks_by_prompt(tmp_path):
    """Each rank runs its share of the prompts; the files are those of the serial run."""
    case = write(tmp_path)
    finals = []
    for ranks in (1, 3):
        out = tmp_path / f"r{ranks}"
        proc = launch(ranks, "particles", case, "--out", out)
        assert proc.returncode == 0, proc.stderr
        finals.append(np.load(out / "final.npz"))
        assert finals[-1]["points"].shape == (20, 12, 8)
    assert np.abs(finals[0]["points"] - finals[1]["points"]).max() <= 1e-14
    assert np.allclose(finals[0]["order_parameter"], finals[1]["order_parameter"], rtol=0, atol=1e-14)
    proc = launch(3, "particles", case, "--set", "particles.batch=2")
    assert proc.returncode == 2 and "particles.batch" in proc.stderr, proc.stderr


def test_a_noisy_batch_follows_the_single_runs_of_its_seeds(tmp_path):
    """model.noise = 0.3: prompt b of the batch (seed [3, b]) is the single noisy run with the
    sample and the Brownian normals of the seed [3, b], to round-off."""
    from meanfield.dynamics.model import VelocityModel
    from meanfield.fields.attention import AttentionModel
    from meanfield.particles.sampling import sample
    from meanfield.particles.system import ParticleState, ParticleSystem
    from meanfield.pde.solver import make_velocity

    out = tmp_path / "run"
    proc = launch(1, "particles", write(tmp_path), "--out", out, "--set", "model.noise=0.3")
    assert proc.returncode == 0, proc.stderr
    z = np.load(out / "final.npz")
    velocity = make_velocity(VelocityModel(8, AttentionModel(d=8, beta=4.0)), "direct")
    for b in (0, 13):
        x, w = sample({"kind": "uniform"}, 8, 12, [3, b])
        state = ParticleState.create(x, w)
        ParticleSystem(velocity, integrator="rk4", dt=0.1, noise=0.3, seed=[3, b]).advance(state, 2.0)
        assert np.abs(state.x - z["points"][b]).max() <= 1e-13
    proc = launch(1, "particles", write(tmp_path), "--set", "model.noise=0.3", "--set", "solver.integrator=\"dopri5\"",
                  "--set", "solver.dt=\"auto\"")
    assert proc.returncode == 2 and "model.noise" in proc.stderr, proc.stderr

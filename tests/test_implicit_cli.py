"""``solver.time_integrator = "implicit"`` from case files: a run restarts bitwise (the step
controller's state is in the snapshots), and what it cannot do exits 2 naming the key."""

import numpy as np
import pytest

from _helpers import MEANFIELD, MPIEXEC, launch

pytestmark = pytest.mark.skipif(MEANFIELD is None, reason="the meanfield script is not installed")

CASE = """
[domain]
cells = 128
[model]
kind = "USA"
beta = 4.0
shift = true
[initial]
kind = "modes"
modes = [{k = 3, amplitude = 0.05}, {k = 2, amplitude = 0.03, phase = 1.0}]
[solver]
t_end = 6.0
scheme = "upwind"
time_integrator = "implicit"
[output]
every = 1.0
plots = false
"""


def write(tmp_path, text=CASE):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_an_implicit_run_restarts_bitwise(tmp_path):
    case = write(tmp_path)
    full, part = tmp_path / "full", tmp_path / "part"
    proc = launch(1, "run", case, "--out", full)
    assert proc.returncode == 0, proc.stderr
    assert "dt_next" in np.load(full / "final.npz")
    assert launch(1, "run", case, "--out", part, "--set", "solver.t_end=3.0").returncode == 0
    proc = launch(1, "run", case, "--restart", part)
    assert proc.returncode == 0, proc.stderr
    a, b = np.load(full / "final.npz"), np.load(part / "final.npz")
    assert np.array_equal(a["density"], b["density"]) and int(a["steps"]) == int(b["steps"])


def test_an_implicit_muscl_run_restarts_bitwise_and_says_how_it_steps(tmp_path):
    case = write(tmp_path, CASE.replace('scheme = "upwind"', 'scheme = "muscl"'))
    full, part = tmp_path / "full", tmp_path / "part"
    proc = launch(1, "run", case, "--out", full)
    assert proc.returncode == 0, proc.stderr
    assert "scheme muscl" in proc.stdout + proc.stderr and "linearly implicit" in proc.stdout + proc.stderr
    assert launch(1, "run", case, "--out", part, "--set", "solver.t_end=3.0").returncode == 0
    assert launch(1, "run", case, "--restart", part).returncode == 0
    a, b = np.load(full / "final.npz"), np.load(part / "final.npz")
    assert np.array_equal(a["density"], b["density"]) and int(a["steps"]) == int(b["steps"])
    assert abs(a["density"] @ np.full(128, 2 * np.pi / 128) - 1.0) < 1e-12 and a["density"].min() >= 0


@pytest.mark.parametrize("settings, key", [
    # the pseudo-spectral scheme ran its own RK4 and ignored the implicit stepper without a word
    (["solver.scheme=\"spectral\""], "solver.time_integrator"),
    (["solver.scheme=\"spectral\"", "solver.time_integrator=\"euler\""], "solver.time_integrator"),
    # the causal mean field raised KeyError: 'implicit'
    (["model.mask=\"causal\"", "domain.positions=4"], "solver.time_integrator"),
    (["solver.step_rtol=0"], "solver.step_rtol"),
    (["solver.step_atol=2"], "solver.step_atol"),
    (["solver.time_integrator=\"implicitt\""], "solver.time_integrator"),
])
def test_implicit_refusals_exit_2_naming_the_key(tmp_path, settings, key):
    args = [word for setting in settings for word in ("--set", setting)]
    proc = launch(1, "run", write(tmp_path), "--out", tmp_path / "out", *args)
    assert proc.returncode == 2 and key in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed")
def test_implicit_under_mpiexec_is_refused_with_a_reason(tmp_path):
    proc = launch(2, "run", write(tmp_path))
    assert proc.returncode == 2 and "solver.time_integrator" in proc.stderr, proc.stderr


def test_an_implicit_sphere_run_with_noise_runs_and_restarts_bitwise(tmp_path):
    """Noise on the sphere under the implicit stepper (the diffusion split after each
    transport solve) was refused; now it runs, keeps mass and positivity, and restarts
    bitwise."""
    text = CASE.replace("cells = 128", 'manifold = "sphere"\nmesh = "icosahedral:2"').replace(
        'modes = [{k = 3, amplitude = 0.05}, {k = 2, amplitude = 0.03, phase = 1.0}]',
        'modes = [{l = 3, m = 1, amplitude = 0.05}, {l = 2, m = 0, amplitude = 0.03}]').replace(
        'shift = true', 'shift = true\nnoise = 0.2').replace('scheme = "upwind"', 'scheme = "muscl"').replace(
        "t_end = 6.0", "t_end = 2.0").replace("every = 1.0", "every = 0.5")
    case = write(tmp_path, text)
    full, part = tmp_path / "full", tmp_path / "part"
    proc = launch(1, "run", case, "--out", full)
    assert proc.returncode == 0, proc.stderr
    assert launch(1, "run", case, "--out", part, "--set", "solver.t_end=1.0").returncode == 0
    assert launch(1, "run", case, "--restart", part).returncode == 0
    a, b = np.load(full / "final.npz"), np.load(part / "final.npz")
    assert np.array_equal(a["density"], b["density"]) and a["density"].min() >= 0

"""The command line explains itself: usage on a bare ``meanfield``, ``--version``, examples in
the help pages, and progress lines in a job log (stderr not a terminal)."""

import os
import subprocess
from pathlib import Path

import pytest

from _helpers import MEANFIELD

pytestmark = pytest.mark.skipif(MEANFIELD is None, reason="the meanfield script is not installed")
REPO = Path(__file__).resolve().parents[1]


def call(*args, env=None):
    return subprocess.run([MEANFIELD, *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def test_bare_meanfield_prints_the_usage_and_exits_2():
    proc = call()
    assert proc.returncode == 2 and "usage: meanfield" in proc.stderr and "run" in proc.stderr
    assert "examples:" in proc.stderr


def test_version_and_help_pages():
    proc = call("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("meanfield ")
    for command in ("run", "particles", "compare"):
        proc = call(command, "--help")
        assert proc.returncode == 0 and "examples:" in proc.stdout or "example:" in proc.stdout
        assert "docs/" in proc.stdout


def test_a_piped_run_logs_progress_lines(tmp_path):
    env = dict(os.environ, MEANFIELD_PROGRESS_SECONDS="0.2")
    proc = subprocess.run([MEANFIELD, "run", str(REPO / "cases" / "circle_sa_clusters.toml"), "--out", str(tmp_path / "r"),
                           "--set", "output.plots=false", "--set", "solver.t_end=20"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("progress: t=")]
    assert len(lines) >= 3, proc.stdout
    assert "left" in lines[-1] and "step" in lines[-1]


@pytest.mark.parametrize("case, command", [("circle_sa_clusters.toml", "run"), ("sphere_usa.toml", "run"),
                                           ("authors_sphere.toml", "particles"), ("circle_causal_clusters.toml", "run")])
def test_movies_have_one_frame_per_snapshot(tmp_path, case, command):
    from PIL import Image

    out = tmp_path / "r"
    extra = ["--set", "domain.mesh=\"icosahedral:2\""] if case == "sphere_usa.toml" else []
    if case == "circle_causal_clusters.toml":
        extra = ["--set", "domain.positions=4", "--set", "domain.cells=64"]
    proc = subprocess.run([MEANFIELD, command, str(REPO / "cases" / case), "--out", str(out), "--set",
                           "output.movie=true", "--set", "output.plots=false", "--set", "solver.t_end=1",
                           "--set", "output.every=0.25", *extra], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out / "movie.gif") as gif:
        assert gif.n_frames == 5 and gif.size[0] >= 400 and gif.size[1] >= 200


def test_pictures_are_not_blank_and_the_modes_follow_the_theory(tmp_path):
    """A circle run of one head draws modes.png (the amplitudes against e^{sigma_k t}); every
    PNG it writes reads back with real contrast (pixel spread)."""
    import numpy as np
    from PIL import Image

    out = tmp_path / "r"
    proc = subprocess.run([MEANFIELD, "run", str(REPO / "cases" / "circle_sa_clusters.toml"), "--out", str(out),
                           "--set", "solver.t_end=8"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr  # (clusters form at t ~ 6: clusters.png has tracks)
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["clusters.png", "density.png", "diagnostics.png", "modes.png"], names
    for path in out.glob("*.png"):
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 500 and pixels.std() > 10, path.name

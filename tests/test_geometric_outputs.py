"""Geometric snapshots (``output.per_decade``, ``output.first``) for long metastable runs:
the times, the refusals naming the key, a bitwise restart from a geometric snapshot, the
step budget that neither counts landing steps nor predicts for the implicit stepper, the
tracker's ``diagnostics.track_radius``, and the symmetric-log time axes of the pictures."""

import math

import numpy as np
import pytest

import meanfield as mf

from _helpers import MEANFIELD, launch
from meanfield.io.case import CaseError, output_times, resolve_case
from meanfield.pde.health import StalledRunError, StepBudget

CASE = """
[domain]
cells = 128
[model]
kind = "USA"
beta = 4.0
shift = true
noise = 0.05
[initial]
kind = "modes"
modes = [{k = 3, amplitude = 0.05}, {k = 2, amplitude = 0.03, phase = 1.0}]
[solver]
t_end = 300.0
scheme = "upwind"
time_integrator = "implicit"
[output]
per_decade = 10
first = 0.1
plots = false
"""


def test_geometric_times():
    times = output_times(300.0, per_decade=10, first=0.1)
    assert times[0] == 0.0 and times[1] == 0.1 and times[-1] == 300.0
    ratios = np.diff(np.log10(times[1:-1]))
    assert np.allclose(ratios, 0.1, atol=1e-12) and len(times) == 2 + 35  # 0.1 .. 10^2.4, then 300
    # decades land exactly (12 digits), and a t_end on the grid is not doubled
    assert times[11] == 1.0 and times[21] == 10.0 and times[31] == 100.0
    assert output_times(100.0, per_decade=10, first=0.1) == times[:32]
    # extending t_end keeps every earlier output time (a restart continues)
    assert output_times(3000.0, per_decade=10, first=0.1)[:-1][:36] == times[:36]


@pytest.mark.parametrize("output, key", [
    ({"per_decade": 10, "every": 1.0}, "output.every"),
    ({"first": 0.1}, "output.first"),
    ({"per_decade": 10, "first": 400.0}, "output.first"),
    ({"per_decade": 0}, "output.per_decade"),
    ({"per_decade": 2.5}, "output.per_decade"),
    ({"per_decade": 10, "first": -1.0}, "output.first"),
    ({"per_decade": 1000, "first": 1e-300}, "output.per_decade"),  # 3e5 snapshots
])
def test_bad_output_keys_name_the_key(output, key):
    with pytest.raises(CaseError) as err:
        resolve_case({"solver": {"t_end": 300.0}, "output": output})
    assert err.value.key == key


@pytest.mark.parametrize("radius", [0.0, 4.0, "wide"])
def test_bad_track_radius_names_the_key(radius):
    with pytest.raises(CaseError) as err:
        resolve_case({"diagnostics": {"track_radius": radius}})
    assert err.value.key == "diagnostics.track_radius"


def test_default_first_output():
    assert resolve_case({"solver": {"t_end": 300.0}, "output": {"per_decade": 5}})["output"]["first"] == 0.01
    assert resolve_case({"solver": {"t_end": 0.05}, "output": {"per_decade": 5}})["output"]["first"] == 0.005
    assert resolve_case({"solver": {"t_end": 2.0}})["output"]["every"] == 0.1  # uniform as before


class _State:
    def __init__(self, t, steps):
        self.t, self.steps = t, steps


def test_step_budget_leaves_out_landing_steps_and_can_skip_the_prediction():
    # landing steps of 1e-3 (outputs close together) predict nothing
    budget = StepBudget(1e4, 1000)
    for k in range(50):
        budget.update(_State(1e-3 * (k + 1), k + 1), 1e-3, landed=True)
    # the same steps not landing predict 1e7 steps: a stall
    with pytest.raises(StalledRunError, match="would take about"):
        for k in range(50):
            budget.update(_State(1e-3 * (k + 1), k + 1), 1e-3)
    # predict=False: only the steps done count
    budget = StepBudget(1e4, 1000, predict=False)
    for k in range(50):
        budget.update(_State(1e-3 * (k + 1), k + 1), 1e-3)
    with pytest.raises(StalledRunError, match="more than solver.max_steps"):
        budget.update(_State(1.0, 1001), 1e-3)


pytestmark_cli = pytest.mark.skipif(MEANFIELD is None, reason="the meanfield script is not installed")


@pytestmark_cli
def test_a_geometric_implicit_run_restarts_bitwise_and_tracks_its_merger(tmp_path):
    """Three clusters from modes 3 and 2 at beta 4; the closest pair merges at t ~ 30-60.
    With geometric outputs the implicit stepper runs to t = 300 (the step budget does not
    read the short landing steps near t = 0.1 as a stall); a run of t_end = 10 continued
    to 300 ends bitwise equal and with the same cluster tables."""
    case = tmp_path / "c.toml"
    case.write_text(CASE)
    full, part = tmp_path / "full", tmp_path / "part"
    proc = launch(1, "run", case, "--out", full)
    assert proc.returncode == 0, proc.stderr
    assert launch(1, "run", case, "--out", part, "--set", "solver.t_end=10.0").returncode == 0
    proc = launch(1, "run", case, "--restart", part)
    assert proc.returncode == 0, proc.stderr
    a, b = np.load(full / "final.npz"), np.load(part / "final.npz")
    assert np.array_equal(a["density"], b["density"]) and int(a["steps"]) == int(b["steps"])
    assert (full / "clusters.csv").read_text() == (part / "clusters.csv").read_text()
    events = (full / "clusters_events.csv").read_text()
    assert events == (part / "clusters_events.csv").read_text() and "merge," in events
    snaps = sorted((full / "snapshots").glob("*.npz"))
    assert len(snaps) == len(output_times(300.0, per_decade=10, first=0.1))


@pytestmark_cli
def test_a_restart_that_moves_the_geometric_times_is_refused(tmp_path):
    case = tmp_path / "c.toml"
    case.write_text(CASE)
    part = tmp_path / "part"
    assert launch(1, "run", case, "--out", part, "--set", "solver.t_end=20.0").returncode == 0
    proc = launch(1, "run", case, "--restart", part, "--set", "output.per_decade=20")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


def test_geometric_time_axes(tmp_path):
    from meanfield.geometry.mesh import CircleMesh
    from meanfield.io import plots

    times = output_times(1e4, per_decade=10, first=0.01)
    assert plots.geometric_times(times) and not plots.geometric_times(output_times(10.0, every=0.5))
    mesh = CircleMesh(64)
    snaps = [(t, 1 / (2 * np.pi) * (1 + 0.5 * np.cos(mesh.angles - math.log1p(t)))) for t in times]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opened = []
    real_savefig = plt.Figure.savefig

    figures = []

    def spy(fig, *args, **kwargs):
        opened.append([ax.get_xscale() for ax in fig.axes])
        figures.append(fig)
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        plots.plot_spacetime(tmp_path / "density.png", mesh, snaps)
        rows = [{"t": t, "energy": 1.0, "order_parameter": 0.1, "n_clusters": 1, "max_density": 1.0,
                 "min_density": 0.1, "mass": 1.0} for t in times]
        plots.plot_diagnostics(tmp_path / "diagnostics.png", rows)
        # modes.png drew a linear t axis (the growth squeezed into the first pixels) and its
        # dashed e^{sigma t} overflowed to inf at t = 2e4; the autoscale opened negative decades
        plots.plot_modes(tmp_path / "modes.png", mesh, snaps, mf.AttentionModel(d=2, beta=4.0), label="case, SA")
    finally:
        plt.Figure.savefig = real_savefig
    assert opened[0][0] == "symlog" and "symlog" in opened[1] and opened[2][0] == "symlog"
    ax = figures[2].axes[0]
    assert ax.get_xlim()[0] == 0.0 and ax.get_title().startswith("case, SA")
    dashed = [line.get_ydata() for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert dashed and all(np.all(np.isfinite(y)) and y.max() < 1e3 * ax.get_ylim()[1] for y in dashed)


def test_progress_share_of_a_geometric_run_is_measured_in_log_time():
    from meanfield.run import _ProgressLog

    log = _ProgressLog(2e4, interval=1.0, first=0.01)
    assert log.fraction(0.0) == 0.0 and log.fraction(0.01) == 0.0
    assert log.fraction(2e4) == pytest.approx(1.0)
    assert log.fraction(math.sqrt(0.01 * 2e4)) == pytest.approx(0.5)  # the middle decade, not t = 1e4
    uniform = _ProgressLog(2e4, interval=1.0)
    assert uniform.fraction(1e4) == 0.5

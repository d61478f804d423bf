"""Runs write the clusters matched across snapshots (``clusters.csv``, ``clusters_events.csv``,
``clusters.png``), and a killed-and-restarted run continues the table and its merge events
without duplicates (byte-identical to the uninterrupted run's)."""

import numpy as np
import pytest

from _helpers import MEANFIELD, launch

pytestmark = pytest.mark.skipif(MEANFIELD is None, reason="the meanfield script is not installed")

CASE = """
[domain]
cells = 128
[model]
kind = "USA"
beta = 2.0
shift = true
[initial]
kind = "vmf"
centers = [[1, 0], [0.5, 0.866], [-1, 0.2]]
kappas = [30.0, 30.0, 30.0]
[solver]
t_end = 6.0
[output]
every = 1.0
plots = false
"""


def test_clusters_csv_continues_across_a_restart_without_duplicates(tmp_path):
    case = tmp_path / "c.toml"
    case.write_text(CASE)
    full, part = tmp_path / "full", tmp_path / "part"
    proc = launch(1, "run", case, "--out", full, "--set", "output.plots=true")
    assert proc.returncode == 0, proc.stderr
    assert (full / "clusters.csv").is_file() and (full / "clusters.png").is_file()
    events = (full / "clusters_events.csv").read_text().splitlines()
    # measured: the clusters 60 degrees apart merge between t = 3 and 4 (masses 0.302 + 0.312)
    assert len(events) == 2 and events[1].startswith("merge,4.0,3.0,")
    assert launch(1, "run", case, "--out", part, "--set", "solver.t_end=3.0").returncode == 0
    proc = launch(1, "run", case, "--restart", part)
    assert proc.returncode == 0, proc.stderr
    for name in ("clusters.csv", "clusters_events.csv"):
        assert (part / name).read_bytes() == (full / name).read_bytes(), name
    assert np.array_equal(np.load(part / "final.npz")["density"], np.load(full / "final.npz")["density"])

"""The cost and memory estimate (meanfield.budget): against measured peak RSS, refusals of
huge problems without allocating them, the override, the machine's available memory."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import pytest

from meanfield import budget
from meanfield.io.case import CaseError, load_case, resolve_case

GIB = 1 << 30


def _rss() -> int:
    """Current resident bytes of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- estimate against the real thing --------------------------------------------------------
_MEASURE = r"""
import json, sys, tempfile
from meanfield.io.case import resolve_case
from meanfield.run import run_case
case = resolve_case(json.loads(sys.argv[1]))
with tempfile.TemporaryDirectory() as out:
    run_case(case, out_dir=out)
# VmHWM: the peak of this process image (getrusage's ru_maxrss is inherited across execve
# from the forking pytest worker, whose own RSS depends on the tests it ran before)
print(int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024)
"""

SHORT = {"solver": {"t_end": 0.02, "dt_max": 0.01}, "output": {"every": 0.01, "plots": False}}


@pytest.mark.parametrize("domain", [{"manifold": "circle", "cells": 200_000},
                                    {"manifold": "sphere", "mesh": "icosahedral:5"}], ids=["circle", "sphere"])
def test_estimate_bounds_measured_peak_rss(domain):
    raw = {**SHORT, "domain": domain}
    est = budget.estimate(resolve_case(raw), "run")
    proc = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(raw)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = int(proc.stdout.split()[-1])
    # measured 1.05 .. 1.3 over the calibration sizes: never far below, within 1.5
    assert 0.9 * measured <= est.memory <= 1.5 * measured, (est.memory / 2**20, measured / 2**20)


def test_estimate_counts_without_building():
    case = resolve_case({"domain": {"manifold": "sphere", "mesh": "icosahedral:7", "edge_points": 2},
                         "solver": {"t_end": 1.0}, "output": {"every": 0.25}})
    est = budget.estimate(case, "run")
    assert (est.cells, est.edges, est.edge_points, est.snapshots) == (327_680, 491_520, 983_040, 5)
    assert est.key == "domain.mesh" and est.backend == "spectral"
    assert 0.5 * GIB < est.memory < 3 * GIB and 0 < est.seconds_per_step < 10
    line = budget.describe(est)
    assert "327,680 cells" in line and "983,040 flux points" in line and "per step (spectral)" in line
    # more ranks on one machine: more memory in all (replicated mesh), less per rank
    two = budget.estimate(case, "run", ranks=2)
    assert two.memory > est.memory and two.memory_per_rank < est.memory
    assert "on 2 ranks" in budget.describe(two)


# -- refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, key", [("domain.cells=100000000", "domain.cells"),
                                          ("domain.mesh=\"icosahedral:10\"", "domain.mesh")])
def test_huge_case_refused_without_allocating(tmp_path, setting, key):
    path = tmp_path / "huge.toml"
    path.write_text('[domain]\nmanifold = "%s"\n' % ("circle" if key == "domain.cells" else "sphere"))
    before = _rss()
    case = load_case(path, [setting])
    est = budget.estimate(case, "run")
    with pytest.raises(CaseError) as info:
        budget.check(est, 16 * GIB, source=str(path))
    assert _rss() - before < 50 * 2**20  # nothing of the size of the problem was allocated
    err = info.value
    assert err.key == key and err.source == str(path)
    assert "GiB" in err.reason and "--max-memory" in err.reason and "inf" in err.reason
    assert "MPI ranks" in err.reason and "do not help" in err.reason
    if key == "domain.mesh":
        assert "20,971,520 cells" in err.reason and "\"icosahedral:9\" fits" in err.reason
    else:
        assert "100,000,000 cells" in err.reason and "at most" in err.reason
    # the largest value it proposes fits indeed
    fit = est.fits(16 * GIB)
    again = f"domain.cells={fit}" if key == "domain.cells" else f"domain.mesh=\"icosahedral:{fit}\""
    smaller = load_case(path, [again])
    budget.check(budget.estimate(smaller, "run"), 16 * GIB)


def test_override_and_default_limit(monkeypatch):
    est = budget.estimate(resolve_case({"domain": {"manifold": "sphere", "mesh": "icosahedral:10"}}), "run")
    budget.check(est, math.inf)  # --max-memory inf: no check
    budget.check(est, budget.parse_memory_limit("inf"))
    budget.check(est, budget.parse_memory_limit("1000"))  # a larger limit
    monkeypatch.setattr(budget, "available_memory", lambda: 4 * GIB)
    with pytest.raises(CaseError, match="available on this machine"):
        budget.check(est)
    with pytest.raises(CaseError, match="allowed by --max-memory"):
        budget.check(est, budget.parse_memory_limit("2.5"))
    monkeypatch.setattr(budget, "available_memory", lambda: None)  # unknown: nothing checked
    budget.check(est)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "lots", ""])
def test_memory_limit_flag_rejects_bad_values(text):
    with pytest.raises(CaseError) as info:
        budget.parse_memory_limit(text)
    assert info.value.source == "--max-memory"


def test_parse_memory_limit_gib():
    assert budget.parse_memory_limit("2") == 2 * GIB
    assert budget.parse_memory_limit(0.5) == 0.5 * GIB
    assert budget.parse_memory_limit("INF") == math.inf


def test_particles_and_compare_keys():
    many = resolve_case({"domain": {"manifold": "circle"}, "particles": {"n": 100_000_000}})
    est = budget.estimate(many, "particles")
    assert est.key == "particles.n" and est.particles == 100_000_000
    with pytest.raises(CaseError) as info:
        budget.check(est, 8 * GIB)
    assert info.value.key == "particles.n" and "fewer particles" in info.value.reason
    # a few particles on a huge mesh: the mesh is the problem (it is built for the pictures)
    mesh = budget.estimate(resolve_case({"domain": {"manifold": "sphere", "mesh": "icosahedral:10"},
                                         "particles": {"n": 100}}), "particles")
    assert mesh.key == "domain.mesh"
    # the --n of the command line is the n of the estimate
    assert budget.estimate(many, "particles", n=1000).particles == 1000
    comp = budget.estimate(resolve_case({"domain": {"manifold": "circle", "cells": 256},
                                         "compare": {"particles": [100, 50_000_000]}}), "compare")
    assert comp.key == "compare.particles" and comp.particles == 50_000_000
    with pytest.raises(CaseError) as info:
        budget.check(comp, 4 * GIB)
    assert info.value.key == "compare.particles"


def test_compare_dense_transport_refused_before_the_run():
    case = resolve_case({"domain": {"manifold": "sphere", "mesh": "icosahedral:4"},
                         "compare": {"particles": [256, 8192], "metric": "w1"}})
    est = budget.estimate(case, "compare")
    with pytest.raises(CaseError) as info:
        budget.check(est, math.inf)  # not a matter of memory limits
    assert info.value.key == "compare.metric" and "5,120 x 8,192" in info.value.reason
    ok = resolve_case({"domain": {"manifold": "sphere", "mesh": "icosahedral:4"},
                       "compare": {"particles": [256, 8192], "metric": "mmd"}})
    budget.check(budget.estimate(ok, "compare"), math.inf)


def test_backend_auto_resolved_like_make_field():
    small = resolve_case({"domain": {"manifold": "circle", "cells": 64}})
    big = resolve_case({"domain": {"manifold": "circle", "cells": 100_000}})
    assert budget.estimate(small, "run").backend == "direct"
    assert budget.estimate(big, "run").backend == "spectral"
    direct = resolve_case({"domain": {"manifold": "circle", "cells": 100_000}, "solver": {"backend": "direct"}})
    e = budget.estimate(direct, "run")
    assert e.backend == "direct" and e.seconds_per_step > 3 * 1e10 * budget.PAIR_SECONDS * 0.99


def test_mesh_file_cells(tmp_path):
    pv = pytest.importorskip("pyvista")
    from meanfield.geometry.sphere import load_icosahedral

    m = load_icosahedral(2)
    path = tmp_path / "ico2.vtp"
    pv.PolyData.from_regular_faces(m.vertices, m.triangles).save(path)
    case = resolve_case({"domain": {"manifold": "sphere", "mesh": str(path)}})
    est = budget.estimate(case, "run")
    assert est.cells == 320 and est.key == "domain.mesh" and "ico2.vtp" in budget.describe(est)
    assert budget.estimate(case, "run", cells=320).memory == est.memory


# -- the machine ---------------------------------------------------------------------------
def test_available_memory_is_positive_and_below_meminfo():
    avail = budget.available_memory()
    assert avail is not None and avail > 0
    with open("/proc/meminfo") as fh:
        total = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemTotal:"))
    assert avail <= total


def test_cgroup_limits_v1_and_v2(tmp_path):
    proc = tmp_path / "cgroup"
    # v2: the limit of the cgroup or a parent, minus the usage; "max" is no limit
    root = tmp_path / "fs"
    (root / "job" / "step").mkdir(parents=True)
    (root / "memory.max").write_text("max\n")
    (root / "job" / "memory.max").write_text(str(4 * GIB))
    (root / "job" / "memory.current").write_text(str(1 * GIB))
    (root / "job" / "step" / "memory.max").write_text("max\n")
    (root / "job" / "step" / "memory.current").write_text(str(GIB // 2))
    proc.write_text("0::/job/step\n")
    assert budget._cgroup_room(proc, root) == 3 * GIB
    # v1: memory.limit_in_bytes (a huge number means none)
    v1 = tmp_path / "v1"
    (v1 / "memory" / "grp").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "grp" / "memory.limit_in_bytes").write_text(str(2 * GIB))
    (v1 / "memory" / "grp" / "memory.usage_in_bytes").write_text(str(GIB // 4))
    proc.write_text("4:memory:/grp\n3:cpu:/\n")
    assert budget._cgroup_room(proc, v1) == 2 * GIB - GIB // 4
    proc.write_text("4:memory:/\n")
    assert budget._cgroup_room(proc, v1) is None
    assert budget._cgroup_room(tmp_path / "missing", v1) is None


# -- large icosahedral levels say what they do ------------------------------------------------
def test_generating_a_large_level_is_logged(tmp_path, monkeypatch, caplog):
    from meanfield.geometry import sphere

    monkeypatch.setenv("MEANFIELD_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="meanfield"):
        v, t = sphere.load_icosahedral_arrays(7)
    assert t.shape == (327_680, 3)
    text = caplog.text
    assert "generating icosahedral level 7 (327,680 cells" in text
    assert f"cached in {tmp_path / 'icosahedral_7.npz'}" in text and "MB" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="meanfield"):
        sphere.load_icosahedral_arrays(7)  # from the cache: quiet
    assert "generating" not in caplog.text
    assert sphere.icosahedral_counts(10) == (20_971_520, 31_457_280, 10_485_762)


def test_unreadable_mesh_file_is_a_case_error(tmp_path):
    path = tmp_path / "broken.vtp"
    path.write_text("not a mesh")
    case = resolve_case({"domain": {"manifold": "sphere", "mesh": str(path)}})
    with pytest.raises(CaseError) as info:
        budget.estimate(case, "run", source="case.toml")
    assert info.value.key == "domain.mesh" and info.value.source == "case.toml"


def test_many_snapshots_name_output_every():
    case = resolve_case({"domain": {"manifold": "circle", "cells": 100_000}, "solver": {"t_end": 10.0},
                         "output": {"every": 1e-4}})
    est = budget.estimate(case, "run")
    assert est.snapshots == 100_001 and est.key == "output.every"
    with pytest.raises(CaseError) as info:
        budget.check(est, 8 * GIB)
    assert info.value.key == "output.every" and "100,001 snapshots" in info.value.reason
    larger = resolve_case({**case, "output": {"every": est.fits(8 * GIB)}})
    budget.check(budget.estimate(larger, "run"), 8 * GIB)


def test_check_with_a_broadcast_available_memory(monkeypatch):
    est = budget.estimate(resolve_case({"domain": {"manifold": "sphere", "mesh": "icosahedral:9"}}), "run", ranks=2)
    monkeypatch.setattr(budget, "available_memory", lambda: 1000 * GIB)  # not consulted
    with pytest.raises(CaseError, match="available on this machine") as info:
        budget.check(est, None, "case.toml", available=2 * GIB)
    assert "on 2 MPI ranks" in info.value.reason
    budget.check(est, None, "case.toml", available=1000 * GIB)

"""The ParaView series of a sphere run (``vtk/*.vtp``, ``solution.pvd``) gets the permissions
of a plainly created file (``0o666`` less the umask), like every other output, so colleagues
on a shared file system can open it (issue 10, item 6)."""

from __future__ import annotations

import os
import stat

import pytest

from meanfield.io import output
from meanfield.io.case import resolve_case
from meanfield.run import run_case

CASE = {
    "domain": {"manifold": "sphere", "mesh": "icosahedral:2"},
    "model": {"kind": "SA", "beta": 1.0},
    "initial": {"kind": "modes", "modes": [{"l": 2, "m": 0, "amplitude": 0.3}]},
    "solver": {"t_end": 0.02, "backend": "direct"},
    "output": {"every": 0.01, "plots": False},
}


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_vtk_series_follows_umask(tmp_path, monkeypatch, umask):
    monkeypatch.setattr(output, "_UMASK", None)  # the writers read the umask once per process
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        run_case(resolve_case(CASE), out_dir=out)
        plain = out / "plain"
        plain.write_text("x")
    finally:
        os.umask(old)
    want = _mode(plain)
    assert want == 0o666 & ~umask
    vtps = sorted((out / "vtk").glob("*.vtp"))
    assert len(vtps) == 3
    modes = {p.name: _mode(p) for p in [*vtps, out / "solution.pvd", out / "snapshots" / "00000.npz"]}
    assert modes == dict.fromkeys(modes, want), f"want {want:o}, got " + str({k: f"{v:o}" for k, v in modes.items()})

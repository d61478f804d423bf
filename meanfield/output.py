"""Writers for a run directory; every file is written atomically (temporary file, then
``os.replace``), so a killed run never leaves a half-written file.

Layout (see ``docs/outputs.md``)::

    DIR/case.toml            the resolved case
    DIR/diagnostics.csv      one row per snapshot
    DIR/snapshots/NNNNN.npz  t, points, masses, areas, density, velocity, ...
    DIR/final.npz            the state at t_end
    DIR/*.png                pictures
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "RunWriter"]


def _umask() -> int:
    """The process umask (read once; from /proc where possible, since setting it to read it
    back is not thread safe)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status") as fh:
                _UMASK = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
        except (OSError, StopIteration, ValueError, IndexError):
            with _UMASK_LOCK:
                _UMASK = os.umask(0o022)
                os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None
_UMASK_LOCK = threading.Lock()


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    On any error the temporary file is removed and ``path`` keeps its old content. The
    new file gets the permissions of a plainly created one (``0o666`` less the umask),
    not the ``0o600`` of the temporary file.
    """
    path = Path(path)
    binary = isinstance(data, (bytes, bytearray, memoryview))
    if not binary and not isinstance(data, str):
        raise TypeError(f"atomic_write needs bytes or str, got {type(data).__name__}")
    mode = "wb" if binary else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})) as fh:
            fh.write(data)
            fh.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class RunWriter:
    """Owns the output directory of one run."""

    def __init__(self, out_dir):
        self.dir = Path(out_dir)
        self.snap_dir = self.dir / "snapshots"
        self.rows: list[dict] = []

    #: What a run writes; a new run into the same directory removes the previous run's.
    PRODUCTS = ("snapshots/*.npz", "vtk/*.vtp", "final.npz", "last_good.npz", "*.pvd", "*.png", "diagnostics.csv")

    def prepare(self, fresh: bool = True) -> None:
        """Create the directory and check it is writable (before the run starts). With
        ``fresh``, files a previous run left there (:attr:`PRODUCTS`) are removed so no
        stale snapshot survives; nothing else in the directory is touched."""
        self.snap_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.dir, self.snap_dir):
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        if fresh:
            for pattern in self.PRODUCTS:
                for old in self.dir.glob(pattern):
                    old.unlink()

    def write_case(self, case_data: dict) -> None:
        import tomli_w

        atomic_write(self.dir / "case.toml", tomli_w.dumps(case_data))

    def write_snapshot(self, index: int, arrays: dict, row: dict) -> Path:
        path = self.snap_dir / f"{index:05d}.npz"
        atomic_write(path, npz_bytes(**arrays))
        self.rows.append(row)
        self.write_diagnostics()
        return path

    def write_diagnostics(self) -> None:
        if not self.rows:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write(self.dir / "diagnostics.csv", buf.getvalue())

    def write_npz(self, name: str, arrays: dict) -> Path:
        path = self.dir / name
        atomic_write(path, npz_bytes(**arrays))
        return path

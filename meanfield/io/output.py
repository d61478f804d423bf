"""Writers for a run directory; every file is written atomically (temporary file, then
``os.replace``), so a killed run never leaves a half-written file.

Layout (see ``docs/outputs.md``)::

    DIR/case.toml            the resolved case
    DIR/diagnostics.csv      one row per snapshot
    DIR/snapshots/NNNNN.npz  t, points, masses, areas, density, velocity, ...
    DIR/final.npz            the state at t_end
    DIR/*.png                pictures

:func:`read_run` reads a directory back for ``--restart``: the last snapshot index ``k``
such that every product of the indices ``0..k`` is complete, and the diagnostics rows up
to ``k``; :meth:`RunWriter.resume` removes what lies beyond ``k`` and continues, or
:meth:`RunWriter.copy_snapshots` copies ``0..k`` into another directory (``--out``).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "RunWriter", "SavedRun", "RestartError", "read_run", "read_saved", "process_umask"]


def process_umask() -> int:
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
                os.fchmod(fh.fileno(), 0o666 & ~process_umask())
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
    PRODUCTS = ("snapshots/*.npz", "vtk/*.vtp", "final.npz", "last_good.npz", "*.pvd", "*.png", "diagnostics.csv",
                "clusters.csv", "clusters_events.csv")
    #: Products that describe the end of a run; a restarted run removes them and writes them anew.
    END_PRODUCTS = ("final.npz", "last_good.npz", "*.png")
    #: Temporary files a killed run may have left (:func:`atomic_write`, :class:`VtkSeries`);
    #: removed by :meth:`prepare`, fresh or not.
    LEFTOVERS = (".write-test.*.tmp", ".case.toml.*.tmp", ".diagnostics.csv.*.tmp", ".final.npz.*.tmp",
                 ".last_good.npz.*.tmp", ".solution.pvd.*.tmp", ".clusters.csv.*.tmp", ".clusters_events.csv.*.tmp",
                 "snapshots/.write-test.*.tmp", "snapshots/.*.npz.*.tmp",
                 "vtk/.*.vtp", "vtk/.*.vtp.*.tmp")

    def prepare(self, fresh: bool = True) -> None:
        """Create the directory and check it is writable (before the run starts). With
        ``fresh``, files a previous run left there (:attr:`PRODUCTS`) are removed so no
        stale snapshot survives; temporary files of a killed run (:attr:`LEFTOVERS`) are
        removed either way; nothing else in the directory is touched."""
        self.snap_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.dir, self.snap_dir):
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        for pattern in (self.PRODUCTS if fresh else ()) + self.LEFTOVERS:
            for old in self.dir.glob(pattern):
                _unlink(old)

    def resume(self, saved: "SavedRun") -> None:
        """Continue the run read back by :func:`read_run` (after :meth:`prepare` with
        ``fresh=False``): remove the products of indices after ``saved.index`` and those
        of the end of the run (:attr:`END_PRODUCTS`), and rewrite ``diagnostics.csv`` with
        the rows up to ``saved.index``. Every intermediate state of the directory is
        itself restartable from ``saved.index``."""
        for path in saved.stale:
            _unlink(path)
        for pattern in self.END_PRODUCTS:
            for old in self.dir.glob(pattern):
                _unlink(old)
        self.rows = list(saved.rows)
        self.write_diagnostics()

    def copy_snapshots(self, saved: "SavedRun") -> None:
        """Continue the run read back by :func:`read_run` from another directory (after
        :meth:`prepare` with ``fresh=True``): copy its snapshots ``0..saved.index`` byte for
        byte (atomically, one by one) and write ``diagnostics.csv`` with its rows
        ``0..saved.index``, last, so that a copy cut short leaves no complete snapshot (the
        same command copies again). ``saved.dir`` is only read; a file there that cannot be
        read raises :class:`RestartError`, a write here :class:`OSError`."""
        for index, src in enumerate(saved.snapshot_files):
            atomic_write(self.snap_dir / f"{index:05d}.npz", read_saved(src))
        self.rows = list(saved.rows)
        self.write_diagnostics()

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


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:  # gone already
        pass


# -- reading a run directory back (restart) ---------------------------------------------------------
class RestartError(ValueError):
    """The directory holds no run that can be continued (the reason, one line)."""


@dataclass
class SavedRun:
    """A run directory read back by :func:`read_run`.

    ``index`` is the last snapshot k such that every product of the indices 0..k is
    complete; ``arrays`` holds all arrays of snapshot k as stored (float64, bitwise), and
    ``history`` the ``keep`` arrays of snapshots 0..k-1. ``rows`` are the rows 0..k of
    ``diagnostics.csv`` (integers and floats, which :meth:`RunWriter.write_diagnostics`
    writes back to the same text) under ``header``. ``stale`` lists the products of later
    indices (partly written when the run was stopped), and ``why`` says why snapshot k+1
    is not usable. ``snapshot_files`` and ``vtk_files`` (with ``vtk``) are the files of the
    snapshots 0..k.
    """

    dir: Path
    index: int
    arrays: dict
    header: list[str]
    rows: list[dict]
    history: list[dict] = field(default_factory=list)
    stale: list[Path] = field(default_factory=list)
    why: str = ""
    snapshot_files: list[Path] = field(default_factory=list)
    vtk_files: list[Path] = field(default_factory=list)


def read_saved(path: Path) -> bytes:
    """The bytes of a file of a run read back (:class:`RestartError` when unreadable)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RestartError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse_cell(text):
    """A ``diagnostics.csv`` value: int where written as one (``str(int)``), else float
    (written as ``repr(float)``, which ``float`` reads back bitwise); an empty cell is
    ``None`` (a value that is undefined, e.g. the energy of a model that is no gradient flow)."""
    if text is None:
        raise ValueError("missing value")
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """The header and the rows of ``diagnostics.csv`` up to the first unreadable one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return [], []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    rows = []
    try:
        for raw in reader:
            if None in raw or len(raw) != len(header):  # a short or long line
                break
            rows.append({k: _parse_cell(raw[k]) for k in header})
    except (ValueError, csv.Error):
        pass
    return header, rows


def _vtp_complete(path: Path) -> bool:
    """A VTK XML file written to its end (atomic writes make anything else unlikely)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 64))
            return b"</VTKFile>" in fh.read()
    except OSError:
        return False


def _indexed(folder: Path, suffix: str) -> dict[int, Path]:
    out = {}
    for path in folder.glob(f"*{suffix}"):
        stem = path.name[: -len(suffix)]
        if stem.isdigit():
            out[int(stem)] = path
    return out


def read_run(out_dir, required=("t",), keep=("t",), vtk: bool = False) -> SavedRun:
    """Read the run in ``out_dir`` back from its snapshots (see :class:`SavedRun`).

    Snapshot j is complete when ``snapshots/{j:05d}.npz`` loads in full (every member
    read, so a truncated or damaged archive fails its checks), holds the ``required``
    arrays, row j of ``diagnostics.csv`` exists with the same ``t``, and, with ``vtk``,
    ``vtk/{j:05d}.vtp`` is written to its end. Raises :class:`RestartError` when snapshot
    0 is not complete. Reads only; nothing is changed.
    """
    out = Path(out_dir)
    header, rows = _read_rows(out / "diagnostics.csv")
    snaps = _indexed(out / "snapshots", ".npz")
    vtps = _indexed(out / "vtk", ".vtp") if vtk else {}
    history: list[dict] = []
    current = None
    why = ""
    j = 0
    while True:
        name = f"snapshots/{j:05d}.npz"
        if j not in snaps:
            why = f"{name} does not exist"
            break
        try:
            with np.load(snaps[j], allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 -- zipfile, numpy and OS errors alike
            why = f"{name} is unreadable ({type(exc).__name__}: {exc})"
            break
        missing = [k for k in required if k not in arrays]
        if missing:
            why = f"{name} has no {', '.join(missing)} array"
            break
        if j >= len(rows):
            why = f"diagnostics.csv has no row for snapshot {j}"
            break
        if "t" not in rows[j] or rows[j]["t"] != float(arrays["t"]):
            why = f"row {j} of diagnostics.csv does not match {name} (t)"
            break
        if vtk and not (j in vtps and _vtp_complete(vtps[j])):
            why = f"vtk/{j:05d}.vtp is missing or incomplete"
            break
        if current is not None:
            history.append({k: current[k] for k in keep})
        current = arrays
        j += 1
    if current is None:
        raise RestartError(f"no complete snapshot to continue from: {why}")
    k = j - 1
    stale = [p for i, p in sorted(snaps.items()) if i > k] + [p for i, p in sorted(vtps.items()) if i > k]
    if not vtk:
        stale += [p for i, p in sorted(_indexed(out / "vtk", ".vtp").items()) if i > k]
    return SavedRun(dir=out, index=k, arrays=current, header=header, rows=rows[: k + 1], history=history,
                    stale=stale, why=why, snapshot_files=[snaps[i] for i in range(j)],
                    vtk_files=[vtps[i] for i in range(j)] if vtk else [])

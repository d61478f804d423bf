"""ParaView output: one VTK PolyData file per snapshot and a ``.pvd`` time-series index.

``DIR/vtk/NNNNN.vtp`` holds the mesh (triangles on the sphere) with cell data ``density``,
``masses``, ``areas`` and the vector ``velocity``; ``DIR/solution.pvd`` lists them with
their times, so ParaView opens the whole run as one time series. Files are written
atomically (temporary file, then rename) with the permissions of a plainly created file
(``0o666`` less the umask, as :func:`~meanfield.io.output.atomic_write` gives them); the
index is rewritten after every snapshot, so a killed run leaves a valid series of the
snapshots written so far. A restarted run continues the series with
:meth:`VtkSeries.resume` (in its own directory) or :meth:`VtkSeries.copy` (into another
one).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from .output import atomic_write, process_umask, read_saved

__all__ = ["VtkSeries", "surface_polydata"]


def surface_polydata(mesh, cell_data: dict | None = None, point_data: dict | None = None):
    """A :class:`pyvista.PolyData` of a triangulated sphere mesh with the given cell data."""
    import pyvista as pv

    tri = np.asarray(mesh.triangles)
    faces = np.hstack([np.full((len(tri), 1), 3), tri]).astype(np.int64).ravel()
    poly = pv.PolyData(np.asarray(mesh.vertices, dtype=float), faces)
    for name, values in (cell_data or {}).items():
        poly.cell_data[name] = np.asarray(values)
    for name, values in (point_data or {}).items():
        poly.point_data[name] = np.asarray(values)
    return poly


class VtkSeries:
    """A ``.pvd`` collection of ``.vtp`` files in ``out_dir``."""

    def __init__(self, out_dir, name: str = "solution"):
        self.dir = Path(out_dir)
        self.sub = self.dir / "vtk"
        self.index = self.dir / f"{name}.pvd"
        self.entries: list[tuple[float, str]] = []

    def write(self, index: int, t: float, poly) -> Path:
        self.sub.mkdir(parents=True, exist_ok=True)
        path = self.sub / f"{index:05d}.vtp"
        fd, tmp = tempfile.mkstemp(dir=self.sub, prefix=f".{path.stem}.", suffix=".vtp")
        os.close(fd)
        try:
            poly.save(tmp, binary=True)
            # mkstemp creates 0o600; give the file a plainly created one's mode, as
            # atomic_write does for every other output (a shared series must be readable)
            os.chmod(tmp, 0o666 & ~process_umask())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.entries.append((float(t), f"vtk/{path.name}"))
        self._write_index()
        return path

    def resume(self, times) -> None:
        """Continue a series whose snapshots ``0 .. len(times) - 1`` (at ``times``) are
        written: the index is rewritten to list exactly those (a later entry of a stopped
        run is dropped)."""
        self.entries = [(float(t), f"vtk/{index:05d}.vtp") for index, t in enumerate(times)]
        self._write_index()

    def copy(self, files, times) -> None:
        """Continue, in this directory, the series of another run whose snapshots ``0 ..
        len(times) - 1`` (at ``times``) are the VTK ``files``: they are copied byte for
        byte (atomically) and the index is written to list exactly those."""
        if len(files) != len(times):
            raise ValueError(f"{len(files)} VTK files for {len(times)} snapshot times")
        if files:
            self.sub.mkdir(parents=True, exist_ok=True)
        for index, src in enumerate(files):
            atomic_write(self.sub / f"{index:05d}.vtp", read_saved(src))
        self.resume(times)

    def _write_index(self) -> None:
        lines = ['<?xml version="1.0"?>',
                 '<VTKFile type="Collection" version="0.1" byte_order="LittleEndian">',
                 "  <Collection>"]
        for t, rel in self.entries:
            lines.append(f'    <DataSet timestep="{t!r}" group="" part="0" file={quoteattr(rel)}/>')
        lines += ["  </Collection>", "</VTKFile>", ""]
        atomic_write(self.index, "\n".join(lines))

"""``python _count_field.py ARGS...``: ``meanfield ARGS...`` (the CLI's ``main``, in this
process) with every attention-field backend counting the target points it evaluates.

After the run each rank prints one line ``field-targets RANK SIZE TARGETS CALLS SOURCES``
on stdout: the targets this process evaluated the field at and in how many evaluations
(nested backend calls -- a spectral backend's direct fallback, ``__call__`` going through
``evaluate`` -- count once, at the outermost), and the sources a spectral backend summed
into coefficients (every call of ``coefficients``). Under ``mpiexec`` the lines of all
ranks show how the work was split. Used by ``test_mpi.py`` (through ``_helpers.launch_counted``).
"""

import functools
import sys

import numpy as np

from meanfield.fields.attention import DirectField
from meanfield.fields.spectral import SpectralField, SphereSpectralField
from meanfield.fields.spectral_circle import SpectralCircleField
from meanfield.fields.spectral_sphere import SpectralSphereField
from meanfield.fields.spectral_sphere_general import GeneralSphereField

COUNT = {"targets": 0, "calls": 0, "sources": 0, "depth": 0}


def counted(method):
    @functools.wraps(method)
    def wrapper(self, targets, *args, **kwargs):
        outer = COUNT["depth"] == 0
        if outer:
            COUNT["targets"] += int(np.shape(targets)[0])
            COUNT["calls"] += 1
        COUNT["depth"] += 1
        try:
            return method(self, targets, *args, **kwargs)
        finally:
            COUNT["depth"] -= 1

    return wrapper


def counted_sources(method):
    @functools.wraps(method)
    def wrapper(self, sources, *args, **kwargs):
        COUNT["sources"] += int(np.shape(sources)[0])
        return method(self, sources, *args, **kwargs)

    return wrapper


# the methods where they are defined: the backends' own, and those of their shared skeleton
for cls in (DirectField, SpectralField, SphereSpectralField, SpectralCircleField, SpectralSphereField,
            GeneralSphereField):
    for name in ("__call__", "evaluate"):
        if name in vars(cls):
            setattr(cls, name, counted(vars(cls)[name]))
    if "coefficients" in vars(cls):
        cls.coefficients = counted_sources(vars(cls)["coefficients"])


def main(argv) -> int:
    from meanfield.cli import main as cli_main
    from meanfield.parallel import launched_under_mpi

    rc = cli_main(argv)
    rank, size = 0, 1
    if launched_under_mpi():
        from mpi4py import MPI

        rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    sys.stdout.write(f"field-targets {rank} {size} {COUNT['targets']} {COUNT['calls']} {COUNT['sources']}\n")
    sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Field evaluation time, direct against spectral, on the sphere and the circle.

Usage: ``python benchmarks/bench_spectral.py [--levels 3 4 5 6 7] [--circle 10 13 16] [--beta 9]``

Sphere: targets are the edge midpoints of an icosahedral mesh, sources its cell centres
(what one finite-volume stage evaluates), SA, Q = K = V = I, the smooth density
exp(2 <x, c>) as weights. Circle: N = M = 2^p random points, isotropic and a general
Q, K, V. Direct sums are measured up to ``--direct-max`` pairs and extrapolated beyond
from the pairs per second measured at the largest measured size (marked ``~``). The
"fallback" column is the share of SA targets the spectral backend recomputed with direct
sums to meet the tolerance.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import meanfield as mf
from _machine import cpu_name, time_call, usable_cores
from meanfield.spectral_circle import SpectralCircleField
from meanfield.spectral_sphere import SpectralSphereField
from meanfield.sphere import icosahedral


def row(label, n_t, n_s, direct, spectral, measured_rate, seconds, tolerance, extra=""):
    x, y, w = spectral[1]
    t_spec = time_call(lambda: spectral[0](x, y, w), seconds)
    fallback = getattr(spectral[0], "last_fallback", getattr(spectral[0], "last_fallback_count", 0)) / max(1, n_t)
    pairs = n_t * n_s
    if direct is not None:
        t_dir = time_call(lambda: direct(x, y, w), seconds)
        measured_rate[0] = pairs / t_dir
        mark = " "
    else:
        t_dir = pairs / measured_rate[0]
        mark = "~"
    print(f"{label:>14} {n_t:9d} {n_s:9d} {extra:>6} {t_spec * 1e3:11.2f} {mark}{t_dir * 1e3:12.1f} "
          f"{t_dir / t_spec:9.0f}x {100 * fallback:8.1f}%")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    p.add_argument("--circle", type=int, nargs="*", default=[10, 13, 16], help="powers of two (none: skip)")
    p.add_argument("--beta", type=float, default=9.0)
    p.add_argument("--tolerance", type=float, default=1e-12)
    p.add_argument("--direct-max", type=float, default=7e8, help="largest pair count timed directly")
    p.add_argument("--seconds", type=float, default=1.0)
    args = p.parse_args(argv)
    print(f"# {cpu_name()}, {usable_cores()} cores usable ({os.cpu_count()} visible), one process, "
          f"numpy {np.__version__}, SA beta={args.beta}, tolerance {args.tolerance:g}")
    print(f"{'case':>14} {'targets':>9} {'sources':>9} {'L':>6} {'spectral ms':>11} {'direct ms':>13} "
          f"{'speed-up':>10} {'fallback':>9}")
    model3 = mf.AttentionModel(d=3, beta=args.beta)
    rate = [None]
    c = np.array([1.0, 0.3, 0.2]) / np.linalg.norm([1.0, 0.3, 0.2])
    for level in args.levels:
        mesh = icosahedral(level)
        x = mesh.edge_points[:, 0, :]
        w = np.exp(2 * (mesh.centers @ c)) * mesh.areas
        w /= w.sum()
        spec = SpectralSphereField(model3, tolerance=args.tolerance)
        direct = mf.DirectField(model3) if x.shape[0] * mesh.n_cells <= args.direct_max else None
        row(f"sphere L{level}", x.shape[0], mesh.n_cells, direct, (spec, (x, mesh.centers, w)), rate, args.seconds,
            args.tolerance, extra=str(spec.lmax))
    rng = np.random.default_rng(0)
    general = dict(Q=[[1.0, 0.3], [-0.2, 0.9]], K=[[0.8, 0.1], [0.4, 1.1]], V=[[1.0, -0.5], [0.5, 1.0]])
    for name, kwargs in (("isotropic", {}), ("general", general)):
        model2 = mf.AttentionModel(d=2, beta=args.beta, **kwargs)
        rate = [None]
        for power in args.circle:
            n = 2**power
            theta = rng.uniform(0, 2 * np.pi, n)
            pts = np.stack([np.cos(theta), np.sin(theta)], axis=1)
            w = np.full(n, 1.0 / n)
            spec = SpectralCircleField(model2, tolerance=args.tolerance)
            direct = mf.DirectField(model2) if n * n <= args.direct_max else None
            row(f"circle {name[:4]} 2^{power}", n, n, direct, (spec, (pts, pts, w)), rate, args.seconds,
                args.tolerance, extra=str(spec.truncation))


if __name__ == "__main__":
    main()

"""Field evaluation time, direct against spectral, on the sphere and the circle.

Usage: ``python benchmarks/bench_spectral.py [--levels 3 4 5 6 7] [--circle 10 13 16] [--beta 9]
[--general qkv rand] [--general-levels 3 4 5 6]``

Sphere: targets are the edge midpoints of an icosahedral mesh, sources its cell centres
(what one finite-volume stage evaluates), SA, Q = K = V = I, the smooth density
exp(2 <x, c>) as weights. General Q, K, V on the sphere (``GeneralSphereField``, same
points and weights): ``qkv`` is the model of ``cases/sphere_qkv.toml`` (Q = I,
K = I + 0.5 J, V = I + J), ``rand`` a random non-symmetric one (Q, K = I + 0.4 G,
V = I + 0.5 G, seed 0, singular values of Q^T K 1.20, 0.72, 0.05), SA at the tolerance
and at 1e-9, USA at the tolerance; the "L" column is lmax_x/lmax_y, and the one-off
construction of the coefficient matrix is printed above each group (not in the per-call
times). Circle: N = M = 2^p random points, isotropic and a general Q, K, V. Direct sums
are measured up to ``--direct-max`` pairs and extrapolated beyond from the pairs per second
measured at the largest measured size (marked ``~``). The
"fallback" column is the share of SA targets the spectral backend recomputed with direct
sums to meet the tolerance. A spectral call that takes more than 20 s is timed once; the
next level of a general group is skipped when 16 times the last call would exceed 120 s
(the direct fallback scales with targets x sources).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import meanfield as mf
from _machine import cpu_name, time_call, usable_cores
from meanfield.fields.spectral_circle import SpectralCircleField
from meanfield.fields.spectral_sphere import SpectralSphereField
from meanfield.fields.spectral_sphere_general import GeneralSphereField
from meanfield.geometry.sphere import icosahedral


def row(label, n_t, n_s, direct, spectral, measured_rate, seconds, tolerance, extra="", once_above=None):
    x, y, w = spectral[1]
    if once_above is not None:  # an expensive call (large SA fallback) is timed once
        start = time.perf_counter()
        spectral[0](x, y, w)
        t_spec = time.perf_counter() - start
        if t_spec <= once_above:
            t_spec = time_call(lambda: spectral[0](x, y, w), seconds)
    else:
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
    return t_spec


GENERAL_MODELS = {
    "qkv": dict(K=[[1.0, -0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]],
                V=[[1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    "rand": None,  # drawn below
}


def general_rows(args, meshes) -> None:
    """Rows for general Q, K, V on the sphere (GeneralSphereField against DirectField)."""
    rng = np.random.default_rng(0)
    Q, K, V = (np.eye(3) + s * rng.normal(size=(3, 3)) for s in (0.4, 0.4, 0.5))
    models = {"qkv": GENERAL_MODELS["qkv"], "rand": dict(Q=Q, K=K, V=V)}
    c = np.array([1.0, 0.3, 0.2]) / np.linalg.norm([1.0, 0.3, 0.2])
    groups = []
    for name in args.general:
        groups.append((name, True, args.tolerance))
        if name == "rand":
            if args.tolerance != 1e-9:
                groups.append((name, True, 1e-9))
            groups.append((name, False, args.tolerance))
    for name, normalized, tol in groups:
        model = mf.AttentionModel(d=3, beta=args.beta, normalized=normalized, **models[name])
        start = time.perf_counter()
        spec = GeneralSphereField(model, tolerance=tol)
        build = time.perf_counter() - start
        print(f"# general {name}, {model.kind}, tolerance {tol:g}: sigma {np.round(spec.sigma, 2).tolist()}, "
              f"{spec.scale} scale, coefficients {spec.coefficient_bytes / 1e6:.1f} MB built in {build:.2f} s")
        rate = [None]
        for level in args.general_levels:
            mesh = meshes(level)
            x = mesh.edge_points[:, 0, :]
            w = np.exp(2 * (mesh.centers @ c)) * mesh.areas
            w /= w.sum()
            direct = mf.DirectField(model) if x.shape[0] * mesh.n_cells <= args.direct_max else None
            t = row(f"{name} {model.kind} L{level}", x.shape[0], mesh.n_cells, direct,
                    (spec, (x, mesh.centers, w)), rate, args.seconds, tol,
                    extra=f"{spec.lmax_x}/{spec.lmax_y}", once_above=20.0)
            if 16 * t > 120.0 and level != args.general_levels[-1]:
                print(f"{'':>14} (larger levels of this group skipped: the last call took {t:.1f} s)")
                break


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    p.add_argument("--circle", type=int, nargs="*", default=[10, 13, 16], help="powers of two (none: skip)")
    p.add_argument("--beta", type=float, default=9.0)
    p.add_argument("--tolerance", type=float, default=1e-12)
    p.add_argument("--direct-max", type=float, default=7e8, help="largest pair count timed directly")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--general", nargs="*", default=["qkv", "rand"], choices=sorted(GENERAL_MODELS),
                   help="general Q, K, V models on the sphere (none: skip)")
    p.add_argument("--general-levels", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    args = p.parse_args(argv)
    print(f"# {cpu_name()}, {usable_cores()} cores usable ({os.cpu_count()} visible), one process, "
          f"numpy {np.__version__}, SA beta={args.beta}, tolerance {args.tolerance:g}")
    print(f"{'case':>14} {'targets':>9} {'sources':>9} {'L':>6} {'spectral ms':>11} {'direct ms':>13} "
          f"{'speed-up':>10} {'fallback':>9}")
    model3 = mf.AttentionModel(d=3, beta=args.beta)
    rate = [None]
    c = np.array([1.0, 0.3, 0.2]) / np.linalg.norm([1.0, 0.3, 0.2])
    cache = {}

    def meshes(level):
        if level not in cache:
            cache[level] = icosahedral(level)
        return cache[level]

    for level in args.levels:
        mesh = meshes(level)
        x = mesh.edge_points[:, 0, :]
        w = np.exp(2 * (mesh.centers @ c)) * mesh.areas
        w /= w.sum()
        spec = SpectralSphereField(model3, tolerance=args.tolerance)
        direct = mf.DirectField(model3) if x.shape[0] * mesh.n_cells <= args.direct_max else None
        row(f"sphere L{level}", x.shape[0], mesh.n_cells, direct, (spec, (x, mesh.centers, w)), rate, args.seconds,
            args.tolerance, extra=str(spec.lmax))
    if args.general:
        general_rows(args, meshes)
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

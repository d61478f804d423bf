"""Particle clusters are counted from the tokens (issue 10, item 11): groups of angular
diameter at most ``diagnostics.cluster_distance`` (:func:`meanfield.diagnostics.particle_groups`)
with mass at least ``diagnostics.cluster_mass``; comparable with the authors' count, the
rank of the thresholded Gram matrix ``[<x_i, x_j> >= 0.999]``."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from meanfield import diagnostics as diag
from meanfield.io.case import CaseError, load_case, resolve_case
from meanfield.particles.run import run_particles

ROOT = Path(__file__).resolve().parents[1]
DELTA = math.acos(0.999)
ALL = diag.ClusterCriterion(mass=0.0)  # every group counts


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def fibonacci(n):
    """n nearly evenly spread points on S^2 (spacing ~ sqrt(4 pi / n))."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    return np.c_[r * np.cos(phi), r * np.sin(phi), z]


def gram_rank(x, threshold=0.999):
    """The authors' count (phase-diagrams.py of github.com/borjanG/2023-transformers-rotf)."""
    return int(np.linalg.matrix_rank((x @ x.T >= threshold).astype(float)))


def is_equivalence(x, threshold=0.999):
    """The relation <x_i, x_j> >= threshold is transitive (then the Gram rank counts its classes)."""
    a = (x @ x.T >= threshold).astype(int)
    return bool(np.array_equal(a @ a > 0, a > 0))


def max_diameter(x, labels):
    worst = 0.0
    for g in np.unique(labels):
        p = x[labels == g]
        worst = max(worst, float(np.arccos(np.clip((p @ p.T).min(), -1, 1))))
    return worst


def test_five_separated_tokens_are_five_clusters():
    x = unit(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, 0], [0, -1, -1]], dtype=float))
    masses, centers = diag.find_particle_clusters(x, np.full(5, 0.2))  # default criterion (cluster_mass 0.01)
    assert len(masses) == 5
    assert np.allclose(masses, 0.2)
    assert np.allclose(np.sort(centers, axis=0), np.sort(x, axis=0))
    # on the circle as well
    theta = np.array([0.0, 1.0, 2.0, 3.0, 4.5])
    masses, _ = diag.find_particle_clusters(np.c_[np.cos(theta), np.sin(theta)], np.full(5, 0.2))
    assert len(masses) == 5


def test_64_separated_tokens_are_64_clusters():
    x = fibonacci(64)
    w = np.full(64, 1 / 64)
    masses, centers = diag.find_particle_clusters(x, w)  # 1/64 >= cluster_mass = 0.01
    assert len(masses) == 64 == gram_rank(x)
    assert np.allclose(masses, 1 / 64) and np.allclose(np.sort(centers, axis=0), np.sort(x, axis=0))
    # cluster_mass is the smallest mass that counts: above a token's weight, separated tokens are no clusters
    assert len(diag.find_particle_clusters(x, w, diag.ClusterCriterion(mass=0.02))[0]) == 0


def test_tight_clusters_of_many_tokens():
    rng = np.random.default_rng(3)
    k, n = 7, 1000
    c = fibonacci(k)
    label = rng.integers(k, size=n)
    x = unit(c[label] + 2e-3 * rng.normal(size=(n, 3)))  # spread ~ 3e-3 rad << DELTA
    w = rng.random(n)
    w /= w.sum()
    masses, centers = diag.find_particle_clusters(x, w)
    assert len(masses) == k
    want = np.bincount(label, w, minlength=k)
    order = np.argsort(-want)
    assert np.allclose(masses, want[order], rtol=0, atol=1e-12)
    assert np.all(np.arccos(np.clip(np.sum(centers * c[order], axis=1), -1, 1)) < 1e-3)
    assert gram_rank(x) == k


def test_groups_are_diameter_bounded_and_do_not_chain():
    """A uniform sample: no chaining into one cluster (single linkage would), groups of
    diameter <= DELTA (to within DELTA / 16); with the default cluster_mass no group of
    > 100 spread-out tokens is a cluster (a uniform state has none, as for the PDE)."""
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(2000, 3)))
    labels = diag.particle_groups(x, DELTA)
    k = int(labels.max()) + 1
    assert max_diameter(x, labels) <= DELTA * (1 + 1 / 16)
    # measured: 1372 groups (another sample: 1376, where complete linkage cut at DELTA gives
    # 1380 and the Gram rank 1579)
    assert 1300 <= k <= 1450
    assert len(diag.find_particle_clusters(x, np.full(2000, 1 / 2000))[0]) == 0
    assert len(diag.find_particle_clusters(x, np.full(2000, 1 / 2000), ALL)[0]) == k
    # 64 uniform tokens: every token (or close pair) is its own cluster, the Gram rank's count
    y = unit(np.random.default_rng(5).normal(size=(64, 3)))
    assert len(diag.find_particle_clusters(y, np.full(64, 1 / 64))[0]) == gram_rank(y)
    # a larger distance gives fewer, wider groups
    wide = diag.particle_groups(x, 0.3)
    assert int(wide.max()) + 1 < k / 5 and max_diameter(x, wide) <= 0.3 * (1 + 1 / 16)


def test_scales_without_an_n_by_n_matrix():
    rng = np.random.default_rng(1)
    n = 100_000
    c = fibonacci(3)
    x = unit(c[rng.integers(3, size=n)] + 1e-4 * rng.normal(size=(n, 3)))
    tracemalloc.start()
    try:
        masses, _ = diag.find_particle_clusters(x, np.full(n, 1 / n))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(masses) == 3 and abs(masses.sum() - 1) < 1e-12
    assert peak < 100 * 2**20  # an n x n boolean matrix alone would be 10 GB


def test_agrees_with_the_authors_gram_rank_on_their_sphere_example():
    """cases/authors_sphere.toml (64 uniform tokens, SA, beta = 1, their Euler scheme, to
    t = 15): at every snapshot where the Gram threshold is an equivalence (tokens still
    apart, or collapsed) the count is the Gram rank; at the end both are 1."""
    case = load_case(ROOT / "cases" / "authors_sphere.toml", ["output.plots=false"])
    run = run_particles(case)
    checked = 0
    for (t, x, w), row in zip(run.snapshots, run.rows):
        if is_equivalence(x):
            assert row["n_clusters"] == gram_rank(x), t
            checked += 1
    assert checked >= 10
    t, x, w = run.snapshots[-1]
    assert t == 15.0 and run.rows[-1]["n_clusters"] == gram_rank(x) == 1
    assert run.rows[0]["n_clusters"] == gram_rank(run.snapshots[0][1])  # 62: two close pairs among the 64


def test_particle_run_snapshot_clusters(tmp_path):
    pts = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0]]
    case = resolve_case({
        "domain": {"manifold": "sphere", "mesh": "icosahedral:1"},
        "model": {"kind": "SA", "beta": 1.0},
        "initial": {"kind": "points", "points": pts},
        "solver": {"t_end": 0.01, "dt": 0.01, "integrator": "rk4"},
        "output": {"every": 0.01, "plots": False},
    })
    run = run_particles(case, out_dir=tmp_path / "run")
    assert [r["n_clusters"] for r in run.rows] == [5, 5]
    s = np.load(tmp_path / "run" / "snapshots" / "00000.npz")
    assert np.allclose(s["cluster_masses"], 0.2) and s["cluster_centers"].shape == (5, 3)
    # one cluster at a distance wider than the whole configuration
    case["diagnostics"]["cluster_distance"] = math.pi
    assert run_particles(case).rows[0]["n_clusters"] == 1


def test_cluster_distance_key():
    base = {"domain": {"manifold": "circle"}}
    assert resolve_case(base)["diagnostics"]["cluster_distance"] == pytest.approx(DELTA, rel=1e-15)
    assert resolve_case({**base, "diagnostics": {"cluster_distance": 0.1}})["diagnostics"]["cluster_distance"] == 0.1
    for bad in (0.0, -1.0, 4.0, "x"):
        with pytest.raises(CaseError, match="diagnostics.cluster_distance"):
            resolve_case({**base, "diagnostics": {"cluster_distance": bad}})


@pytest.mark.parametrize("n", [2000, 20000])
def test_uniform_circle_sample_has_no_cluster(n):
    """Groups of a uniform sample on the circle hold ~n delta / 2 pi tokens; at n = 2000
    (14 per group) many reach cluster_mass = 0.01 by chance (19 without the contrast rule),
    but none reaches twice the uniform mass of a delta-ball."""
    rng = np.random.default_rng(5)
    theta = rng.uniform(0, 2 * np.pi, n)
    x = np.c_[np.cos(theta), np.sin(theta)]
    w = np.full(n, 1.0 / n)
    crit = diag.ClusterCriterion()
    assert diag.find_particle_clusters(x, w, crit)[0].size == 0
    masses = diag.find_particle_clusters(x, w, diag.ClusterCriterion(mass=0.0))[0]  # every group
    if n == 2000:
        assert np.sum(masses >= 0.01) >= 10  # by cluster_mass alone, chance groups would count
    # two tight clusters among the uniform tokens are found
    y = np.r_[x, np.tile([[1.0, 0.0]], (n // 10, 1)), np.tile([[0.0, -1.0]], (n // 10, 1))]
    masses, centers = diag.find_particle_clusters(y, np.full(len(y), 1.0 / len(y)), crit)
    assert masses.size == 2 and np.allclose(np.sort(masses), [1 / 12 + 0.005] * 2, atol=0.01)
    assert diag.uniform_ball_mass(crit.distance, 2) == pytest.approx(crit.distance / (2 * math.pi), rel=1e-12)
    assert diag.uniform_ball_mass(crit.distance, 3) == pytest.approx((1 - math.cos(crit.distance / 2)) / 2, rel=1e-9)

"""Cluster tracking (meanfield.clusters): known merges from synthetic snapshots, restart
idempotence, the staircase against the energy, the merger time of two particle clusters
against e^{beta (1 - cos Delta)}, bad input."""

import math

import numpy as np
import pytest
from scipy.integrate import quad

import meanfield as mf
from meanfield.clusters import (ClusterTracker, merger_jump, plateau_energy, point_cluster_energy, read_events,
                                staircase)
from meanfield.diagnostics import ClusterCriterion, find_particle_clusters
from meanfield.particles.system import ParticleState, ParticleSystem


def circle(theta):
    theta = np.atleast_1d(np.asarray(theta, dtype=float))
    return np.c_[np.cos(theta), np.sin(theta)]


def three_to_one(jitter=0.0, seed=0, n=40):
    """Clusters at 0, 2, 4 rad (masses .5, .3, .2): 2 and 4 approach and merge at t = 5
    (index 20), the result merges with the first at t = 9 (index 36); heaviest first."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        t = 0.25 * k
        if t < 5:
            s = t / 5
            masses, angles = [0.5, 0.3, 0.2], [0.0, 2.0 + 0.5 * s, 4.0 - 0.5 * s]
        elif t < 9:
            s = (t - 5) / 4
            a = 2.5 + (2 * math.pi - 2.8) * s  # towards 0 from the other side
            masses, angles = [0.5, 0.5], [0.0, a]
        else:
            masses, angles = [1.0], [0.1]
        angles = np.asarray(angles) + jitter * rng.standard_normal(len(angles))
        out.append((t, np.asarray(masses), circle(angles)))
    return out


def kinds(tracker):
    return [ev.kind for ev in tracker.events]


def test_known_merges_exactly():
    snaps = three_to_one()
    tr = ClusterTracker.from_snapshots(snaps)
    assert kinds(tr) == ["merge", "merge"]
    first, second = tr.events
    assert (first.t, first.t_prev, first.id_a, first.id_b, first.id_c) == (5.0, 4.75, 1, 2, 3)
    assert (first.mass_a, first.mass_b, first.mass_c) == (0.3, 0.2, 0.5)
    assert (second.t, second.id_a, second.id_b, second.id_c) == (9.0, 0, 3, 4)
    assert (second.mass_a, second.mass_b, second.mass_c) == (0.5, 0.5, 1.0)
    assert tr.ids == [0, 1, 2, 3, 4]
    t, m, x = tr.track(0)
    assert t[-1] == 8.75 and np.all(m == 0.5)


@pytest.mark.parametrize("seed", range(5))
def test_no_spurious_events_under_jitter(seed):
    tr = ClusterTracker.from_snapshots(three_to_one(jitter=0.02, seed=seed))
    assert [(ev.kind, ev.id_a, ev.id_b, ev.id_c) for ev in tr.events] == [("merge", 1, 2, 3), ("merge", 0, 3, 4)]
    # a static configuration with jitter and mass noise: the same ids throughout, no events
    rng = np.random.default_rng(seed)
    base = np.array([0.0, 1.5, 3.0, 4.5])
    static = [(k, 0.25 + 0.01 * rng.standard_normal(4), circle(base + 0.05 * rng.standard_normal(4)))
              for k in range(50)]
    tr = ClusterTracker.from_snapshots(static)
    assert tr.events == [] and tr.ids == [0, 1, 2, 3]


def test_formation_vanish_split_and_triple_merge():
    # formation: a cluster appears far from the others; vanish: one leaves the list
    snaps = [(0.0, [0.6, 0.4], circle([0.0, 2.0])),
             (1.0, [0.5, 0.3, 0.2], circle([0.0, 2.0, -2.0])),
             (2.0, [0.6, 0.4], circle([0.0, 2.0]))]
    tr = ClusterTracker.from_snapshots(snaps)
    assert [(ev.kind, ev.id_c) for ev in tr.events] == [("formation", 2), ("vanish", 2)]
    # split: one cluster becomes two nearby ones holding its mass
    tr = ClusterTracker.from_snapshots([(0.0, [1.0], circle([0.0])), (1.0, [0.6, 0.4], circle([0.05, -0.1]))])
    (ev,) = tr.events
    assert (ev.kind, ev.id_c, ev.mass_c, ev.id_a, ev.mass_a, ev.id_b, ev.mass_b) == ("split", 0, 1.0, 1, 0.6, 2, 0.4)
    # two far clusters that do not hold the mass of the pieces are a formation, not a split
    tr = ClusterTracker.from_snapshots([(0.0, [0.5], circle([0.0])), (1.0, [0.5, 0.5], circle([0.0, 0.3]))])
    assert [(ev.kind, ev.id_c) for ev in tr.events] == [("formation", 1)]
    # three clusters merging within one interval: two pairwise events, the closest pair first
    tr = ClusterTracker.from_snapshots([(0.0, [0.2, 0.3, 0.5], circle([0.0, 0.4, -0.3])),
                                        (1.0, [1.0], circle([0.0]))])
    assert [(ev.kind, ev.id_a, ev.id_b, ev.id_c) for ev in tr.events] == [("merge", 0, 2, 3), ("merge", 3, 1, 4)]
    assert tr.events[0].mass_c == 0.7 and tr.events[1].mass_c == 1.0
    # a "merger" whose result does not hold the parents' mass: the nearest continues, one vanishes
    tr = ClusterTracker.from_snapshots([(0.0, [0.5, 0.5], circle([0.0, 0.5])), (1.0, [0.5], circle([0.05]))])
    assert [(ev.kind, ev.id_c) for ev in tr.events] == [("vanish", 1)] and tr.ids == [0, 1]
    # no clusters, then some (all formations), then none (all vanish)
    tr = ClusterTracker.from_snapshots([(0.0, [], np.zeros((0, 2))), (1.0, [1.0], circle([1.0])),
                                        (2.0, np.zeros(0), np.zeros((0, 2)))])
    assert [(ev.kind, ev.id_c) for ev in tr.events] == [("formation", 0), ("vanish", 0)]


def test_sphere_merge_and_map(tmp_path):
    def sph(lon, lat):
        lon, lat = np.radians(lon), np.radians(lat)
        return np.c_[np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)]

    snaps = [(float(k), [0.5, 0.5], sph([10 + 3 * k, 60 - 3 * k], [0, 20])) for k in range(9)]
    snaps.append((9.0, [1.0], sph([40], [10])))
    tr = ClusterTracker.from_snapshots(snaps)
    assert [(ev.kind, ev.t, ev.id_a, ev.id_b, ev.id_c) for ev in tr.events] == [("merge", 9.0, 1, 0, 2)]  # the nearer parent first
    tr.plot_tracks(tmp_path / "map.png", "sphere")
    assert (tmp_path / "map.png").stat().st_size > 1000
    tracks, _ = tr.tables()
    assert tracks.splitlines()[0] == "t,id,mass,center_0,center_1,center_2,longitude,latitude"


def test_restart_from_prefix_is_idempotent(tmp_path):
    snaps = three_to_one(jitter=0.01, seed=3)
    full = ClusterTracker.from_snapshots(snaps)
    path, events_path = full.write_csv(tmp_path / "clusters.csv")
    assert events_path.name == "clusters_events.csv"
    text = path.read_bytes(), events_path.read_bytes()
    for k in (1, 7, 20, 21, 36, len(snaps)):
        part = ClusterTracker.from_snapshots(snaps[:k])
        for snap in snaps[k:]:
            part.update(*snap)
        assert part.tables() == full.tables()
        part.write_csv(tmp_path / "clusters.csv")
        assert (path.read_bytes(), events_path.read_bytes()) == text
    # a snapshot fed again (the restart's snapshot k) is refused, the tracker unchanged
    with pytest.raises(ValueError, match="increasing time"):
        full.update(*snaps[-1])
    assert full.tables() == ClusterTracker.from_snapshots(snaps).tables()
    # the events read back (floats bitwise)
    assert read_events(events_path) == full.events
    header = events_path.read_text().splitlines()[0]
    assert header == "kind,t,t_prev,id_a,mass_a,id_b,mass_b,id_c,mass_c"


def test_from_run_directory(tmp_path):
    """A run directory's complete snapshots (snapshots/*.npz + diagnostics.csv)."""
    from meanfield.io.output import RunWriter

    snaps = three_to_one()
    writer = RunWriter(tmp_path)
    writer.prepare()
    for k, (t, m, c) in enumerate(snaps[:25]):
        writer.write_snapshot(k, {"t": np.float64(t), "cluster_masses": m, "cluster_centers": c},
                              {"t": t, "n_clusters": m.size})
    tr = ClusterTracker.from_run(tmp_path)
    assert tr.tables() == ClusterTracker.from_snapshots(snaps[:25]).tables()
    for snap in snaps[25:]:
        tr.update(*snap)
    assert tr.tables() == ClusterTracker.from_snapshots(snaps).tables()


@pytest.mark.parametrize("beta", [0.5, 4.0, 30.0])
def test_staircase_equals_point_cluster_energy(beta):
    rng = np.random.default_rng(1)
    for shifted in (True, False):
        model = mf.AttentionModel(d=2, beta=beta, normalized=False, shift=shifted)
        masses = np.array([0.4, 0.35, 0.25])
        angles = np.array([0.0, 2.1, 4.2])
        tokens = np.repeat(angles, [4, 7, 5])  # tokens sitting on point clusters
        weights = np.repeat(masses / [4, 7, 5], [4, 7, 5])
        e_tokens = mf.energy(model, circle(tokens), weights, method="direct")
        e_pred = point_cluster_energy(masses, circle(angles), beta, shifted=shifted)
        assert e_pred == pytest.approx(e_tokens, rel=1e-13)
        # sphere too
        c = rng.standard_normal((3, 3))
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        m3 = mf.AttentionModel(d=3, beta=beta, normalized=False, shift=shifted)
        assert point_cluster_energy(masses, c, beta, shifted) == pytest.approx(
            mf.energy(m3, c, masses, method="direct"), rel=1e-13)
    # well separated (beta = 30, gaps 2.1: cross terms e^{-45}): the plateau from the masses
    # alone is exact, and a merger raises it by m_i m_j / beta
    if beta == 30.0:
        masses = np.array([0.4, 0.35, 0.25])
        exact = point_cluster_energy(masses, circle([0.0, 2.1, 4.2]), beta)
        assert plateau_energy(masses, beta) == pytest.approx(exact, rel=1e-14)
        after = point_cluster_energy([0.4, 0.6], circle([0.0, 3.0]), beta)
        assert after - exact == pytest.approx(merger_jump(0.35, 0.25, beta), rel=1e-12)
        assert merger_jump(0.35, 0.25, beta) == pytest.approx(0.35 * 0.25 / beta)


def test_staircase_segments():
    tr = ClusterTracker.from_snapshots(three_to_one())
    segs = staircase(tr, beta=10.0)
    assert [(a, b) for a, b, _ in segs] == [(0.0, 4.75), (5.0, 8.75), (9.0, 9.75)]
    heights = [e for _, _, e in segs]
    assert heights[1] - heights[0] == pytest.approx(merger_jump(0.3, 0.2, 10.0), rel=1e-12)
    assert heights[2] - heights[1] == pytest.approx(merger_jump(0.5, 0.5, 10.0), rel=1e-12)
    exact = staircase(tr, beta=10.0, exact=True)
    assert exact[2][2] == pytest.approx(heights[2], rel=1e-14)  # one cluster: no cross term


def _two_group_merger(beta, gap, n=4, spread=0.02):
    """Two groups of n tokens at gap ``gap`` (shifted USA, dopri5): the tracked merger's
    time (geometric mean of the snapshots around it), the tracker and the energies."""
    theta = np.r_[np.linspace(-spread, spread, n), gap + np.linspace(-spread, spread, n)]
    model = mf.AttentionModel(d=2, beta=beta, normalized=False, shift=True)
    system = ParticleSystem(mf.DirectField(model), rtol=1e-7, atol=1e-9, max_steps=None)
    state = ParticleState.create(circle(theta))
    criterion = ClusterCriterion(mass=0.0)
    tracker = ClusterTracker()
    scale = math.exp(beta * (1 - math.cos(gap)))
    energies = []
    for t in [0.0, *np.geomspace(1e-2, 50 * scale, 400)]:
        if t > 0:
            system.advance(state, float(t))
        tracker.update(t, *find_particle_clusters(state.x, state.weights, criterion))
        energies.append(mf.energy(model, state.x, state.weights, method="direct"))
        if tracker.merges:
            break
    ev = tracker.merges[0]
    return math.sqrt(ev.t * ev.t_prev), tracker, energies


def merger_quadrature(beta, gap, delta=math.acos(0.999)):
    """Time for two point clusters of total mass 1 to close the gap to ``delta``:
    ``dDelta/dt = -e^{beta (cos Delta - 1)} sin Delta``."""
    return quad(lambda g: math.exp(beta * (1 - math.cos(g))) / math.sin(g), delta, gap, limit=200)[0]


@pytest.mark.parametrize("gap, betas, tol", [(math.pi / 2, [5.0, 7.0, 9.0, 11.0], 0.04),
                                             (1.0, [10.0, 14.0, 18.0, 22.0], 0.07)])
def test_merger_time_grows_like_exp_beta_one_minus_cos_gap(gap, betas, tol):
    times = []
    for beta in betas:
        t, tracker, energies = _two_group_merger(beta, gap)
        # exactly one event, the merger of the two groups
        assert [(ev.kind, {ev.id_a, ev.id_b}, ev.id_c) for ev in tracker.events] == [("merge", {0, 1}, 2)]
        # the two-point-cluster law (snapshots 3.5% apart in t)
        assert t == pytest.approx(merger_quadrature(beta, gap), rel=0.03)
        # on the plateau before the merger the energy is the staircase's to the masses' accuracy
        segs = staircase(tracker, beta, exact=True)
        plateau = [e for (t0, t1, e) in segs if t0 < t1][0]
        before = len(tracker.times) - 2  # the last snapshot with two clusters
        assert energies[before] == pytest.approx(
            point_cluster_energy(*_clusters_at(tracker, tracker.times[before]), beta), rel=1e-6)
        assert plateau == pytest.approx(energies[len(energies) // 2], rel=0.05)
        times.append(t)
    b = np.array(betas)
    # log(beta T) ~ beta (1 - cos gap) + const (Laplace: T ~ e^{beta(1 - cos gap)} / (beta sin^2 gap))
    slope = np.polyfit(b, np.log(b * np.array(times)), 1)[0]
    assert slope == pytest.approx(1 - math.cos(gap), rel=tol)


def _clusters_at(tracker, t):
    rows = [row for row in tracker.tracks if row[0] == t]
    return np.array([r[2] for r in rows]), np.array([r[3] for r in rows])


def test_bad_input_raises():
    tr = ClusterTracker()
    with pytest.raises(ValueError, match="masses"):
        tr.update(0.0, [[0.5]], circle([0.0]))
    with pytest.raises(ValueError, match="centers must have shape"):
        tr.update(0.0, [0.5, 0.5], circle([0.0]))
    with pytest.raises(ValueError, match="unit vectors"):
        tr.update(0.0, [1.0], [[2.0, 0.0]])
    with pytest.raises(ValueError, match=">= 0"):
        tr.update(0.0, [-1.0], circle([0.0]))
    with pytest.raises(ValueError, match="finite"):
        tr.update(0.0, [np.nan], circle([0.0]))
    with pytest.raises(ValueError, match="t must be"):
        tr.update(math.inf, [1.0], circle([0.0]))
    with pytest.raises(ValueError, match="t must be"):
        tr.update("soon", [1.0], circle([0.0]))
    assert tr.tracks == [] and tr.events == []
    tr.update(0.0, [1.0], circle([0.0]))
    with pytest.raises(ValueError, match="increasing time"):
        tr.update(0.0, [1.0], circle([0.0]))
    with pytest.raises(ValueError, match="dimension"):
        tr.update(1.0, [1.0], [[0.0, 0.0, 1.0]])
    for bad in (0.0, -1.0, 4.0, True, "1"):
        with pytest.raises(ValueError, match="radius"):
            ClusterTracker(radius=bad)
    for bad in (-0.1, 1.0, math.nan):
        with pytest.raises(ValueError, match="mass_tolerance"):
            ClusterTracker(mass_tolerance=bad)
    for bad in (0.0, -2.0, math.inf, True):
        with pytest.raises(ValueError, match="beta"):
            plateau_energy([1.0], bad)
        with pytest.raises(ValueError, match="beta"):
            point_cluster_energy([1.0], circle([0.0]), bad)
    with pytest.raises(ValueError, match="manifold"):
        tr.plot_tracks(None, "torus")
    with pytest.raises(ValueError, match="does not fit"):
        tr.plot_tracks(None, "sphere")


def test_basin_masses_give_every_point_to_its_nearest_centre():
    from meanfield.clusters import basin_masses

    theta = np.array([0.0, 0.1, -0.1, 3.0, 3.1, 1.5, 1.7])
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    centers = circle([0.0, 3.05])
    # 1.5 rad is nearer to 0 than to 3.05, 1.7 nearer to 3.05
    assert basin_masses(circle(theta), w, centers).tolist() == [12.0, 16.0]
    assert basin_masses(circle(theta), w, centers).sum() == w.sum()
    assert basin_masses(circle(theta), w, np.zeros((0, 2))).shape == (0,)
    with pytest.raises(ValueError, match="centers must have shape"):
        basin_masses(circle(theta), w, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="weights"):
        basin_masses(circle(theta), w[:-1], centers)

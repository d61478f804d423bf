"""Cluster tracking across snapshots: stable ids, tracks, merge events, the energy staircase.

A run identifies clusters at every snapshot (``cluster_masses (k,)`` and ``cluster_centers
(k, d)``, from :func:`~meanfield.diagnostics.find_clusters` or
:func:`~meanfield.diagnostics.find_particle_clusters`). :class:`ClusterTracker` matches the
clusters of consecutive snapshots, gives each a stable id, and records

* the *tracks*: one row ``(t, id, mass, centre)`` per cluster and snapshot;
* the *events* between two snapshots ``t_prev < t``: ``merge`` (clusters a and b become c),
  ``split`` (c becomes a and b), ``formation`` (c appears), ``vanish`` (c ends).

Matching rules (docs/clusters.md), from the previous clusters ``P`` (masses ``p_a``, centres
``c_a``) to the current ones ``Q`` (``q_b``, ``e_b``), with the geodesic distance
``dist(x, y) = arccos <x, y>``, the radius ``r`` (``radius``) and the mass tolerance ``tau``
(``mass_tolerance``):

1. every previous cluster ``a`` goes to its nearest current cluster ``b(a)`` if
   ``dist(c_a, e_b) <= r``, else it *vanishes*;
2. a current cluster ``b`` with one parent (``b(a) = b`` for one ``a``) continues the id
   of ``a``; with parents ``a_1, ..., a_n`` (n >= 2, in order of distance to ``e_b``) it is
   a *merger* if it holds their mass, ``q_b >= (1 - tau) sum_i p_{a_i}``: recorded as the
   pairwise events ``a_1 + a_2 -> c_1``, ``c_1 + a_3 -> c_2``, ... (new ids; a merger of n
   clusters in one interval is n - 1 pairwise mergers, the closest first). Otherwise the
   nearest parent continues and the others vanish;
3. a current cluster with no parent is a *fragment* of its nearest previous cluster ``a``
   if that lies within ``r`` and ``a`` continues (one parent of ``b(a)``) and
   ``q_{b(a)} + sum q_frag <= (1 + tau) p_a`` (the pieces hold no more than the whole):
   a *split*, ``a -> b(a), f_1`` then ``-> f_2``, ... as pairwise events with new ids for
   every piece; otherwise a *formation* (new id).

Ids are integers 0, 1, ... in order of creation; within one snapshot the current clusters
are visited in their given order (heaviest first from the diagnostics), so the tables are
a deterministic function of the snapshot sequence: :meth:`ClusterTracker.from_snapshots`
of the snapshots ``0..k`` followed by :meth:`~ClusterTracker.update` with ``k+1, ...``
gives exactly the tables of the uninterrupted run (the restart of a run continues its
cluster table without duplicates).

The staircase (:func:`point_cluster_energy`, :func:`plateau_energy`, :func:`staircase`):
for point clusters of masses ``m_a`` at ``c_a`` the energy of
:func:`meanfield.fields.energy.energy` is

.. math::

    E = \\frac{1}{2\\beta} \\sum_{ab} m_a m_b \\left(e^{\\beta <c_a, c_b>} - 1\\right),
    \\qquad E_{\\text{shift}} = e^{-\\beta} E
      = \\frac{1}{2\\beta} \\sum_{ab} m_a m_b \\left(e^{\\beta(<c_a, c_b> - 1)} - e^{-\\beta}\\right),

and for well separated clusters (``e^{beta(<c_a, c_b> - 1)} << 1``, a ``b``) the plateau

.. math::

    E_{\\text{shift}} \\approx \\frac{1}{2\\beta}\\Big(\\sum_a m_a^2 - e^{-\\beta} M^2\\Big),
    \\qquad M = \\sum_a m_a,

so a merger of ``m_i`` and ``m_j`` (``m_i^2 + m_j^2 -> (m_i + m_j)^2``) raises the
shifted energy by ``m_i m_j / beta`` (the issue's ``2 m_i m_j`` for the sum
``sum_ij m_i m_j e^{beta(<x_i, x_j> - 1)}`` without the factor ``1/(2 beta)``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ClusterEvent", "ClusterTracker", "TRACK_COLUMNS", "EVENT_COLUMNS", "point_cluster_energy",
           "plateau_energy", "merger_jump", "staircase", "geodesic_distance", "read_events", "basin_masses"]

#: The first columns of ``clusters.csv``; then ``center_0 .. center_{d-1}``, and for d = 2
#: ``angle`` (atan2(y, x), radians), for d = 3 ``longitude`` and ``latitude`` (degrees)
#: (:meth:`ClusterTracker.track_columns`).
TRACK_COLUMNS = ("t", "id", "mass")
#: Columns of the events file: merge ``a + b -> c``, split ``c -> a + b``, formation and
#: vanish of ``c`` (the pair fields empty); ``t_prev`` the snapshot before ``t``.
EVENT_COLUMNS = ("kind", "t", "t_prev", "id_a", "mass_a", "id_b", "mass_b", "id_c", "mass_c")

EVENT_KINDS = ("merge", "split", "formation", "vanish")


def geodesic_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairwise geodesic distances ``arccos <x_i, y_j>`` of unit vectors ``x (n, d)``,
    ``y (m, d)``: ``(n, m)``, computed as ``2 atan2(|x - y|, |x + y|)`` (accurate near 0 and pi)."""
    x = np.asarray(x, dtype=float)[:, None, :]
    y = np.asarray(y, dtype=float)[None, :, :]
    return 2.0 * np.arctan2(np.linalg.norm(x - y, axis=-1), np.linalg.norm(x + y, axis=-1))


def basin_masses(points, weights, centers) -> np.ndarray:
    """The masses of the basins of ``centers (k, d)``: every point of ``points (n, d)``
    (cell centres or tokens, unit vectors) gives its weight ``weights (n,)`` to the centre
    nearest to it (largest ``<x, c>``; ties to the first). ``(k,)``, summing to
    ``weights.sum()``.

    :func:`meanfield.diagnostics.find_clusters` counts only the cells above its contrast
    level, so a resolved cluster (noise, a wide start) loses its tails: for a Gaussian of
    width sigma at 512 cells and contrast 2 about 2% of its mass. The plateaus of
    :func:`staircase` are quadratic in the masses; with the basin masses every token or
    cell counts."""
    x = np.asarray(points, dtype=float)
    w = np.asarray(weights, dtype=float)
    c = np.asarray(centers, dtype=float)
    if x.ndim != 2 or w.shape != (x.shape[0],):
        raise ValueError(f"points must have shape (n, d) and weights (n,), got {x.shape} and {w.shape}")
    if c.ndim != 2 or c.shape[1] != x.shape[1]:
        raise ValueError(f"centers must have shape (k, {x.shape[1]}), got {c.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(w)) and np.all(np.isfinite(c))):
        raise ValueError("points, weights and centers must be finite")
    if c.shape[0] == 0:
        return np.zeros(0)
    nearest = np.argmax(x @ c.T, axis=1)
    return np.bincount(nearest, weights=w, minlength=c.shape[0])


@dataclass(frozen=True)
class ClusterEvent:
    """One event between the snapshots ``t_prev`` and ``t``: ``merge`` (``a + b -> c``),
    ``split`` (``c -> a + b``), ``formation`` / ``vanish`` (of ``c``; ``a``, ``b`` are ``None``)."""

    kind: str
    t: float
    t_prev: float | None
    id_a: int | None
    mass_a: float | None
    id_b: int | None
    mass_b: float | None
    id_c: int
    mass_c: float

    def row(self) -> dict:
        return {k: getattr(self, k) for k in EVENT_COLUMNS}


@dataclass
class _Snapshot:
    t: float
    masses: np.ndarray
    centers: np.ndarray
    ids: np.ndarray


def _check_snapshot(t, masses, centers, d: int | None):
    """Validated ``(t, masses (k,), centers (k, d))`` with unit centres; ``ValueError`` otherwise."""
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"t must be a number, got {t!r}") from None
    if not math.isfinite(t):
        raise ValueError(f"t must be finite, got {t!r}")
    m = np.asarray(masses, dtype=float)
    c = np.asarray(centers, dtype=float)
    if m.ndim != 1:
        raise ValueError(f"masses must be a 1-d array (k,), got shape {m.shape}")
    if m.size == 0 and c.size == 0:
        c = c.reshape(0, c.shape[-1] if c.ndim == 2 else (d or 0))
    if c.ndim != 2 or c.shape[0] != m.size:
        raise ValueError(f"centers must have shape ({m.size}, d) for {m.size} masses, got {c.shape}")
    if d is not None and m.size and c.shape[1] != d:
        raise ValueError(f"centers have dimension {c.shape[1]}, earlier snapshots {d}")
    if m.size and c.shape[1] < 2:
        raise ValueError(f"centers must be points of S^(d-1) with d >= 2, got d = {c.shape[1]}")
    if not (np.all(np.isfinite(m)) and np.all(m >= 0)):
        raise ValueError("masses must be finite and >= 0")
    if not np.all(np.isfinite(c)):
        raise ValueError("centers must be finite")
    norms = np.linalg.norm(c, axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-6):
        raise ValueError(f"centers must be unit vectors (norms {norms.min():.6g} .. {norms.max():.6g})")
    return t, m.copy(), c / norms[:, None] if c.size else c.copy()


@dataclass
class ClusterTracker:
    """Match clusters across snapshots fed in time order (rules: module docstring).

    Parameters
    ----------
    radius : float
        Largest geodesic distance (radians, in ``(0, pi]``) between a cluster's centres at
        two consecutive snapshots, and between a merger's parents and the merged cluster
        (equal masses at gap Delta: Delta / 2). Default ``pi / 2``.
    mass_tolerance : float
        ``tau`` in ``[0, 1)``: a merger holds at least ``(1 - tau)`` times its parents'
        mass, split pieces at most ``(1 + tau)`` times the whole. Default 0.2 (a PDE cluster
        gathers some of the diffuse mass; particle clusters conserve it exactly).

    Attributes
    ----------
    tracks : list of tuple
        ``(t, id, mass, centre (d,))`` for every cluster of every snapshot, in order.
    events : list of ClusterEvent
        In order of time, then of the visit (module docstring).
    """

    radius: float = 0.5 * math.pi
    mass_tolerance: float = 0.2
    tracks: list = field(default_factory=list, init=False)
    events: list = field(default_factory=list, init=False)
    _last: _Snapshot | None = field(default=None, init=False, repr=False)
    _next_id: int = field(default=0, init=False, repr=False)
    _d: int | None = field(default=None, init=False, repr=False)
    times: list = field(default_factory=list, init=False)

    def __post_init__(self):
        r, tau = self.radius, self.mass_tolerance
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0 < r <= math.pi):
            raise ValueError(f"radius must be an angle in (0, pi], got {r!r}")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (0 <= tau < 1):
            raise ValueError(f"mass_tolerance must be in [0, 1), got {tau!r}")
        self.radius, self.mass_tolerance = float(r), float(tau)

    # -- building --------------------------------------------------------------------------
    @classmethod
    def from_snapshots(cls, snapshots, **options) -> "ClusterTracker":
        """A tracker fed ``snapshots``: an iterable of ``(t, masses, centers)`` or of dicts
        with ``t``, ``cluster_masses``, ``cluster_centers`` (snapshot arrays of a run)."""
        tracker = cls(**options)
        for snap in snapshots:
            if isinstance(snap, dict):
                tracker.update(snap["t"], snap["cluster_masses"], snap["cluster_centers"])
            else:
                tracker.update(*snap)
        return tracker

    @classmethod
    def from_run(cls, out_dir, **options) -> "ClusterTracker":
        """A tracker fed the complete snapshots ``0..k`` of the run in ``out_dir``
        (:func:`meanfield.io.output.read_run`; what a restarted run continues from)."""
        from .io.output import read_run

        keys = ("t", "cluster_masses", "cluster_centers")
        saved = read_run(out_dir, required=keys, keep=keys)
        return cls.from_snapshots([*saved.history, {k: saved.arrays[k] for k in keys}], **options)

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def update(self, t, masses, centers) -> list:
        """Add the snapshot at time ``t`` (later than the last one); returns its events.

        ``masses (k,)`` nonnegative, ``centers (k, d)`` unit vectors (k = 0 allowed).
        Raises ``ValueError`` for bad input (shapes, non-finite values, non-unit centres, a
        time not after the previous snapshot); the tracker is then unchanged.
        """
        t, m, c = _check_snapshot(t, masses, centers, self._d)
        last = self._last
        if last is not None and not t > last.t:
            raise ValueError(f"snapshots must come in increasing time: t = {t!r} after t = {last.t!r}")
        if m.size and self._d is None:
            self._d = c.shape[1]
        if last is None or last.masses.size == 0:
            ids = np.array([self._new_id() for _ in range(m.size)], dtype=np.intp)
            events = [] if last is None else [ClusterEvent("formation", t, last.t, None, None, None, None, int(i),
                                                           float(q)) for i, q in zip(ids, m)]
        else:
            ids, events = self._match(last, t, m, c)
        self.events.extend(events)
        for i, q, x in zip(ids, m, c):
            self.tracks.append((t, int(i), float(q), x.copy()))
        self._last = _Snapshot(t, m, c, ids)
        self.times.append(t)
        return events

    def _match(self, last: _Snapshot, t: float, q: np.ndarray, e: np.ndarray):
        p, ids_prev, t0 = last.masses, last.ids, last.t
        tau, r = self.mass_tolerance, self.radius
        k = q.size
        ids = np.full(k, -1, dtype=np.intp)
        events: list[ClusterEvent] = []
        if k == 0:
            for a in range(p.size):
                events.append(ClusterEvent("vanish", t, t0, None, None, None, None, int(ids_prev[a]), float(p[a])))
            return ids, events
        dist = geodesic_distance(last.centers, e)  # (P, Q)
        nearest = np.argmin(dist, axis=1)  # first minimum: deterministic
        within = dist[np.arange(p.size), nearest] <= r
        parents = [[] for _ in range(k)]
        for a in range(p.size):
            if within[a]:
                parents[nearest[a]].append(a)
        vanished = [a for a in range(p.size) if not within[a]]
        continued = {}  # previous index a -> current index b (one parent)
        merged_prev = set()
        # 2. parents: continuation or merger
        for b in range(k):
            par = sorted(parents[b], key=lambda a: (dist[a, b], -p[a], a))
            if len(par) == 1:
                continued[par[0]] = b
            elif len(par) >= 2:
                if q[b] >= (1.0 - tau) * float(np.sum(p[par])):
                    merged_prev.update(par)
                    parents[b] = par
                else:
                    continued[par[0]] = b
                    vanished.extend(par[1:])
                    parents[b] = [par[0]]
        # 3. clusters without a parent: fragments (split) or formations
        fragments = {}  # previous a -> [current b, ...]
        orphans = [b for b in range(k) if not parents[b]]
        if orphans:
            dq = dist[:, orphans]
            for j, b in enumerate(orphans):
                a = int(np.argmin(dq[:, j]))
                if dq[a, j] <= r and a in continued:
                    fragments.setdefault(a, []).append(b)
        splitting = {}
        for a, frag in fragments.items():
            pieces = [continued[a]] + sorted(frag, key=lambda b: (dist[a, b], -q[b], b))
            if float(np.sum(q[pieces])) <= (1.0 + tau) * p[a]:
                splitting[a] = pieces
        in_split = {b for pieces in splitting.values() for b in pieces}
        # visit the current clusters in their order: ids and events are assigned here
        for b in range(k):
            if ids[b] >= 0:
                continue
            par = parents[b]
            if len(par) >= 2 and par[0] in merged_prev:
                cid, cmass = int(ids_prev[par[0]]), float(p[par[0]])
                for j, a in enumerate(par[1:]):
                    new = self._new_id()
                    last_one = j == len(par) - 2
                    mass_new = float(q[b]) if last_one else cmass + float(p[a])
                    events.append(ClusterEvent("merge", t, t0, cid, cmass, int(ids_prev[a]), float(p[a]), new,
                                               mass_new))
                    cid, cmass = new, mass_new
                ids[b] = cid
            elif par and par[0] in splitting:
                a = par[0]
                pieces = splitting[a]
                cid, cmass = int(ids_prev[a]), float(p[a])
                for j in range(1, len(pieces)):
                    first = self._new_id()
                    last_one = j == len(pieces) - 1
                    rest = self._new_id()
                    q_first = float(q[pieces[j - 1]])
                    q_rest = float(q[pieces[j]]) if last_one else float(np.sum(q[pieces[j:]]))
                    events.append(ClusterEvent("split", t, t0, first, q_first, rest, q_rest, cid, cmass))
                    ids[pieces[j - 1]] = first
                    cid, cmass = rest, q_rest
                ids[pieces[-1]] = cid
            elif par:
                ids[b] = ids_prev[par[0]]
            elif b not in in_split:
                ids[b] = self._new_id()
                events.append(ClusterEvent("formation", t, t0, None, None, None, None, int(ids[b]), float(q[b])))
        for a in sorted(vanished):
            events.append(ClusterEvent("vanish", t, t0, None, None, None, None, int(ids_prev[a]), float(p[a])))
        return ids, events

    # -- reading ---------------------------------------------------------------------------
    @property
    def merges(self) -> list:
        """The ``merge`` events."""
        return [ev for ev in self.events if ev.kind == "merge"]

    def track(self, cluster_id: int):
        """``(t (n,), mass (n,), centers (n, d))`` of one id."""
        rows = [row for row in self.tracks if row[1] == cluster_id]
        if not rows:
            raise ValueError(f"no cluster with id {cluster_id!r}")
        return (np.array([row[0] for row in rows]), np.array([row[2] for row in rows]),
                np.array([row[3] for row in rows]))

    @property
    def ids(self) -> list:
        """Every id that has a track, in order of first appearance."""
        return list(dict.fromkeys(row[1] for row in self.tracks))

    def track_rows(self) -> list:
        """The rows of ``clusters.csv`` (dicts; see :func:`track_columns`)."""
        d = self._d or 0
        out = []
        for t, i, m, x in self.tracks:
            row = {"t": t, "id": i, "mass": m}
            row.update({f"center_{j}": float(x[j]) for j in range(d)})
            if d == 2:
                row["angle"] = math.atan2(x[1], x[0])
            elif d == 3:
                row["longitude"] = math.degrees(math.atan2(x[1], x[0]))
                row["latitude"] = math.degrees(math.asin(max(-1.0, min(1.0, float(x[2])))))
            out.append(row)
        return out

    def track_columns(self) -> list:
        """``t, id, mass, center_0 .. center_{d-1}`` (+ ``angle`` for d = 2, ``longitude,
        latitude`` in degrees for d = 3)."""
        d = self._d or 0
        cols = list(TRACK_COLUMNS) + [f"center_{j}" for j in range(d)]
        return cols + (["angle"] if d == 2 else ["longitude", "latitude"] if d == 3 else [])

    def tables(self) -> tuple[str, str]:
        """The text of ``clusters.csv`` and of the events file (floats as ``repr``: bitwise)."""
        return (_csv_text(self.track_columns(), self.track_rows()),
                _csv_text(list(EVENT_COLUMNS), [ev.row() for ev in self.events]))

    def write_csv(self, path, events_path=None) -> tuple[Path, Path]:
        """Write the tracks to ``path`` (``clusters.csv``) and the events to ``events_path``
        (default: ``clusters_events.csv`` beside it, i.e. ``<stem>_events<suffix>``),
        atomically (:func:`meanfield.io.output.atomic_write`). Returns both paths."""
        from .io.output import atomic_write

        path = Path(path)
        events_path = Path(events_path) if events_path is not None else path.with_name(
            f"{path.stem}_events{path.suffix or '.csv'}")
        tracks, events = self.tables()
        atomic_write(path, tracks)
        atomic_write(events_path, events)
        return path, events_path

    # -- pictures --------------------------------------------------------------------------
    def plot_tracks(self, path, manifold: str | None = None, ax=None, title: str | None = None,
                    log_time: bool = False):
        """Draw the tracks: ``"circle"`` the angle against t per track (line width ~ mass,
        wrapped at +-pi without joining), mergers as stars at the merged cluster's start;
        ``"sphere"`` a longitude/latitude map (equirectangular) of the tracks, mergers as
        stars. ``manifold`` defaults from the dimension (2: circle, 3: sphere). With
        ``ax`` the tracks are drawn into it and nothing is saved (``path`` may be None)."""
        import matplotlib

        if ax is None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        d = self._d or 2
        manifold = manifold or ("circle" if d == 2 else "sphere")
        if manifold not in ("circle", "sphere"):
            raise ValueError(f"manifold must be 'circle' or 'sphere', got {manifold!r}")
        if (manifold == "circle") != (d == 2) or d not in (2, 3):
            raise ValueError(f"manifold {manifold!r} does not fit clusters in R^{d}")
        own = ax is None
        if own:
            fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        start = {}
        for n, i in enumerate(self.ids):
            t, m, x = self.track(i)
            color = colors[n % len(colors)]
            if manifold == "circle":
                a = np.arctan2(x[:, 1], x[:, 0])
                a = np.where(np.r_[False, np.abs(np.diff(a)) > np.pi], np.nan, a)  # no line across +-pi
                ax.plot(t, a, color=color, lw=0.8 + 4.0 * float(m.mean()), label=f"{i}")
                start[i] = (t[0], a[0] if np.isfinite(a[0]) else np.arctan2(x[0, 1], x[0, 0]))
            else:
                lon = np.degrees(np.arctan2(x[:, 1], x[:, 0]))
                lat = np.degrees(np.arcsin(np.clip(x[:, 2], -1, 1)))
                lon = np.where(np.r_[False, np.abs(np.diff(lon)) > 180], np.nan, lon)
                ax.plot(lon, lat, color=color, lw=0.8 + 4.0 * float(m.mean()), label=f"{i}")
                ax.plot(lon[-1:], lat[-1:], "o", color=color, ms=4)
                start[i] = (lon[0], lat[0])
        for ev in self.merges:
            if ev.id_c in start:
                ax.plot(*start[ev.id_c], marker="*", color="k", ms=11, zorder=5, ls="none")
        if manifold == "circle":
            ax.set_xlabel("t")
            ax.set_ylabel("cluster angle (rad)")
            ax.set_ylim(-np.pi, np.pi)
            if log_time:
                ax.set_xscale("log")
        else:
            ax.set_xlabel("longitude (deg)")
            ax.set_ylabel("latitude (deg)")
            ax.set_xlim(-180, 180)
            ax.set_ylim(-90, 90)
        markers = []
        if manifold == "sphere":
            markers += ax.plot([], [], marker="o", color="0.3", ls="none", ms=4, label="last seen")
        markers += ax.plot([], [], marker="*", color="k", ls="none", ms=11, label="merger")
        if len(self.ids) <= 12:
            ax.legend(title="id", fontsize="small", ncol=2, loc="best")
        else:  # too many tracks to name: the markers only
            ax.legend(handles=markers, fontsize="small", loc="best")
        if title:
            ax.set_title(title, fontsize=10)
        if own:
            if path is not None:
                fig.savefig(path, dpi=110)
            plt.close(fig)
        return ax


def _csv_text(columns, rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def read_events(path) -> list:
    """The events file written by :meth:`ClusterTracker.write_csv`, as :class:`ClusterEvent`."""
    out = []
    with open(path, encoding="utf-8", newline="") as fh:
        for raw in csv.DictReader(fh):
            def num(key, kind=float):
                return None if raw[key] == "" else kind(raw[key])

            out.append(ClusterEvent(raw["kind"], float(raw["t"]), num("t_prev"), num("id_a", int), num("mass_a"),
                                    num("id_b", int), num("mass_b"), int(raw["id_c"]), float(raw["mass_c"])))
    return out


# -- the staircase ---------------------------------------------------------------------------
def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating)) or not (
            math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return float(beta)


def point_cluster_energy(masses, centers, beta: float, shifted: bool = True) -> float:
    """Energy of point clusters ``sum_a m_a delta_{c_a}`` (USA, ``Q = K = I``), in the
    normalization of :func:`meanfield.fields.energy.energy`:

    ``E = 1/(2 beta) sum_ab m_a m_b (e^{beta <c_a, c_b>} - 1)``; ``shifted``: ``e^{-beta} E
    = 1/(2 beta) sum_ab m_a m_b (e^{beta (<c_a, c_b> - 1)} - e^{-beta})``, with
    ``<c_a, c_b> - 1 = -2 sin^2(theta_ab / 2)`` taken from the chord so that nearby
    clusters keep their relative accuracy."""
    beta = _check_beta(beta)
    t, m, c = _check_snapshot(0.0, masses, centers, None)
    if m.size == 0:
        return 0.0
    chord2 = np.sum((c[:, None, :] - c[None, :, :]) ** 2, axis=-1)  # |c_a - c_b|^2 = 2 - 2 <c_a, c_b>
    if shifted:
        kernel = np.exp(-0.5 * beta * chord2) - math.exp(-beta)
    else:
        kernel = np.expm1(beta * (1.0 - 0.5 * chord2))
    return float(m @ kernel @ m) / (2.0 * beta)


def plateau_energy(masses, beta: float, shifted: bool = True) -> float:
    """The plateau of well separated point clusters (the cross terms
    ``e^{beta(<c_a, c_b> - 1)}`` dropped): shifted ``(sum_a m_a^2 - e^{-beta} M^2) / (2 beta)``,
    unshifted ``(e^beta sum_a m_a^2 - M^2) / (2 beta)``, ``M = sum_a m_a``."""
    beta = _check_beta(beta)
    m = np.asarray(masses, dtype=float)
    if m.ndim != 1 or not (np.all(np.isfinite(m)) and np.all(m >= 0)):
        raise ValueError("masses must be a 1-d array of finite numbers >= 0")
    s2, total = float(m @ m), float(m.sum())
    if shifted:
        return (s2 - math.exp(-beta) * total * total) / (2.0 * beta)
    return (math.exp(beta) * s2 - total * total) / (2.0 * beta)


def merger_jump(m_i: float, m_j: float, beta: float, shifted: bool = True) -> float:
    """The rise of the plateau when clusters of masses ``m_i`` and ``m_j`` merge:
    ``m_i m_j / beta`` shifted, ``e^beta m_i m_j / beta`` unshifted."""
    beta = _check_beta(beta)
    return float(m_i) * float(m_j) / beta * (1.0 if shifted else math.exp(beta))


def staircase(tracker: ClusterTracker, beta: float, shifted: bool = True, exact: bool = False) -> list:
    """The predicted plateaus between the events of ``tracker``: a list of ``(t_start,
    t_end, E)``, one per interval of snapshots with the same cluster ids, ``E`` from the
    masses of its first snapshot (:func:`plateau_energy`; ``exact``: with the centres,
    :func:`point_cluster_energy`)."""
    beta = _check_beta(beta)
    by_time: dict = {}
    for t, i, m, x in tracker.tracks:
        by_time.setdefault(t, []).append((i, m, x))
    out = []
    previous = None
    for t in tracker.times:
        rows = by_time.get(t, [])
        key = tuple(sorted(i for i, _, _ in rows))
        if key != previous:
            m = np.array([row[1] for row in rows])
            if exact and rows:
                e = point_cluster_energy(m, np.array([row[2] for row in rows]), beta, shifted)
            else:
                e = plateau_energy(m, beta, shifted) if rows else 0.0
            out.append([t, t, e])
            previous = key
        out[-1][1] = t
    return [tuple(seg) for seg in out]

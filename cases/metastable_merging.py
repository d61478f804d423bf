"""The metastable staircase on the circle: clusters form fast, then merge pairwise after
waiting times exponential in beta, and the energy climbs a staircase.

Shifted USA (``Q = K = V = I``, kernel ``e^{beta (<x, y> - 1)}``) from a perturbed uniform
start: n tokens (and the finite-volume density on 512 cells, unless ``--no-pde``) form
about ``sqrt(2 beta)`` clusters by t ~ 1, then the closest pair at gap Delta merges after
a time ~ ``e^{beta (1 - cos Delta)}``, and so on. On the rescaled time ``s = log(t) / beta``
a merger of the pair at gap Delta therefore happens near ``s = 1 - cos Delta``.

The clusters of every snapshot (:func:`meanfield.diagnostics.find_particle_clusters`;
the PDE: :func:`meanfield.diagnostics.find_clusters`) are matched by
:class:`meanfield.clusters.ClusterTracker`; each plateau's predicted height is the energy
of point clusters with the tracked masses and centres (:func:`meanfield.clusters.staircase`,
``exact=True``), ``(sum_a m_a^2 - e^{-beta}) / (2 beta)`` when the clusters are far apart:
each merger of ``m_i, m_j`` raises it by ``m_i m_j / beta``.

Run from the repository root::

    python cases/metastable_merging.py                # particles and the PDE, about 30 s
    python cases/metastable_merging.py --no-pde       # the particles alone

The PDE (``solver.time_integrator = "implicit"``'s stepper with MUSCL, 512 cells) runs with
a small noise (``--pde-noise``, default 0.03: ``(sigma^2 / 2) Lap rho``) that keeps each
collapsed cluster a Gaussian of width about sigma (2.4 cells). Without it a cluster
collapses into one cell, where the flux pins it to the grid once the pull between clusters
is weaker than about ``m h`` (docs/long_times.md); resolved, MUSCL moves it with the pull
(2% slow at 2.4 cells; the upwind flux 17%). Its clusters' masses are the basin masses
(:func:`meanfield.clusters.basin_masses`: every cell's mass to its nearest cluster).

Measured (default beta = 5; AMD EPYC, 2 shared cores): the particles merge 10 times, the
last at t ~ 5.2e4, the plateaus after the formation as predicted to 3e-4; the PDE (its own
perturbed start) forms 4 clusters and merges 3 times (t = 116.6 .. 125.9, 857.7 .. 926.1,
4299 .. 4642) to one cluster in 9,598 steps and 19 s, its plateaus 0.6%, 0.6%, 0.4%, 0.2%
below the point clusters' of its basin masses (the clusters' width lowers the energy by
about beta sigma^2 = 0.45%). The mergers are those of SSPRK3 + MUSCL (388,219 steps, 24
minutes); on 1024 and 2048 cells the last comes one output later (4642 .. 5012): the merger
times are converged to the output spacing. (The implicit upwind stepper, 8,662 steps and
17 s, merges another pair second and the last at t ~ 9.6e3, and converges only at first
order: docs/long_times.md.)

Writes runs/metastable_merging/: staircase.png (energy vs rescaled time with the
predicted plateaus; the cluster tracks), clusters.csv and clusters_events.csv
(particles; the PDE's as pde_clusters*.csv). Prints the merge events.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

import meanfield as mf
from meanfield.clusters import ClusterTracker, basin_masses, point_cluster_energy, staircase
from meanfield.diagnostics import ClusterCriterion, find_particle_clusters
from meanfield.particles.system import ParticleState, ParticleSystem


def initial_angles(n: int, eps: float, seed: int) -> np.ndarray:
    """n equally spaced angles, each moved by ``eps`` times a standard normal."""
    rng = np.random.default_rng(seed)
    return 2 * np.pi * np.arange(n) / n + eps * rng.standard_normal(n)


def output_times(t_end: float, per_decade: int = 60) -> np.ndarray:
    """0, then geometric from 1e-2 to ``t_end`` (``per_decade`` per factor 10)."""
    k = int(math.ceil(per_decade * math.log10(t_end / 1e-2)))
    return np.r_[0.0, np.geomspace(1e-2, t_end, k + 1)]


def run_particles(beta: float, n: int, eps: float, seed: int, t_end: float):
    model = mf.AttentionModel(d=2, beta=beta, normalized=False, shift=True)
    theta = initial_angles(n, eps, seed)
    state = ParticleState.create(np.c_[np.cos(theta), np.sin(theta)])
    system = ParticleSystem(mf.DirectField(model), rtol=1e-7, atol=1e-9, max_steps=None)
    criterion = ClusterCriterion(mass=0.05)  # groups of at least 5% of the tokens: no single stragglers
    tracker = ClusterTracker()
    times, energies = [], []
    for t in output_times(t_end):
        if t > 0:
            system.advance(state, float(t))
        masses, centers = find_particle_clusters(state.x, state.weights, criterion)
        if masses.sum() >= 0.9:  # formed: the stragglers to their nearest cluster
            masses = basin_masses(state.x, state.weights, centers)
        tracker.update(t, masses, centers)
        times.append(t)
        energies.append(mf.energy(model, state.x, state.weights, method="direct"))
        if _last_masses(tracker) and max(_last_masses(tracker)) > 0.999:
            break  # one cluster holds all tokens: the staircase is complete
    return np.array(times), np.array(energies), tracker, state.steps


def run_pde(beta: float, cells: int, eps: float, seed: int, t_end: float, noise: float = 0.0,
            stepper: str = "implicit"):
    model = mf.AttentionModel(d=2, beta=beta, normalized=False, shift=True)
    mesh = mf.CircleMesh(cells)
    if stepper in ("implicit", "implicit_upwind"):
        # the long-time stepper (docs/long_times.md): steps set by the error, not by the empty
        # cells around collapsed clusters; MUSCL face values frozen over each step
        from meanfield.pde.implicit import ImplicitSimulation

        sim = ImplicitSimulation(mesh, model, scheme="muscl" if stepper == "implicit" else "upwind", noise=noise)
    elif stepper == "ssprk3":
        sim = mf.Simulation(mesh, model, scheme="muscl", noise=noise)
    else:
        raise ValueError(f"stepper must be 'implicit', 'implicit_upwind' or 'ssprk3', got {stepper!r}")
    rng = np.random.default_rng(seed)
    amps, phases = eps * rng.standard_normal(6), rng.uniform(0, 2 * np.pi, 6)

    def density(x):
        a = np.arctan2(x[:, 1], x[:, 0])
        return 1 + sum(amps[k - 1] * np.cos(k * a + phases[k - 1]) for k in range(1, 7))

    rho = mesh.cell_averages(density)
    state = mf.State(t=0.0, rho=rho / (rho @ mesh.areas))
    criterion = ClusterCriterion()
    # the last mergers close gaps near pi within one output interval: parents up to 0.8 pi away
    tracker = ClusterTracker(radius=0.8 * math.pi)
    times, energies = [], []
    for t in output_times(t_end, per_decade=30):
        if t > 0:
            sim.advance(state, float(t))
        masses, centers = mf.find_clusters(mesh, state.rho, criterion)
        formed = masses.sum() >= 0.9  # the clusters above the contrast level hold 90%: formed
        if formed:  # every cell's mass to its nearest cluster: the resolved clusters' tails count
            masses = basin_masses(mesh.centers, state.rho * mesh.areas, centers)
        tracker.update(t, masses, centers)
        times.append(t)
        energies.append(mf.energy(model, mesh.centers, state.rho * mesh.areas, method="direct"))
        if formed and masses.size == 1:
            break  # one cluster holds all the mass: the staircase is complete
    return np.array(times), np.array(energies), tracker, state.steps


def plateaus(tracker: ClusterTracker, beta: float) -> list:
    """The plateaus of :func:`staircase`, each predicted from the point clusters of its first
    snapshot whose tracked clusters hold 95% of the mass (after the formation phase): a
    list of ``(t_start, t_end, E)``; plateaus that never reach 95% are left out."""
    by_time = {}
    for t, _, m, c in tracker.tracks:
        by_time.setdefault(t, []).append((m, c))
    out = []
    for t0, t1, _ in staircase(tracker, beta, exact=True):
        formed = [t for t in tracker.times if t0 <= t <= t1 and sum(m for m, _ in by_time.get(t, [])) >= 0.95]
        if formed:
            rows = by_time[formed[0]]
            out.append((formed[0], t1, point_cluster_energy([m for m, _ in rows], [c for _, c in rows], beta)))
    return out


def _last_masses(tracker: ClusterTracker) -> list:
    """The masses of the clusters of the last snapshot."""
    t = tracker.times[-1]
    return [row[2] for row in tracker.tracks if row[0] == t]


def closest_gap(tracker: ClusterTracker, t: float) -> float:
    """The smallest geodesic gap between the clusters of the snapshot at ``t`` (nan if < 2)."""
    c = np.array([row[3] for row in tracker.tracks if row[0] == t])
    if len(c) < 2:
        return math.nan
    a = np.sort(np.arctan2(c[:, 1], c[:, 0]))
    gaps = np.diff(np.r_[a, a[0] + 2 * np.pi])
    return float(gaps.min())


def report(label: str, tracker: ClusterTracker, beta: float) -> None:
    print(f"{label}: {len(tracker.merges)} mergers")
    for ev in tracker.merges:
        gap = closest_gap(tracker, ev.t_prev)
        print(f"  t = {ev.t_prev:10.4g} .. {ev.t:<10.4g} (s = log t / beta = {math.log(ev.t) / beta:.3f}): "
              f"{ev.id_a} ({ev.mass_a:.3f}) + {ev.id_b} ({ev.mass_b:.3f}) -> {ev.id_c} ({ev.mass_c:.3f}); "
              f"closest gap before {gap:.3f} rad, 1 - cos = {1 - math.cos(gap):.3f}")


def draw(path: Path, beta: float, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs) + 1, 1, figsize=(9, 4.0 + 3.2 * len(runs)), constrained_layout=True,
                             gridspec_kw={"height_ratios": [1.3] + [1.0] * len(runs)})
    ax = axes[0]
    colors = {"particles": "C0", "PDE": "C3"}
    for label, (times, energies, tracker, _) in runs.items():
        keep = times > 0
        s = np.log(times[keep]) / beta
        ax.plot(s, energies[keep], color=colors[label], lw=1.8, label=f"{label}: measured energy")
        for k, (t0, t1, e) in enumerate(plateaus(tracker, beta)):
            s0, s1 = math.log(max(t0, 1e-2)) / beta, math.log(t1) / beta
            ax.hlines(e, s0, s1, colors="k", linestyles="--", lw=1.2,
                      label="predicted plateaus (point clusters of the tracked masses)")
        for t0, t1, e in plateaus(tracker, beta)[:-1]:
            gap = closest_gap(tracker, t0)
            if label == "particles" and math.isfinite(gap):
                ax.axvline(1 - math.cos(gap), color="0.5", lw=1.0, ls=":")
    ax.plot([], [], color="0.5", lw=1.0, ls=":", label="1 - cos(closest gap at the plateau's start)")
    ax.set_xlabel("rescaled time  s = log(t) / beta")
    ax.set_ylabel("energy  e^{-beta} E")
    ax.set_title(f"Metastable staircase, shifted USA on the circle, beta = {beta:g}")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    for axis, (label, (times, _, tracker, _)) in zip(axes[1:], runs.items()):
        tracker.plot_tracks(None, "circle", ax=axis, log_time=True,
                            title=f"{label}: cluster tracks (angle vs t; stars: mergers)")
        axis.set_xlim(0.3, times[-1] * 1.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beta", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--eps", type=float, default=0.05, help="perturbation of the uniform start")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--t-end", type=float, default=2e5)
    parser.add_argument("--no-pde", dest="pde", action="store_false",
                        help="skip the PDE (implicit MUSCL stepper on --cells cells)")
    parser.add_argument("--cells", type=int, default=512)
    parser.add_argument("--pde-noise", type=float, default=0.03,
                        help="noise sigma of the PDE (keeps collapsed clusters resolved; 0: none)")
    parser.add_argument("--pde-t-end", type=float, default=1e5)
    parser.add_argument("--out", type=Path, default=Path("runs/metastable_merging"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    wall = time.perf_counter()
    runs["particles"] = run_particles(args.beta, args.tokens, args.eps, args.seed, args.t_end)
    print(f"particles: {args.tokens} tokens, beta = {args.beta:g}, to t = {runs['particles'][0][-1]:.4g} in "
          f"{runs['particles'][3]} steps, {time.perf_counter() - wall:.1f} s")
    report("particles", runs["particles"][2], args.beta)
    runs["particles"][2].write_csv(args.out / "clusters.csv")
    if args.pde:
        wall = time.perf_counter()
        runs["PDE"] = run_pde(args.beta, args.cells, args.eps, args.seed, args.pde_t_end, noise=args.pde_noise)
        print(f"PDE: {args.cells} cells, noise {args.pde_noise:g}, to t = {runs['PDE'][0][-1]:.4g} in {runs['PDE'][3]} steps, "
              f"{time.perf_counter() - wall:.1f} s")
        report("PDE", runs["PDE"][2], args.beta)
        runs["PDE"][2].write_csv(args.out / "pde_clusters.csv")
    draw(args.out / "staircase.png", args.beta, runs)
    for label, (times, energies, tracker, _) in runs.items():
        segs = plateaus(tracker, args.beta)
        print(f"{label}: plateau  t range  predicted  measured (energy at the plateau's middle)")
        for t0, t1, e in segs:
            j = int(np.searchsorted(times, math.sqrt(t0 * t1)))  # the plateau's (geometric) middle
            print(f"  {t0:10.4g} .. {t1:<10.4g}  {e:.6f}  {energies[j]:.6f}  ({energies[j] / e - 1:+.1e})")
    print(f"wrote {args.out / 'staircase.png'}, {args.out / 'clusters.csv'}")


if __name__ == "__main__":
    main()

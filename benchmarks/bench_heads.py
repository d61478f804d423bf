"""Cost of a velocity made of several heads, of schedule switches and of random heads.

Usage: ``python benchmarks/bench_heads.py [--quick] [--rounds 6] [--budget 6] [--counts 4 16 64]``

About 1.5 minutes of CPU on one core (``--quick``: 15 s).

Two tables, after a line naming the machine (one process; every field pins BLAS to one
thread, and BLAS is limited to one thread for the whole run). Every time is CPU time of the
process (``time.process_time``: on a shared machine wall time charges the waits for a core
to the calls, a long call more often than a short one, which would make more heads look
dearer) and the minimum over single calls (the configurations of one case are timed in
interleaved rounds, at least ``--rounds``, more while ``--budget`` CPU seconds last); a
call of 1 s or more is timed once.

1. **Heads.** Seconds per call against the number of heads ``H = 1, 2, 4, 8``: head ``i``
   is SA with ``beta = 1 + i`` and weight ``1`` (``i`` even) or ``-0.5`` (``i`` odd), so no
   two heads are the same object or the same kernel. Cases: the PDE on the circle
   (``CircleMesh(512)``, muscl, backends direct and spectral), on the sphere (icosahedral
   level 3, 1280 cells, direct and spectral), particles (n = 2000 uniform on S^2, direct,
   RK4 with a fixed dt). ``field``: one evaluation of the velocity (PDE:
   ``sim.fv.normal_velocity(rho)``, the field at the edge points from the cell masses;
   particles: ``sim.velocity(state)``); ``step``: one whole ``sim.step`` (PDE: SSP-RK3, 3
   field evaluations, reconstruction and fluxes; particles: RK4, 4 evaluations), the same
   number of evaluations for every H. Times: the minimum; ratios: the median over the
   rounds of the ratio within a round. ``xH1``: ratio to H = 1; ``/H``: that ratio over H
   (1 for a cost proportional to H; below 1 where a fixed part, the fluxes, is shared);
   ``alone``: the field of the H heads together over the fields of each of those heads
   alone (a single-head velocity each, with its own plans), evaluated in turn in one timed
   call (1.00: each head costs what it costs alone; the spectral truncation grows with
   beta, so heads differ in cost). Below each case: a least-squares
   line ``a + b H`` through the four minima and the per-head overhead at H = 8
   (``alone`` - 1, in % of a head alone and in ms per head).

2. **Switches.** (a) A run to ``T`` with a schedule switching every ``T/11`` (``dt_sw``; 10
   switches; each segment has the same terms, 2 heads: SA beta 1 and SA beta 2 of weight
   -0.5, with backends of its own) against the run without schedule. ``steps``/``sched``:
   steps of the two runs (steps land on switch times, so a switch can add a short step);
   ``+/sw``: extra steps per switch; ``ms/step``: the shortest step of the plain runs; ``by
   steps``: the extra steps' time per switch (``+/sw x ms/step``); ``1st step``: the extra
   time of the first step of a new segment (its backends' plans made on first use, the rate
   bound of its terms: that step less the same step taken again, minima over the switches;
   PDE only); ``plain s``/``sched s``: the runs (minima); ``ms/switch``: the median over the
   rounds of ``(sched - plain) / 10``, which should be about ``by steps + 1st step``. Each
   run is a fresh simulation (its construction not timed). Particles: dopri5 (error
   controlled: a switch restarts the step-size controller and drops the reused last
   stage). (b) The time to build every backend of that schedule up front
   (``make_velocity``: 11 segments x 2 heads) and per backend, against one step of the
   plain run (the sphere direct step: the same 2 heads). (c) Random heads (``RandomHeads``,
   SA beta 1, iid N(0, 1/d) entries of Q, K, V, so spectral on the sphere is the general
   ``GeneralSphereField``): per layer, drawing the ``count`` heads (``draw``:
   ``RandomHeads.terms``, the draw and the models) and building their backends, against
   one step of that layer (``lay/step``); ``fixed ms``: one step of the same heads given
   as fixed terms, and ``rnd/fix`` the median ratio of the two steps taken in turn (a fixed
   segment keeps the plans of its backends, a random layer does not).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

import meanfield as mf
from _machine import cpu_name, usable_cores
from meanfield.dynamics.model import Head, RandomHeads, Terms, VelocityModel
from meanfield.geometry.sphere import load_icosahedral
from meanfield.initial import real_sph_harm
from meanfield.particles.system import ParticleState, ParticleSystem
from meanfield.pde.solver import make_velocity

HEADS = (1, 2, 4, 8)

#: CPU seconds of this process: on a shared machine wall time charges the waits for a core to
#: the calls, the long ones more often than the short ones (BLAS is limited to one thread for
#: the whole run, so this is the time of the one thread that computes).
clock = time.process_time


def timed(fn) -> float:
    start = clock()
    fn()
    return clock() - start


def measure(fn, calls: int, budget: float = 0.5) -> float:
    """Min seconds of one call of ``fn`` over ``calls`` calls, after one warm-up call; a
    warm-up of 1 s or more is the result; more calls (up to 30) while they fit in ``budget``
    seconds. (The minimum of single calls: on a loaded machine a
    long call is interrupted more often than a short one, and averages over loops would
    charge that to the expensive configurations.)"""
    first = timed(fn)
    if first >= 1.0:
        return first
    return min(timed(fn) for _ in range(max(calls, min(30, int(budget / first)))))


def paired(fa, fb, calls: int, budget: float = 1.0) -> tuple[float, float, float]:
    """``(min a, min b, median of a / b)`` over calls of ``fa`` and ``fb`` in turn (each pair
    sees the same load: the ratio of a pair is steadier than the ratio of two minima taken at
    different times), after one warm-up call of each; ``calls`` pairs or more (up to 30)
    while they fit in ``budget`` seconds, one pair when a warm-up takes 1 s or more."""
    ta, tb = [timed(fa)], [timed(fb)]
    if max(ta[0], tb[0]) < 1.0:
        ta, tb = [], []
        for _ in range(max(calls, min(30, int(budget / (timed(fa) + timed(fb)))))):
            ta.append(timed(fa))
            tb.append(timed(fb))
    ta, tb = np.array(ta), np.array(tb)
    return float(ta.min()), float(tb.min()), float(np.median(ta / tb))


class Interleaved:
    """Timings of several functions in interleaved rounds: ``add(key, fn)``, ``run(rounds)``,
    then ``best[key]``, the min seconds of one call, and ``ratio(a, b)``, the median over the
    rounds of the ratio of the two functions' times in the same round (the load of a shared
    machine drifts: the ratio of minima taken at different times would carry the drift).
    Each round calls each function enough times to last about ``target`` s, each call timed
    alone, and keeps the fastest."""

    def __init__(self, target: float = 0.02):
        self.fns, self.calls, self.rounds, self.target = {}, {}, {}, target

    def add(self, key, fn) -> None:
        first = timed(fn)  # warm-up: plans, caches
        self.fns[key] = fn
        self.calls[key] = max(1, int(self.target / max(first, 1e-6)))
        self.rounds[key] = []

    def run(self, rounds: int, budget: float = 0.0) -> int:
        """At least ``rounds`` rounds, more (up to 50) while ``budget`` seconds are not spent;
        returns the number of rounds."""
        begin, done = clock(), 0
        while done < rounds or (clock() - begin < budget and done < 50):
            for key, fn in self.fns.items():
                self.rounds[key].append(min(timed(fn) for _ in range(self.calls[key])))
            done += 1
        return done

    @property
    def best(self) -> dict:
        return {key: min(times) for key, times in self.rounds.items()}

    def ratio(self, a, b) -> float:
        return float(np.median(np.array(self.rounds[a]) / np.array(self.rounds[b])))


def head(d: int, i: int) -> Head:
    return Head(mf.AttentionModel(d=d, beta=1.0 + i), 1.0 if i % 2 == 0 else -0.5)


def two_heads(d: int) -> Terms:
    return Terms(d, (Head(mf.AttentionModel(d=d, beta=1.0)), Head(mf.AttentionModel(d=d, beta=2.0), -0.5)))


def circle_setup():
    mesh = mf.CircleMesh(512)
    return mesh, (1 + 0.3 * np.cos(3 * mesh.angles) + 0.1 * np.sin(5 * mesh.angles)) / (2 * np.pi)


def sphere_setup():
    mesh = load_icosahedral(3)
    # a smooth, strictly positive density (empty cells would be skipped by the field)
    return mesh, (1 + 0.3 * real_sph_harm(4, 2, mesh.centers) + 0.2 * real_sph_harm(2, 1, mesh.centers)) / (4 * np.pi)


def particle_points(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 3))
    return x / np.linalg.norm(x, axis=1)[:, None]


# -- table 1 ----------------------------------------------------------------------------------------
def pde_functions(mesh, rho, terms: Terms, backend: str):
    sim = mf.Simulation(mesh, VelocityModel(mesh.d, terms), backend=backend)

    def step():
        sim.step(mf.State(0.0, rho.copy()))

    return (lambda: sim.fv.normal_velocity(rho)), step, sim


def particle_functions(x0, terms: Terms, dt: float = 0.01):
    sim = ParticleSystem(make_velocity(VelocityModel(3, terms), "direct"), integrator="rk4", dt=dt, max_steps=None)
    w = np.full(x0.shape[0], 1.0 / x0.shape[0])
    state = ParticleState(0.0, x0, w)

    def step():
        sim.step(ParticleState(0.0, x0, w))

    return (lambda: sim.velocity(state)), step, sim


def heads_case(label: str, make, d: int, rounds: int, budget: float, heads=HEADS) -> None:
    timer = Interleaved()
    sims = []
    for H in heads:
        field, step, sim = make(Terms(d, tuple(head(d, i) for i in range(H))))
        timer.add(("field", H), field)
        timer.add(("step", H), step)
        sims.append(sim)
    alone = [make(Terms(d, (head(d, i),)))[0] for i in range(max(heads))]
    for H in heads:  # the H heads each alone, in turn: one call as long as the H heads' together
        timer.add(("alone", H), lambda fns=alone[:H]: [f() for f in fns])
    done = timer.run(rounds, budget)
    rejected = sum(getattr(s, "rejected", 0) for s in sims)
    b, r = timer.best, timer.ratio
    h1 = heads[0]
    for H in heads:
        f, s = b[("field", H)], b[("step", H)]
        fr, sr = r(("field", H), ("field", h1)), r(("step", H), ("step", h1))
        print(f"{label if H == h1 else '':>18} {H:2d} {f * 1e3:9.2f} {fr:6.2f} {fr / H:5.2f} "
              f"{r(('field', H), ('alone', H)):6.2f} {s * 1e3:9.2f} {sr:6.2f} {sr / H:5.2f}")
    hs = np.array(heads, dtype=float)
    fa, fb = np.polyfit(hs, [b[("field", H)] for H in heads], 1)[::-1]
    sa, sb = np.polyfit(hs, [b[("step", H)] for H in heads], 1)[::-1]
    top = heads[-1]
    excess = r(("field", top), ("alone", top)) - 1.0
    print(f"{'':>18} fit: field {fa * 1e3:.2f} + {fb * 1e3:.2f} H ms, step {sa * 1e3:.2f} + {sb * 1e3:.2f} H ms; "
          f"overhead at H={top}: {100 * excess:+.0f}% of a head alone ({excess * b[('alone', top)] / top * 1e3:+.3f} ms "
          f"per head)" + (f"; {rejected} steps rejected" if rejected else "") + f"; {done} rounds", flush=True)


def table_heads(args) -> None:
    print("\n## 1. Cost against the number of heads H (head i: SA beta 1+i, weight 1 / -0.5 alternating)")
    print(f"{'case':>18} {'H':>2} {'field ms':>9} {'xH1':>6} {'/H':>5} {'alone':>6} {'step ms':>9} {'xH1':>6} {'/H':>5}")
    circle, rho_c = circle_setup()
    sphere, rho_s = sphere_setup()
    for backend in ("direct", "spectral"):
        heads_case(f"circle 512 {backend[:4]}", lambda t: pde_functions(circle, rho_c, t, backend), 2, args.rounds,
                   args.budget)
    for backend in ("direct", "spectral"):
        heads_case(f"sphere L3 {backend[:4]}", lambda t: pde_functions(sphere, rho_s, t, backend), 3, args.rounds,
                   args.budget)
    x0 = particle_points(args.particles)
    heads_case(f"particles {args.particles} dir", lambda t: particle_functions(x0, t), 3, max(2, args.rounds - 1),
               args.budget)


# -- table 2 ----------------------------------------------------------------------------------------
def schedule_model(d: int, t_end: float, switches: int) -> VelocityModel:
    return VelocityModel(d, two_heads(d), schedule=[(t_end * k / (switches + 1), two_heads(d)) for k in range(1, switches + 1)])


def switch_case(label, d, t_end, switches, run, rounds, first_step=None) -> float:
    """Prints a row; returns the plain run's seconds per step."""
    plain, sched = VelocityModel(d, two_heads(d)), schedule_model(d, t_end, switches)
    best, steps, diffs = {}, {}, []
    for _ in range(rounds):
        walls = {}
        for name, model in (("plain", plain), ("sched", sched)):
            walls[name], steps[name], shortest = run(model, t_end)
            best[name] = min(best.get(name, np.inf), walls[name])
            if name == "plain":
                best["step"] = min(best.get("step", np.inf), shortest)
        diffs.append(walls["sched"] - walls["plain"])
    per_step = best["step"]  # the shortest step of the plain runs (steps differ little in cost)
    extra_steps = (steps["sched"] - steps["plain"]) / switches
    by_steps = extra_steps * per_step
    first = "" if first_step is None else f"{first_step(sched) * 1e3:9.2f}"
    measured = float(np.median(diffs)) / switches  # the median over the rounds of the paired difference
    print(f"{label:>20} {t_end / (switches + 1):6.3f} {steps['plain']:6d} {steps['sched']:6d} {extra_steps:6.2f} "
          f"{per_step * 1e3:8.2f} {by_steps * 1e3:9.2f} {first:>9} {best['plain']:7.3f} {best['sched']:7.3f} "
          f"{measured * 1e3:9.2f}", flush=True)
    return per_step


def timed_advance(sim, state, t_end):
    """``(wall seconds, steps, shortest step's seconds)`` of ``sim.advance(state, t_end)``."""
    marks = [clock()]
    sim.advance(state, t_end, callback=lambda s, dt: marks.append(clock()))
    return marks[-1] - marks[0], state.steps, float(np.min(np.diff(marks)))


def pde_run(mesh, rho, backend):
    def run(model, t_end):
        sim = mf.Simulation(mesh, model, backend=backend)
        return timed_advance(sim, mf.State(0.0, rho.copy()), t_end)

    return run


def pde_first_step(mesh, rho, backend):
    """The extra time of the first step of a new segment (its backends' plans made on first
    use, its rate bound): min over the switches of that step, less the min of the same step
    taken again."""
    def first_step(model):
        sim = mf.Simulation(mesh, model, backend=backend)
        state = mf.State(0.0, rho.copy())
        first, again = [], []
        for t in model.switch_times[1:]:
            sim.advance(state, t)  # lands on t: no stage of the new segment evaluated yet
            first.append(timed(lambda: sim.step(mf.State(state.t, state.rho.copy()))))
            again.append(min(timed(lambda: sim.step(mf.State(state.t, state.rho.copy()))) for _ in range(2)))
        return min(first) - min(again)

    return first_step


def particle_run(x0):
    def run(model, t_end):
        sim = ParticleSystem(make_velocity(model, "direct"), integrator="dopri5", max_steps=None)
        return timed_advance(sim, ParticleState.create(x0), t_end)

    return run


def random_case(label, d, mesh, rho, backend, counts, rounds) -> None:
    for count in counts:
        rh = RandomHeads(d, count, interval=1.0, Q_std=d**-0.5, K_std=d**-0.5, V_std=d**-0.5)
        sim = mf.Simulation(mesh, VelocityModel(d, random_heads=rh), backend=backend)  # builds layer 0
        velocity = sim.velocity_field
        draw = build = np.inf
        reps = rounds if count <= 16 else 1
        for k in range(1, reps + 1):  # a new layer each time
            start = clock()
            rh.terms(k)  # draw and models (kept: the layer below reuses them)
            mid = clock()
            velocity.layer(k + 0.5)  # the backends of layer k
            stop = clock()
            draw, build = min(draw, mid - start), min(build, stop - mid)
        k = reps
        fixed = mf.Simulation(mesh, VelocityModel(d, rh.terms(k)), backend=backend)
        step, step_fixed, ratio = paired(lambda: sim.step(mf.State(k + 0.5, rho.copy())),
                                         lambda: fixed.step(mf.State(k + 0.5, rho.copy())), rounds)
        layer = draw + build
        print(f"{label if count == counts[0] else '':>18} {count:5d} {draw * 1e3:8.2f} {build * 1e3:10.2f} "
              f"{layer * 1e3:10.2f} {step * 1e3:10.1f} {layer / step:8.3f} {step_fixed * 1e3:10.1f} {ratio:7.2f}",
              flush=True)


def table_switches(args) -> None:
    switches = 10
    circle, rho_c = circle_setup()
    sphere, rho_s = sphere_setup()
    x0 = particle_points(args.switch_particles, seed=1)
    print(f"\n## 2a. Schedule switches: {switches} switches every T/11 (2 heads per segment, the same terms) "
          f"against no schedule")
    print(f"{'case':>20} {'dt_sw':>6} {'steps':>6} {'sched':>6} {'+/sw':>6} {'ms/step':>8} {'by steps':>9} "
          f"{'1st step':>9} {'plain s':>7} {'sched s':>7} {'ms/switch':>9}")
    per_step = {}
    for label, d, t_end, run, first, key in (
            ("circle 512 direct", 2, args.t_circle, pde_run(circle, rho_c, "direct"),
             pde_first_step(circle, rho_c, "direct"), ("circle", "direct")),
            ("circle 512 spectral", 2, args.t_circle, pde_run(circle, rho_c, "spectral"),
             pde_first_step(circle, rho_c, "spectral"), ("circle", "spectral")),
            ("sphere L3 spectral", 3, args.t_sphere, pde_run(sphere, rho_s, "spectral"),
             pde_first_step(sphere, rho_s, "spectral"), ("sphere", "spectral")),
            (f"particles {args.switch_particles} dopri5", 3, args.t_particles, particle_run(x0), None, None)):
        per_step[key] = switch_case(label, d, t_end, switches, run, args.switch_rounds, first)

    print(f"\n## 2b. Building every backend of the schedule up front ({switches + 1} segments x 2 heads)")
    print(f"{'case':>18} {'backends':>8} {'build ms':>9} {'ms each':>8} {'step ms':>8} {'build/step':>10}")
    sim_s = mf.Simulation(sphere, two_heads(3), backend="direct")  # (not in 2a: a run of it is slow)
    per_step[("sphere", "direct")] = measure(lambda: sim_s.step(mf.State(0.0, rho_s.copy())), 3)
    for label, mesh, key in (("circle 512", circle, "circle"), ("sphere L3", sphere, "sphere")):
        model = schedule_model(mesh.d, 1.0, switches)
        n_t, n_s = mesh.edge_points.shape[0] * mesh.edge_points.shape[1], mesh.n_cells
        for backend in ("direct", "spectral"):
            make_velocity(two_heads(mesh.d), backend, n_targets=n_t, n_sources=n_s)  # warm-up (imports, tables)
            t = measure(lambda: make_velocity(model, backend, n_targets=n_t, n_sources=n_s), args.rounds)
            count = 2 * (switches + 1)
            step = per_step[(key, backend)]
            print(f"{label + ' ' + backend[:4]:>18} {count:8d} {t * 1e3:9.2f} {t / count * 1e3:8.3f} {step * 1e3:8.2f} "
                  f"{t / step:10.2f}", flush=True)

    print("\n## 2c. Random heads: per layer, drawing count heads and building their backends, against one step")
    print(f"{'case':>18} {'count':>5} {'draw ms':>8} {'backends':>10} {'layer ms':>10} {'step ms':>10} "
          f"{'lay/step':>8} {'fixed ms':>10} {'rnd/fix':>7}")
    for label, d, mesh, rho, backend in (("circle 512 dire", 2, circle, rho_c, "direct"),
                                         ("circle 512 spec", 2, circle, rho_c, "spectral"),
                                         ("sphere L3 dire", 3, sphere, rho_s, "direct"),
                                         ("sphere L3 spec", 3, sphere, rho_s, "spectral")):
        random_case(label, d, mesh, rho, backend, args.counts, args.rounds)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="repeats (the minimum is reported)")
    p.add_argument("--budget", type=float, default=6.0, help="CPU seconds of extra rounds per case of table 1")
    p.add_argument("--switch-rounds", type=int, default=3)
    p.add_argument("--particles", type=int, default=2000)
    p.add_argument("--switch-particles", type=int, default=500)
    p.add_argument("--counts", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--t-circle", type=float, default=5.0)
    p.add_argument("--t-sphere", type=float, default=5.0)
    p.add_argument("--t-particles", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (a smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.budget, args.switch_rounds, args.particles, args.switch_particles = 2, 0.0, 1, 300, 200
        args.counts, args.t_circle, args.t_sphere, args.t_particles = [2, 4], 1.0, 1.0, 1.0
    print(f"# {cpu_name()}, {usable_cores()} cores usable ({os.cpu_count()} visible), one process, "
          f"numpy {np.__version__}, BLAS 1 thread; CPU time of the process (min over repeats); muscl, SSP-RK3 (PDE), "
          f"tolerance 1e-12 (spectral)")
    start, wall = clock(), time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        table_heads(args)
        table_switches(args)
    print(f"\n# total {clock() - start:.0f} s CPU, {time.perf_counter() - wall:.0f} s wall")


if __name__ == "__main__":
    main()

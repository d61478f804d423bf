"""The velocity model as a sum of terms (:mod:`meanfield.dynamics`): case keys, schedules,
random heads, the energy of composite models, and runs from the command line."""

import math
import shutil

import numpy as np
import pytest

import meanfield as mf
from meanfield.cli import main
from meanfield.dynamics.model import Head, RandomHeads, Terms, VelocityModel
from meanfield.dynamics.perceptron import Perceptron
from meanfield.dynamics.velocity import Velocity
from meanfield.geometry.mesh import CircleMesh
from meanfield.io.case import CaseError, resolve_case
from meanfield.particles.system import ParticleState, ParticleSystem
from meanfield.pde.solver import Simulation, State, make_velocity
from meanfield.run import build_model
from test_restart import damage

TWO_HEADS = """
[domain]
cells = 128
[model]
heads = [{kind = "SA", beta = 9}, {kind = "SA", beta = 1, weight = -0.5}]
[initial]
kind = "modes"
modes = [{k = 3, amplitude = 0.02}, {k = 4, amplitude = 0.02, phase = 0.5}]
[solver]
t_end = 2.0
[output]
every = 0.5
plots = false
"""


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def resolve(model: dict, **solver):
    raw = {"domain": {"manifold": "circle", "cells": 64}, "model": model}
    if solver:
        raw["solver"] = solver
    return resolve_case(raw)


# -- case keys ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model, key, words", [
    ({"heads": [{"beta": 2, "temperature": 1}]}, "model.heads", "unknown field 'temperature'"),
    ({"heads": [{"kind": "XA"}]}, "model.heads", "head 0: kind: must be one of"),
    ({"heads": [{"beta": -1}]}, "model.heads", "head 0: beta: must be >= 0"),
    ({"heads": [{"Q": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}]}, "model.heads", "head 0: Q: must be a 2 x 2"),
    ({"heads": [{"weight": "big"}]}, "model.heads", "weight: must be a number"),
    ({"heads": [{}], "beta": 3}, "model.beta", "cannot be given together with model.heads"),
    ({"heads": [{}], "kind": "USA"}, "model.kind", "cannot be given together with model.heads"),
    ({"random_heads": {"count": 2, "interval": 1}, "Q": [[1, 0], [0, 1]]}, "model.Q", "model.random_heads"),
    ({"random_heads": {"count": 2, "interval": 1}, "heads": [{}]}, "model.heads", "model.random_heads"),
    ({"random_heads": {"count": 0, "interval": 1}}, "model.random_heads", "count: must be >= 1"),
    ({"random_heads": {"count": 2}}, "model.random_heads", "missing field 'interval'"),
    ({"random_heads": {"count": 2, "interval": 0}}, "model.random_heads", "interval: must be > 0"),
    ({"perceptron": {"W": [[1, 0, 0], [0, 1, 0]]}}, "model.perceptron", "missing field 'U'"),
    ({"perceptron": {"W": [[1, 0, 0]], "U": [[1, 0], [0, 1], [0, 0]]}}, "model.perceptron", "W: must be a 2 x m"),
    ({"perceptron": {"W": [[1, 0, 0], [0, 1, 0]], "U": [[1, 0], [0, 1]]}}, "model.perceptron",
     "U: must be a 3 x 2 array (m x d: W is 2 x 3, so U must be 3 x 2), got shape (2, 2)"),
    ({"perceptron": {"W": [[1, 0], [0, 1]], "U": [[1, 0], [0, 1]], "b": [0, 0, 0]}}, "model.perceptron",
     "b: must have m = 2 entries"),
    ({"perceptron": {"W": [[1, 0], [0, 1]], "U": [[1, 0], [0, 1]], "activation": "swish"}}, "model.perceptron",
     "activation: must be one of 'relu', 'gelu', 'tanh', 'sigmoid', 'identity', got 'swish'"),
    ({"schedule": [{"t": 1.0}, {"t": 0.5}]}, "model.schedule", "entry 1: t = 0.5 must be larger"),
    ({"schedule": [{"t": 20.0}]}, "model.schedule", "entry 0: t = 20 is beyond solver.t_end = 10"),
    ({"schedule": [{"heads": []}]}, "model.schedule", "entry 0: missing field 't'"),
    ({"schedule": [{"t": 1, "heads": [{"beta": -2}]}]}, "model.schedule", "entry 0: heads: head 0: beta"),
    ({"schedule": [{"t": 1, "perceptron": {"W": [[1]], "U": [[1, 0]]}}]}, "model.schedule", "perceptron: W"),
])
def test_every_new_key_is_checked_and_named(model, key, words):
    with pytest.raises(CaseError) as info:
        resolve(model)
    assert info.value.key == key and words in info.value.reason, (info.value.key, info.value.reason)


def test_bad_keys_exit_2_from_the_command_line(capsys, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TWO_HEADS)
    rc, _, err = cli(capsys, "run", path, "--set", "model.beta=3", "--out", tmp_path / "o")
    assert rc == 2 and "model.beta: cannot be given together with model.heads" in err and "Traceback" not in err
    rc, _, err = cli(capsys, "particles", path, "--set", 'model.perceptron={W=[[1,0]], U=[[1,0]]}',
                     "--out", tmp_path / "p")
    assert rc == 2 and "model.perceptron: W: must be a 2 x m" in err and len(err.strip().splitlines()) == 1


def test_resolved_case_round_trips_and_keeps_no_one_head_keys(tmp_path):
    case = resolve({"heads": [{"beta": 9}, {"beta": 1, "weight": -0.5, "kind": "USA"}], "shift": True,
                    "schedule": [{"t": 2.0, "heads": [{"beta": 4}]}]})
    m = case["model"]
    assert m["kind"] is None and m["beta"] is None
    assert [h["shift"] for h in m["heads"]] == [True, True] and m["schedule"][0]["heads"][0]["shift"] is True
    again = resolve_case(mf.io.case.dump_case(case) if hasattr(mf, "io") else case)
    assert again["model"] == m
    model = build_model(case, 2)
    assert isinstance(model, VelocityModel) and model.switch_times == (0.0, 2.0)
    assert [h.weight for h in model.segments[0].heads] == [1.0, -0.5]
    assert not model.segments[0].heads[1].attention.normalized


# -- the model ---------------------------------------------------------------------------------
def test_terms_sum_their_heads_and_one_head_is_the_backend_bit_for_bit():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(300, 3))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    w = rng.random(300)
    a = mf.AttentionModel(d=3, beta=4.0)
    b = mf.AttentionModel(d=3, beta=1.5, normalized=False, V=-np.eye(3))
    one = Velocity(a, mf.DirectField)
    assert np.array_equal(one(y, y, w), mf.DirectField(a)(y, y, w))
    p = Perceptron(W=rng.normal(size=(3, 4)), U=rng.normal(size=(4, 3)), b=rng.normal(size=4), activation="gelu")
    two = Velocity(Terms(3, (Head(a, 0.7), Head(b, -1.3)), p), mf.DirectField)
    expect = 0.7 * mf.DirectField(a)(y, y, w) - 1.3 * mf.DirectField(b)(y, y, w) + p(y)
    assert np.abs(two(y, y, w) - expect).max() <= 1e-15 * np.abs(expect).max() * 10
    got = two(y, y, w)
    assert np.abs(np.einsum("ij,ij->i", got, y)).max() <= 1e-14 * np.abs(got).max()  # tangent
    raw = two(y, y, w, project=False)
    expect_raw = (0.7 * mf.DirectField(a)(y, y, w, project=False) - 1.3 * mf.DirectField(b)(y, y, w, project=False)
                  + p(y, project=False))
    assert np.abs(raw - expect_raw).max() <= 1e-14 * np.abs(expect_raw).max()
    # plans give the same bits as arrays
    plan = two.plan(y)
    assert np.array_equal(two(plan, plan, w), two(y, y, w))


def test_schedule_switch_times_and_terms():
    a, b = mf.AttentionModel(d=2, beta=9.0), mf.AttentionModel(d=2, beta=1.0)
    model = VelocityModel(2, a, [(1.0, b), (2.5, Terms(2))])
    assert model.terms_at(0.0).heads[0].attention is a and model.terms_at(0.999).heads[0].attention is a
    assert model.terms_at(1.0).heads[0].attention is b  # right-continuous
    assert model.terms_at(3.0).heads == ()
    assert model.next_switch(0.0) == 1.0 and model.next_switch(1.0) == 2.5 and model.next_switch(2.5) == math.inf
    with pytest.raises(ValueError, match="must be larger"):
        VelocityModel(2, a, [(1.0, b), (1.0, a)])


def test_random_heads_are_a_function_of_the_seed_and_the_layer():
    r1 = RandomHeads(d=3, count=4, interval=0.3, seed=7)
    r2 = RandomHeads(d=3, count=4, interval=0.3, seed=7)
    for k in (0, 1, 5):
        for m1, m2 in zip(r1.terms(k).heads, r2.terms(k).heads):
            assert np.array_equal(m1.attention.Q, m2.attention.Q) and np.array_equal(m1.attention.V, m2.attention.V)
    assert not np.array_equal(r1.terms(0).heads[0].attention.Q, r1.terms(1).heads[0].attention.Q)
    assert all(h.weight == 0.25 for h in r1.terms(3).heads)
    # layers: [k interval, (k+1) interval), boundaries exact by multiplication
    for k in range(200):
        t = r1.start(k)
        assert r1.layer(t) == k and r1.layer(np.nextafter(t, -1.0)) == max(k - 1, 0)
    model = VelocityModel(3, random_heads=r1)
    assert model.next_switch(0.0) == 0.3 and model.next_switch(0.3) == r1.start(2)
    # the entries have standard deviation Q_std
    q = np.concatenate([r1.draw(k)[0].ravel() for k in range(200)])
    assert abs(q.std() - 1.0) < 0.03 and abs(q.mean()) < 0.03


def test_random_heads_pde_and_particles_see_the_same_heads():
    mesh = CircleMesh(64)
    rh = RandomHeads(d=2, count=3, interval=0.25, seed=11, beta=2.0)
    sim = Simulation(mesh, VelocityModel(2, random_heads=rh), backend="direct")
    rh2 = RandomHeads(d=2, count=3, interval=0.25, seed=11, beta=2.0)
    system = ParticleSystem(make_velocity(VelocityModel(2, random_heads=rh2), "direct"), dt=0.05)
    for t in (0.0, 0.3, 0.74, 1.0):
        a, b = sim.velocity_field.terms_at(t), system.velocity_field.terms_at(t)
        assert all(np.array_equal(x.attention.K, y.attention.K) for x, y in zip(a.heads, b.heads))
    # steps land on the layer boundaries
    state = State(0.0, np.ones(64) / (2 * np.pi))
    times = []
    sim.advance(state, 1.0, lambda st, dt: times.append(st.t))
    assert all(any(t == rh.start(k) for t in times) for k in range(1, 5))


# -- a schedule is its segments run back to back -------------------------------------------------
def _pde(model, rho, t0, t1):
    sim = Simulation(CircleMesh(128), model, backend="direct")
    state = State(t0, rho.copy())
    sim.advance(state, t1)
    return state


def test_a_schedule_equals_its_segments_back_to_back_pde():
    mesh = CircleMesh(128)
    th = mesh.angles
    rho0 = (1 + 0.1 * np.cos(3 * th) + 0.05 * np.sin(4 * th)) / (2 * np.pi)
    a = Terms(2, (Head(mf.AttentionModel(d=2, beta=9.0)), Head(mf.AttentionModel(d=2, beta=1.0), -0.5)))
    b = Terms(2, (), Perceptron(W=[[1.0, 0.0], [0.0, 0.5]], U=[[0.5, 0.0], [0.0, 1.0]], activation="tanh"))
    c = mf.AttentionModel(d=2, beta=4.0, normalized=False)
    sched = _pde(VelocityModel(2, a, [(0.7, b), (1.3, c)]), rho0, 0.0, 2.0)
    s1 = _pde(VelocityModel(2, a), rho0, 0.0, 0.7)
    s2 = _pde(VelocityModel(2, b), s1.rho, 0.7, 1.3)
    s3 = _pde(VelocityModel(2, c), s2.rho, 1.3, 2.0)
    assert sched.t == s3.t == 2.0
    assert np.array_equal(sched.rho, s3.rho)  # measured: bitwise
    assert sched.steps == s1.steps + s2.steps + s3.steps


@pytest.mark.parametrize("integrator", ["dopri5", "rk4"])
def test_a_schedule_equals_its_segments_back_to_back_particles(integrator):
    rng = np.random.default_rng(2)
    x0 = rng.normal(size=(60, 3))
    x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    a = mf.AttentionModel(d=3, beta=3.0)
    b = Terms(3, (Head(mf.AttentionModel(d=3, beta=1.0, normalized=False), -1.0),),
              Perceptron(W=np.eye(3)[:, :2], U=np.eye(3)[:2], activation="relu"))
    kw = {"integrator": integrator, "dt": "auto" if integrator == "dopri5" else 0.01}

    def run(model, x, t0, t1):
        system = ParticleSystem(make_velocity(model, "direct"), **kw)
        state = ParticleState(t0, x.copy(), np.full(len(x), 1.0 / len(x)))  # (as restored: no renormalization)
        system.advance(state, t1)
        return state

    sched = run(VelocityModel(3, a, [(0.55, b)]), x0, 0.0, 1.2)
    s1 = run(VelocityModel(3, a), x0, 0.0, 0.55)
    s2 = run(VelocityModel(3, b), s1.x, 0.55, 1.2)
    assert np.array_equal(sched.x, s2.x), np.abs(sched.x - s2.x).max()


def test_schedule_restart_and_uninterrupted_run_agree(capsys, tmp_path):
    text = TWO_HEADS.replace("[initial]", 'schedule = [{t = 0.75, heads = [{beta = 4}]}, {t = 1.25, heads = '
                             '[{kind = "USA", beta = 1}], perceptron = {W = [[1, 0], [0, 1]], U = [[1, 0], [0, 1]], '
                             'activation = "tanh"}}]\n[initial]')
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert cli(capsys, "run", path, "--out", tmp_path / "full", "--quiet")[0] == 0
    # a schedule beyond t_end is refused, so the run is cut short as a killed run would be
    rc, _, err = cli(capsys, "run", path, "--set", "solver.t_end=1.0", "--out", tmp_path / "short", "--quiet")
    assert rc == 2 and "model.schedule: entry 1: t = 1.25 is beyond solver.t_end = 1" in err
    shutil.copytree(tmp_path / "full", tmp_path / "part")
    damage(tmp_path / "part", 2)  # snapshots after t = 1.0 lost, snapshot 2 half written
    rc, _, err = cli(capsys, "run", path, "--restart", tmp_path / "part", "--quiet")
    assert rc == 0, err
    a, b = np.load(tmp_path / "full" / "final.npz"), np.load(tmp_path / "part" / "final.npz")
    assert np.array_equal(a["density"], b["density"]) and np.array_equal(a["velocity"], b["velocity"])
    rows = (tmp_path / "full" / "diagnostics.csv").read_text().splitlines()
    assert rows[0].split(",")[4] == "energy"
    # two SA heads, then an SA head: no gradient flow, the energy column is empty; from
    # t = 1.25 a USA head with V = Q^T K and a perceptron W = U^T: a gradient flow
    energies = [r.split(",")[4] for r in rows[1:]]
    assert energies[:3] == ["", "", ""] and all(e != "" for e in energies[3:])
    values = [float(e) for e in energies[3:]]
    assert all(b >= a for a, b in zip(values, values[1:]))  # ascends


def test_random_heads_restart_equals_the_uninterrupted_run(capsys, tmp_path):
    text = TWO_HEADS.replace('heads = [{kind = "SA", beta = 9}, {kind = "SA", beta = 1, weight = -0.5}]',
                             "random_heads = {count = 4, interval = 0.3, seed = 5, beta = 2}")
    path = tmp_path / "c.toml"
    path.write_text(text)
    for cmd in ("run", "particles"):
        extra = ("--n", 200) if cmd == "particles" else ()
        assert cli(capsys, cmd, path, *extra, "--out", tmp_path / f"{cmd}full", "--quiet")[0] == 0
        assert cli(capsys, cmd, path, *extra, "--set", "solver.t_end=1.0", "--out", tmp_path / f"{cmd}part",
                   "--quiet")[0] == 0
        rc, _, err = cli(capsys, cmd, path, *extra, "--restart", tmp_path / f"{cmd}part", "--quiet")
        assert rc == 0, err
        a, b = np.load(tmp_path / f"{cmd}full" / "final.npz"), np.load(tmp_path / f"{cmd}part" / "final.npz")
        key = "density" if cmd == "run" else "points"
        assert np.array_equal(a[key], b[key]), (cmd, np.abs(a[key] - b[key]).max())


# -- energy --------------------------------------------------------------------------------------
def test_energy_of_a_gradient_composite_ascends_and_of_others_is_undefined():
    mesh = CircleMesh(128)
    rho0 = (1 + 0.2 * np.cos(2 * mesh.angles - 0.3)) / (2 * np.pi)
    qk = np.array([[1.0, 0.4], [0.4, 0.5]])
    heads = (Head(mf.AttentionModel(d=2, beta=2.0, K=qk, V=qk, normalized=False), 1.0),
             Head(mf.AttentionModel(d=2, beta=0.5, normalized=False), -0.3))
    p = Perceptron(W=np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]) * [0.8, 0.3, -0.4], U=[[1, 0], [0, 1], [0.5, 0.5]],
                   activation="sigmoid")
    model = VelocityModel(2, Terms(2, heads, p))
    assert model.segments[0].gradient_weights() is not None
    sim = Simulation(mesh, model, backend="direct")
    state = State(0.0, rho0.copy())
    # the gradient: E's rate is the integral of |X|^2 (to the time error of the difference)
    m = state.rho * mesh.areas
    v = sim.velocity(state.rho)
    rate = float(m @ np.einsum("ij,ij->i", v, v))
    h = 1e-4
    e0 = mf.diagnostics.run_energy(model, mesh.centers, m)
    sim.advance(state, h)
    e1 = mf.diagnostics.run_energy(model, mesh.centers, state.rho * mesh.areas)
    assert abs((e1 - e0) / h / rate - 1) < 1e-3, ((e1 - e0) / h, rate)  # measured 3.1e-4
    energies = []
    for t in np.linspace(0.25, 2.0, 8):
        sim.advance(state, float(t))
        energies.append(mf.diagnostics.run_energy(model, mesh.centers, state.rho * mesh.areas, state.t))
    assert all(np.isfinite(energies))
    assert all(b > a for a, b in zip(energies, energies[1:])), energies
    # SA heads, an asymmetric Q^T K, a perceptron not in gradient form: undefined (None)
    for terms in (Terms(2, (Head(mf.AttentionModel(d=2, beta=2.0)), Head(mf.AttentionModel(d=2, beta=1.0), 0.5))),
                  Terms(2, (Head(mf.AttentionModel(d=2, beta=2.0, K=[[1, 1], [0, 1]], normalized=False)),
                            Head(mf.AttentionModel(d=2, beta=1.0, normalized=False), 0.5))),
                  Terms(2, (), Perceptron(W=[[1.0, 2.0], [0.0, 1.0]], U=[[1, 0], [0, 1]]))):
        assert mf.diagnostics.run_energy(VelocityModel(2, terms), mesh.centers, m) is None


def test_two_head_case_runs_from_the_cli_with_its_header(capsys, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TWO_HEADS)
    rc, out, err = cli(capsys, "run", path, "--out", tmp_path / "o")
    assert rc == 0, err
    assert "SA beta=9 + (-0.5) SA beta=1" in err + out
    rc, _, err = cli(capsys, "run", path, "--set", 'solver.scheme="spectral"', "--out", tmp_path / "s")
    assert rc == 2 and "solver.scheme" in err and "one fixed attention head" in err


def test_w1_to_a_target_is_a_column_and_printed(capsys, tmp_path):
    text = """
[domain]
cells = 64
[model]
heads = []
perceptron = {W = [[0.0, 0.0], [0.0, 0.0]], U = [[1, 0], [0, 1]]}
[initial]
kind = "points"
points = [[1, 0], [0, 1], [-1, 0]]
weights = [0.5, 0.25, 0.25]
[solver]
t_end = 1.0
[output]
plots = false
[diagnostics]
target_points = [[1, 0], [0, 2]]
target_weights = [2, 1]
"""
    path = tmp_path / "c.toml"
    path.write_text(text)
    rc, out, err = cli(capsys, "particles", path, "--out", tmp_path / "p")
    assert rc == 0, err
    # X = 0: the tokens stay; W1 to 2/3 delta(0) + 1/3 delta(pi/2) from 1/2 delta(0) + 1/4 delta(pi/2) +
    # 1/4 delta(pi): 1/12 at pi/2 -> 0 ... the optimal plan moves 1/6 from pi to 0 (pi/6 * ... ) and
    # 1/12 from pi to pi/2: 1/6 pi + 1/12 pi/2 = 5 pi / 24
    rows = np.genfromtxt(tmp_path / "p" / "diagnostics.csv", delimiter=",", names=True)
    assert np.allclose(rows["w1_target"], 5 * np.pi / 24, rtol=0, atol=1e-14)
    assert "W1 to the target" in err + out
    with pytest.raises(CaseError, match="one weight per target point"):
        resolve_case({"diagnostics": {"target_points": [[1, 0]], "target_weights": [1, 2]}})


def test_random_layers_keep_one_plan_per_head_slot():
    """A plan keeps each random head's prepared points for the layer (one per slot, replaced
    when the layer's heads are redrawn), and gives the bits of unplanned points."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 2))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = np.full(50, 0.02)
    velocity = make_velocity(VelocityModel(2, random_heads=RandomHeads(d=2, count=3, interval=1.0, seed=1)),
                             "spectral")
    plan = velocity.plan(x)
    for t in (0.0, 0.5, 1.0, 2.5):
        assert np.array_equal(velocity(plan, plan, w, t=t), velocity(x, x, w, t=t))
        slots = {k: v for k, v in plan._prepared.items() if k[0] == "slot"}
        assert len(slots) == 3 and all(v[0] is b for v, b in zip(slots.values(), velocity.backends(t)))
        inner = [v[1] for v in slots.values()]
        velocity(plan, plan, w, t=t)
        assert all(plan._prepared[k][1] is p for k, p in zip(slots, inner))  # reused within the layer


def test_a_perceptron_near_the_gradient_form_is_warned_about(caplog, tmp_path):
    """W typed with 5 digits is 4e-6 from W = U^T diag(w): the energy stays empty, and the run
    says why once."""
    import logging

    from meanfield.run import run_case

    case = resolve_case({"domain": {"cells": 32}, "model": {"heads": [], "perceptron": {
        "U": [[1.0, 0.0], [-0.34202, 0.93969]], "W": [[3.0, -0.71823], [0.0, 1.97334]]}},
        "solver": {"t_end": 0.1}, "output": {"plots": False}})
    with caplog.at_level(logging.WARNING, logger="meanfield"):
        result = run_case(case, out_dir=tmp_path / "o")
    warnings = [r.getMessage() for r in caplog.records if "gradient form" in r.getMessage()]
    assert len(warnings) == 1 and "energy column stays empty" in warnings[0]
    assert result.rows[-1]["energy"] is None


def test_describe_model_names_the_noise():
    from meanfield.dynamics.model import describe_model

    model = mf.AttentionModel(d=2, beta=1.0)
    assert describe_model(model) == "SA beta=1"
    assert describe_model(model, 0.7) == "SA beta=1, noise sigma=0.7"
    assert describe_model(model, 0.0) == "SA beta=1"


def test_run_label_names_the_case_file_when_there_is_one():
    from meanfield.dynamics.model import run_label

    model = mf.AttentionModel(d=2, beta=3.0)
    assert run_label("cases/circle_metastable.toml", model, 0.03) == "circle_metastable, SA beta=3, noise sigma=0.03"
    assert run_label("<case>", model) == "SA beta=3"

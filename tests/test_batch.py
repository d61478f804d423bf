"""Batches of prompts (meanfield.particles.batch, Velocity.batch, DirectField.batch): one
vectorized evaluation equal to B single evaluations; a batch run equal to B single runs with
the same seeds (fixed and error-controlled steps); the vectorized statistics against the
single-run diagnostics; the clustering theorem for every prompt; the memory refusal; bad input."""

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from meanfield.diagnostics import ClusterCriterion, find_particle_clusters, run_energy
from meanfield.dynamics.model import Head, Terms, VelocityModel
from meanfield.dynamics.perceptron import Perceptron
from meanfield.dynamics.velocity import Velocity
from meanfield.fields.attention import AttentionModel, DirectField
from meanfield.particles.batch import (
    BatchMemoryError,
    batch_energy,
    batch_statistics,
    check_memory,
    connected_groups,
    reduce_statistics,
    run_batch,
    sample_prompts,
)
from meanfield.particles.sampling import sample
from meanfield.particles.system import ParticleState, ParticleSystem


def _unit(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _composite(d, seed=0):
    rng = np.random.default_rng(seed)
    h1 = AttentionModel(d, beta=1.5, Q=rng.standard_normal((d, d)), K=rng.standard_normal((d, d)),
                        V=rng.standard_normal((d, d)))
    h2 = AttentionModel(d, beta=0.7, normalized=False)
    p = Perceptron(W=rng.standard_normal((d, 3)), U=rng.standard_normal((3, d)), b=rng.standard_normal(3),
                   activation="tanh")
    return VelocityModel(d, Terms(d, (Head(h1, 0.8), Head(h2, -0.3)), p))


@pytest.mark.parametrize("project", [True, False])
def test_velocity_batch_equals_single_prompts(project):
    d, n, B = 4, 7, 5
    vel = Velocity(_composite(d), DirectField)
    x = _unit((B, n, d), 1)
    w = np.random.default_rng(2).random(n)
    got = vel.batch(x, w, project=project)
    want = np.stack([vel(x[b], x[b], w, project=project) for b in range(B)])
    assert np.abs(got - want).max() < 1e-13


def test_direct_batch_blocks_and_zero_weights():
    d, n, B = 3, 9, 6
    f = DirectField(AttentionModel(d, beta=2.0, V=np.diag([1.0, -0.5, 2.0])), block_elements=20)  # tiny blocks
    x = _unit((B, n, d), 3)
    w = np.full(n, 1.0 / n)
    w[[2, 5]] = 0.0
    want = np.stack([f(x[b], x[b], w) for b in range(B)])
    assert np.abs(f.batch(x, w) - want).max() < 1e-14


def test_causal_batch_is_tokens():
    d, n = 3, 8
    vel = Velocity(VelocityModel(d, AttentionModel(d, beta=2.0), mask="causal", alibi=1.0), DirectField)
    x = _unit((4, n, d), 4)
    w = np.full(n, 1.0 / n)
    assert np.array_equal(vel.batch(x, w), vel.tokens(x, w))


@pytest.mark.parametrize("integrator, dt", [("rk4", 0.1), ("dopri5", "auto"), ("euler", 0.05)])
def test_batch_run_equals_single_runs(integrator, dt):
    """Prompt b of a seeded batch is the single run of sample(spec, d, n, [seed, b])."""
    d, n, B, seed = 5, 6, 4, 11
    spec = {"kind": "uniform"}
    x0, w = sample_prompts(spec, d, n, B, seed)
    model = AttentionModel(d, beta=2.0)
    times = [0.0, 1.0, 2.5]
    res = run_batch(model, x0, times, integrator=integrator, dt=dt, keep_points=True)
    for b in range(B):
        xb, wb = sample(spec, d, n, [seed, b])
        assert np.array_equal(xb, x0[b]) and np.array_equal(wb, w)
        system = ParticleSystem(DirectField(model), integrator=integrator, dt=dt)
        state = ParticleState.create(xb, wb)
        for k, t in enumerate(times):
            system.advance(state, t)
            assert np.abs(state.x - res.points[k, b]).max() < 1e-13
            assert abs(res.per_prompt["energy"][k, b] - run_energy(model, state.x, state.weights)) < 1e-13
            r = np.linalg.norm(state.weights @ state.x)
            assert abs(res.per_prompt["order_parameter"][k, b] - r) < 1e-14


def test_statistics_against_diagnostics():
    """Clustered prompts: the groups, the Gram rank and the complete-linkage clusters agree;
    the pair statistics are the plain averages over i < j."""
    rng = np.random.default_rng(5)
    d, n, B = 6, 12, 7
    x = np.empty((B, n, d))
    for b in range(B):
        k = b % 4 + 1
        centres = _unit((k, d), 10 + b)
        x[b] = centres[rng.integers(k, size=n)] + 1e-4 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    w = np.full(n, 1.0 / n)
    s = batch_statistics(x, w, rank=True)
    iu = np.triu_indices(n, 1)
    for b in range(B):
        masses, _ = find_particle_clusters(x[b], w, ClusterCriterion(mass=0.0))
        assert s["n_clusters"][b] == masses.size == s["gram_rank"][b]
        G = x[b] @ x[b].T
        assert abs(s["mean_inner"][b] - G[iu].mean()) < 1e-14
        assert s["merged_fraction"][b] == np.mean(G[iu] >= 0.999)
    summary = reduce_statistics(s["n_clusters"])
    assert summary[0] == s["n_clusters"].mean() and summary[3] == np.median(s["n_clusters"])


def test_connected_groups_against_scipy():
    rng = np.random.default_rng(6)
    A = rng.random((20, 15, 15)) < 0.08
    A = A | A.transpose(0, 2, 1)
    got = connected_groups(A)
    want = [connected_components(csr_matrix(a), directed=False)[0] for a in A]
    assert got.tolist() == want


def test_energy_of_gradient_terms():
    d, n = 3, 5
    A = np.diag([1.0, 0.5, -0.3])
    head = AttentionModel(d, beta=1.2, Q=np.eye(d), K=A, V=2.0 * A, normalized=False)
    model = VelocityModel(d, Terms(d, (Head(head, 0.5), Head(AttentionModel(d, beta=0.8, normalized=False), 1.0))))
    vel = Velocity(model, DirectField)
    x = _unit((3, n, d), 7)
    w = np.full(n, 1.0 / n)
    got = batch_energy(vel, x, w)
    assert np.abs(got - [run_energy(model, x[b], w) for b in range(3)]).max() < 1e-14
    causal = Velocity(VelocityModel(d, AttentionModel(d), mask="causal"), DirectField)
    assert batch_energy(causal, x, w) is None


def test_every_prompt_reaches_one_cluster():
    """The theorem (d >= n, SA, V = I, beta = 1): every prompt of a batch collapses."""
    d, n, B = 6, 5, 12
    x0, _ = sample_prompts({"kind": "uniform"}, d, n, B, seed=3)
    res = run_batch(AttentionModel(d, beta=1.0), x0, [0.0, 10.0, 40.0], dt=0.2)
    assert np.all(res.per_prompt["n_clusters"][0] == n)
    assert np.all(res.per_prompt["n_clusters"][-1] == 1)
    assert np.all(res.per_prompt["merged_fraction"][-1] == 1.0)
    assert np.all(res.per_prompt["order_parameter"][-1] > 0.999)


def test_memory_refusal():
    x0 = _unit((8, 16, 3), 8)
    with pytest.raises(BatchMemoryError, match=r"particles\.batch.*needs about") as info:
        run_batch(AttentionModel(3), x0, [1.0], dt=0.1, memory_limit=10_000)
    assert info.value.estimate > info.value.budget == 10_000
    assert isinstance(info.value, ValueError)
    with pytest.raises(BatchMemoryError):
        check_memory(10 ** 7, 4096, 1024)  # ~ 3 PB of state: beyond any machine


def test_bad_input():
    model = AttentionModel(3)
    x0 = _unit((2, 4, 3), 9)
    vel = Velocity.from_backend(DirectField(model))
    with pytest.raises(ValueError, match="shape"):
        vel.batch(x0[0], np.full(4, 0.25))
    with pytest.raises(ValueError, match="weights"):
        vel.batch(x0, np.full(3, 1 / 3))
    with pytest.raises(ValueError, match="x0"):
        run_batch(model, x0[0], [1.0], dt=0.1)
    with pytest.raises(ValueError, match="R\\^4"):
        run_batch(model, _unit((2, 4, 4), 1), [1.0], dt=0.1)
    with pytest.raises(ValueError, match="times"):
        run_batch(model, x0, [1.0, 0.5], dt=0.1)
    with pytest.raises(ValueError, match="auto"):
        run_batch(model, x0, [1.0], integrator="dopri5", dt=0.1)
    with pytest.raises(ValueError, match="unknown integrator"):
        run_batch(model, x0, [1.0], integrator="leapfrog", dt=0.1)
    with pytest.raises(ValueError, match="dt"):
        run_batch(model, x0, [1.0], dt=-1.0)
    bad = x0.copy()
    bad[1, 2] = 0.0
    with pytest.raises(ValueError, match="zero token"):
        run_batch(model, bad, [1.0], dt=0.1)
    with pytest.raises(ValueError, match="threshold"):
        run_batch(model, x0, [1.0], dt=0.1, threshold=1.5)
    with pytest.raises(ValueError, match="particles.batch"):
        sample_prompts({"kind": "uniform"}, 3, 4, 0)

"""Causal tokens (model.mask = "causal"): the masked direct sums against a prefix-by-prefix
loop of the unmasked field, the band prefix measures against their integrals, the velocity's
token form, the dynamics' invariants (the first token never moves; V = I and any Q, K give
one cluster, the theorem of "Clustering in causal attention masking"), the sampler of a
position-dependent density, and the CLI (case keys, bad input, outputs, MPI)."""

import math

import numpy as np
import pytest
from scipy import integrate, special

import meanfield as mf
from meanfield.dynamics.model import Head, Terms, VelocityModel
from meanfield.dynamics.perceptron import Perceptron
from meanfield.fields.causal import band_measures, masked_direct, prefix_sum, split_rows
from meanfield.particles.sampling import sample
from meanfield.particles.system import ParticleState, ParticleSystem
from meanfield.pde.solver import make_velocity

from _helpers import MEANFIELD, MPIEXEC, launch


def tokens(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def prefix_loop(model, x, w, alibi):
    """Token i's field as the unmasked field of its prefix with the ALiBi weights."""
    n = len(x)
    direct = mf.DirectField(model)
    return np.stack([direct(x[i:i + 1], x[: i + 1], w[: i + 1] * np.exp(-alibi * (i - np.arange(i + 1)) / n))[0]
                     for i in range(n)])


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["SA", "USA"])
@pytest.mark.parametrize("alibi", [0.0, 4.0])
def test_masked_direct_sums_are_the_prefix_fields(d, kind, alibi):
    rng = np.random.default_rng(d + 10 * (kind == "SA"))
    model = mf.AttentionModel(d=d, beta=2.5, Q=rng.normal(size=(d, d)), K=rng.normal(size=(d, d)),
                              V=rng.normal(size=(d, d)), normalized=kind == "SA")
    n = 150
    x, w = tokens(rng, n, d), rng.random(n) + 0.5
    ref = prefix_loop(model, x, w, alibi)
    scale = np.abs(ref).max()
    got = masked_direct(model, x, w, alibi, block_elements=700)  # many small blocks
    assert np.abs(got - ref).max() <= 1e-13 * scale
    rows = np.array([0, 1, 64, 149])
    assert np.abs(masked_direct(model, x, w, alibi, rows=rows) - ref[rows]).max() <= 1e-13 * scale
    batch = masked_direct(model, np.stack([x, x[::-1]]), w, alibi, block_elements=3000)
    assert np.abs(batch[0] - ref).max() <= 1e-13 * scale
    assert np.abs(batch[1] - prefix_loop(model, x[::-1], w, alibi)).max() <= 1e-13 * scale
    # the mask acts: the last token sees everything, the others do not
    full = mf.DirectField(model)(x, x, w)
    assert np.abs(got[-1] - full[-1]).max() <= 1e-13 * scale if alibi == 0 else True
    assert np.abs(got[: n // 2] - full[: n // 2]).max() > 1e-3 * scale


def test_band_measures_integrate_the_alibi_weight_over_the_bands():
    rng = np.random.default_rng(4)
    P, M, lam = 7, 5, 3.0
    masses = rng.random((P, M))
    masses /= masses.sum(axis=1, keepdims=True)
    h = 1.0 / P
    got = band_measures(masses, lam)
    for p in range(P):
        sp = (p + 0.5) * h
        omega = [integrate.quad(lambda u: math.exp(-lam * (sp - u)), q * h, min((q + 1) * h, sp))[0] for q in range(p + 1)]
        assert np.abs(got[p] - np.asarray(omega) @ masses[: p + 1]).max() <= 1e-14
        # total weight e^{-lam s} W(s): the mean field's normalization at s_p
        assert math.isclose(got[p].sum(), -math.expm1(-lam * sp) / lam, rel_tol=1e-14)
    assert np.allclose(band_measures(masses, 0.0).sum(axis=1), (np.arange(P) + 0.5) * h, rtol=1e-15, atol=0)


def test_prefix_sum_and_row_split():
    v = np.arange(1.0, 7.0)
    assert np.allclose(prefix_sum(v, 0.5), [1, 2.5, 4.25, 6.125, 8.0625, 10.03125], rtol=1e-15)
    assert np.allclose(prefix_sum(v, 0.5, initial=np.float64(2.0)), prefix_sum(np.r_[2.0, v], 0.5)[1:], rtol=1e-15)
    assert np.array_equal(prefix_sum(v, 1.0), np.cumsum(v))
    for n, size in ((100, 3), (7, 4), (1000, 2)):
        parts = [split_rows(n, size, r) for r in range(size)]
        assert np.array_equal(np.concatenate(parts), np.arange(n))
        pairs = [int((p + 1).sum()) for p in parts]  # row i sums i + 1 sources
        if n >= 100:
            assert max(pairs) <= 1.05 * sum(pairs) / size  # balanced by pairs, not rows


def test_velocity_tokens_sum_the_masked_heads_and_the_perceptron():
    rng = np.random.default_rng(5)
    d = 3
    heads = (Head(mf.AttentionModel(d=d, beta=1.5), 0.7),
             Head(mf.AttentionModel(d=d, beta=4.0, Q=rng.normal(size=(d, d)), normalized=False), -0.4))
    per = Perceptron(W=rng.normal(size=(d, 4)), U=rng.normal(size=(4, d)), b=rng.normal(size=4))
    vm = VelocityModel(d, Terms(d, heads, per), mask="causal", alibi=2.0)
    v = make_velocity(vm, "direct")
    x = tokens(rng, 60, d)
    w = np.full(60, 1 / 60)
    want = sum(h.weight * masked_direct(h.attention, x, w, 2.0) for h in heads) + per(x)
    assert np.abs(v(x, x, w) - want).max() <= 1e-14
    assert np.abs(v.tokens(x, w, rows=[3, 59]) - want[[3, 59]]).max() <= 1e-14
    assert v.model.single_head is None and "causal mask with ALiBi lambda=2" in v.model.describe()
    with pytest.raises(ValueError, match="alibi"):
        VelocityModel(d, Terms(d, heads), alibi=1.0)  # a bias without the mask
    with pytest.raises(ValueError, match="mask"):
        VelocityModel(d, Terms(d, heads), mask="causl")
    with pytest.raises(ValueError, match="alibi"):
        VelocityModel(d, Terms(d, heads), mask="causal", alibi=-1.0)


@pytest.mark.parametrize("d", [2, 3])
def test_the_first_token_never_moves_and_all_reach_one_cluster(d):
    """V = I, random Q, K (entries N(0, 1/d)): token 1 attends to itself only (P_x x = 0), and
    every token converges to it (the theorem of Karagodin, Polyanskiy, Rigollet 2024).
    Measured with seed 4: the largest angle to token 1 of 32 tokens is 0.071 / 0.089 rad at
    t = 10 and below 1.5e-8 at t = 80. (Larger ||Q^T K|| can park a token near the
    antipode for very long: with seed 3 and entries N(0, 1) on S^2, ||Q^T K|| = 19, a token
    self-attends with weight ~1 - 1e-9 and stays 2.87 rad away up to t = 640 at least --
    the metastability of the causal paper, not a failure of the solver.)"""
    rng = np.random.default_rng(4)
    model = mf.AttentionModel(d=d, beta=1.0, Q=rng.normal(size=(d, d)) / math.sqrt(d),
                              K=rng.normal(size=(d, d)) / math.sqrt(d))
    v = make_velocity(VelocityModel(d, model, mask="causal"), "direct")
    x0 = tokens(rng, 32, d)
    state = ParticleState.create(x0)
    system = ParticleSystem(v, integrator="dopri5")
    system.advance(state, 10.0)
    spread10 = np.arccos(np.clip(state.x @ state.x[0], -1, 1)).max()
    system.advance(state, 80.0)
    spread80 = np.arccos(np.clip(state.x @ state.x[0], -1, 1)).max()
    assert np.array_equal(state.x[0], x0[0])
    assert spread10 > 1e-2 and spread80 < 1e-6


def test_causal_sampler_draws_each_token_from_its_position():
    """f(s, x) = exp(3 <x, c(s)>), c(s) at angle 2 pi s: the angle of token i minus 2 pi s_i is
    von Mises(3): mean cosine I_1(3)/I_0(3) = 0.80999, mean sine 0, within 4 standard errors
    (20000 tokens: SE 0.0019 and 0.0037; measured deviations 1.7e-4 and 2.6e-3)."""

    def f(s, x):
        c = np.stack([np.cos(2 * np.pi * s), np.sin(2 * np.pi * s)], axis=1)
        return np.exp(3.0 * np.einsum("ij,ij->i", x, c))

    n = 20000
    x, w = sample({"kind": "python", "function_object": f}, 2, n, 1, causal=True)
    theta = np.arctan2(x[:, 1], x[:, 0]) - 2 * np.pi * np.arange(1, n + 1) / n
    r1, r2 = special.iv(1, 3) / special.iv(0, 3), special.iv(2, 3) / special.iv(0, 3)
    se_cos = np.sqrt(((1 + r2) / 2 - r1 ** 2) / n)  # var cos = E cos^2 - (E cos)^2, E cos^2 = (1 + I2/I0)/2
    se_sin = np.sqrt((1 - r2) / 2 / n)
    assert abs(np.cos(theta).mean() - r1) < 4 * se_cos
    assert abs(np.sin(theta).mean()) < 4 * se_sin
    again, _ = sample({"kind": "python", "function_object": f}, 2, n, 1, causal=True)
    assert np.array_equal(x, again)


# -- the CLI ---------------------------------------------------------------------------
CASE = """
[domain]
cells = 64
[model]
beta = 3.0
mask = "causal"
alibi = 1.0
[initial]
kind = "uniform"
[solver]
t_end = 2.0
integrator = "rk4"
dt = 0.05
[output]
every = 1.0
plots = false
[particles]
n = 60
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


pytestmark_cli = pytest.mark.skipif(MEANFIELD is None, reason="the meanfield script is not installed")


@pytestmark_cli
@pytest.mark.parametrize("setting, key", [
    ("model.mask=\"causl\"", "model.mask"),
    ("model.alibi=-0.5", "model.alibi"),
    ("domain.positions=0", "domain.positions"),
])
def test_bad_causal_input_exits_2_naming_the_key(tmp_path, setting, key):
    case = write(tmp_path, "c.toml", CASE)
    proc = launch(1, "particles", case, "--set", setting)
    assert proc.returncode == 2 and key in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytestmark_cli
def test_alibi_and_positions_need_the_causal_mask(tmp_path):
    case = write(tmp_path, "c.toml", CASE.replace('mask = "causal"', 'mask = "none"'))
    proc = launch(1, "particles", case)
    assert proc.returncode == 2 and "model.alibi" in proc.stderr and "causal" in proc.stderr
    case = write(tmp_path, "d.toml", CASE.replace('mask = "causal"\nalibi = 1.0', "").replace("cells = 64",
                                                                                                 "cells = 64\npositions = 8"))
    proc = launch(1, "particles", case)
    assert proc.returncode == 2 and "domain.positions" in proc.stderr and "causal" in proc.stderr


@pytestmark_cli
def test_initial_function_of_the_wrong_signature_exits_2(tmp_path):
    write(tmp_path, "f.py", "import numpy as np\ndef f1(x):\n    return np.ones(len(x))\n"
                            "def f2(s, x):\n    return 1 + 0.5 * np.cos(s)\n")
    base = CASE.replace('kind = "uniform"', 'kind = "python"\nfunction = "f.py:f1"')
    proc = launch(1, "particles", write(tmp_path, "c.toml", base))
    assert proc.returncode == 2 and "initial.function" in proc.stderr and "(s, x)" in proc.stderr, proc.stderr
    plain = base.replace('mask = "causal"\nalibi = 1.0', "").replace("f.py:f1", "f.py:f2")
    proc = launch(1, "particles", write(tmp_path, "d.toml", plain))
    assert proc.returncode == 2 and "initial.function" in proc.stderr and "mask" in proc.stderr, proc.stderr


@pytestmark_cli
def test_causal_particle_run_writes_the_band_diagnostics(tmp_path):
    case = write(tmp_path, "c.toml", CASE.replace("cells = 64", "cells = 64\npositions = 6"))
    out = tmp_path / "run"
    proc = launch(1, "particles", case, "--out", out)
    assert proc.returncode == 0, proc.stderr
    z = np.load(out / "final.npz")
    assert np.allclose(z["positions"], (np.arange(6) + 0.5) / 6)
    assert z["band_order_parameter"].shape == (6,) and z["band_clusters"].shape == (6,)
    first = np.load(out / "snapshots" / "00000.npz")["points"][0]
    assert np.array_equal(z["points"][0], first)  # V = I: the first token never moves
    assert "energy" in (out / "diagnostics.csv").read_text().splitlines()[0]


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None or MEANFIELD is None, reason="mpiexec or the meanfield script is not installed")
def test_causal_particles_are_independent_of_the_number_of_ranks(tmp_path):
    case = write(tmp_path, "c.toml", CASE.replace("n = 60", "n = 90"))
    finals = []
    for ranks in (1, 3):
        out = tmp_path / f"r{ranks}"
        proc = launch(ranks, "particles", case, "--out", out)
        assert proc.returncode == 0, proc.stderr
        finals.append(np.load(out / "final.npz")["points"])
    assert np.abs(finals[0] - finals[1]).max() <= 1e-13


@pytest.mark.parametrize("backend", ["direct", "spectral"])
def test_band_form_is_the_unmasked_field_of_every_row(backend):
    """Weights (P, M): row p's field is the ordinary (unmasked) field of that measure, also for a
    causal model (a regression: the rows once took the token path, an error of 0.71), with
    several heads and a perceptron; the direct sums' one-pass ``bands`` agree with P calls."""
    rng = np.random.default_rng(8)
    d = 2
    heads = (Head(mf.AttentionModel(d=d, beta=2.0, Q=rng.normal(size=(d, d))), 0.6),
             Head(mf.AttentionModel(d=d, beta=5.0, normalized=False), 0.3))
    per = Perceptron(W=rng.normal(size=(d, 3)), U=rng.normal(size=(3, d)))
    causal = make_velocity(VelocityModel(d, Terms(d, heads, per), mask="causal", alibi=1.0), backend)
    plain = make_velocity(VelocityModel(d, Terms(d, heads, per)), backend)
    x, y = tokens(rng, 40, d), tokens(rng, 30, d)
    W = rng.random((4, 30))
    W[1, :12] = 0.0
    for project in (True, False):
        got = causal(x, y, W, project=project)
        want = np.stack([plain(x, y, w, project=project) for w in W])
        assert got.shape == (4, 40, d)
        assert np.abs(got - want).max() <= 1e-13 * np.abs(want).max()
    with pytest.raises(ValueError, match="serial"):
        causal(x, y, W, evaluate=lambda *a: None)

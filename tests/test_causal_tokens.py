"""The prefix-sum causal paths of the spectral backends against the masked direct sums.

:meth:`SpectralCircleField.causal_tokens` and :meth:`SpectralSphereField.causal_tokens`
(isotropic S^2) evaluate token ``i`` from the decayed prefix of its per-token spectral
moments; :func:`~meanfield.fields.causal.masked_direct` is the exact reference. Errors are
asserted at 10x the backend tolerance (``1e-9`` for ``tolerance = 1e-10``): SA absolute in
units of ``||V||_2``, USA relative to ``max |X|`` (the USA bound ``W e^{rho} ||V||`` is larger).
Measured: SA <= 7e-13 ``||V||``, USA <= 1.4e-13 of ``max |X|`` on these prompts.
"""

import math

import numpy as np
import pytest

import meanfield as mf
from meanfield.fields.attention import FieldOverflowError
from meanfield.fields.causal import causal_tokens, masked_direct
from meanfield.fields.spectral_circle import CausalPrefix, SpectralCircleField
from meanfield.fields.spectral_sphere import SpectralSphereField
from meanfield.fields.spectral_sphere_general import GeneralSphereField

TOL = 1e-10
J = np.array([[0.0, -1.0], [1.0, 0.0]])  # quarter turn


def circle(t):
    t = np.asarray(t, dtype=float)
    return np.stack([np.cos(t), np.sin(t)], axis=-1)


def sphere(rng, shape):
    p = rng.normal(size=tuple(shape) + (3,))
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def weights(rng, n):
    return rng.uniform(0.5, 1.5, n) / n


def check(model, got, ref):
    """SA: absolute in units of ||V||_2; USA: relative to max |X|."""
    err = float(np.abs(got - ref).max())
    scale = float(np.linalg.norm(model.V, 2)) if model.normalized else float(np.abs(ref).max())
    assert err <= 10 * TOL * scale, (err, scale)
    return err / scale


QKV = {
    "identity": lambda rng: (None, None, None),
    "random": lambda rng: tuple(rng.normal(size=(2, 2)) for _ in range(3)),
}


@pytest.mark.parametrize("kind", ["SA", "USA", "shifted"])
@pytest.mark.parametrize("qkv", sorted(QKV))
@pytest.mark.parametrize("alibi", [0.0, 3.0, 50.0])
@pytest.mark.parametrize("beta", [1.0, 9.0])
def test_circle_prefix_matches_masked_direct(kind, qkv, alibi, beta):
    rng = np.random.default_rng(int(beta) * 100 + int(alibi) + 7 * len(qkv) + len(kind))
    Q, K, V = QKV[qkv](rng)
    model = mf.AttentionModel(d=2, beta=beta, Q=Q, K=K, V=V, normalized=kind == "SA", shift=kind == "shifted")
    field = SpectralCircleField(model, tolerance=TOL)
    n = 300
    x = circle(rng.uniform(0.0, 2 * np.pi, n))
    w = weights(rng, n)
    for project in (True, False):
        got = field.causal_tokens(x, w, alibi, project=project)
        assert got.shape == (n, 2)
        check(model, got, masked_direct(model, x, w, alibi, project=project))
    if qkv == "identity":  # the own token and a spread prompt keep Z_s large; a random A may not
        assert field.last_fallback == 0


def test_circle_batch_and_rows():
    rng = np.random.default_rng(3)
    Q, K, V = QKV["random"](rng)
    model = mf.AttentionModel(d=2, beta=9.0, Q=Q, K=K, V=V)
    field = SpectralCircleField(model, tolerance=TOL)
    B, n = 3, 500
    x = circle(rng.uniform(0.0, 2 * np.pi, (B, n)))
    w = weights(rng, n)
    got = field.causal_tokens(x, w, 3.0)
    assert got.shape == (B, n, 2)
    check(model, got, masked_direct(model, x, w, 3.0))
    for b in range(B):  # each prompt of the batch is its own prefix
        np.testing.assert_allclose(field.causal_tokens(x[b], w, 3.0), got[b], rtol=0, atol=1e-13)
    rows = np.array([0, 1, 63, 64, 200, 377])  # across sub-blocks; the prefix stops at 377
    sub = field.causal_tokens(x, w, 3.0, rows=rows)
    assert sub.shape == (B, rows.size, 2)
    np.testing.assert_allclose(sub, got[:, rows], rtol=0, atol=1e-13)
    assert field.causal_tokens(x, w, 3.0, rows=[]).shape == (B, 0, 2)


def test_circle_long_prompt_in_several_blocks():
    """Many token blocks and prompt chunks (small ``block``): the carried prefix state."""
    rng = np.random.default_rng(4)
    model = mf.AttentionModel(d=2, beta=9.0)
    field = SpectralCircleField(model, tolerance=TOL, block=8)
    B, n = 2, 3000
    x = circle(rng.uniform(0.0, 2 * np.pi, (B, n)))
    w = np.full(n, 1.0 / n)
    rows = np.sort(rng.choice(n, 40, replace=False))
    for alibi in (0.0, 3.0):
        check(model, field.causal_tokens(x, w, alibi, rows=rows), masked_direct(model, x, w, alibi, rows=rows))


def test_circle_sa_fallback_on_clustered_prompt():
    """A rotation-like interaction (the preferred direction A^T x at 90 degrees from x) and a
    clustered second half: the clustered tokens see ``Z_s ~ e^{-beta}``, below ``z_min``, and
    are recomputed by the masked direct sums (only those rows), still within tolerance."""
    rng = np.random.default_rng(5)
    model = mf.AttentionModel(d=2, beta=40.0, Q=0.3 * np.eye(2) + J)
    field = SpectralCircleField(model, tolerance=TOL)
    n = 400
    t = np.concatenate([rng.uniform(0.0, 2 * np.pi, n // 2), 0.02 * rng.normal(size=n // 2)])
    x = np.stack([circle(t), circle(t[::-1] + 1.0)])
    w = weights(rng, n)
    got = field.causal_tokens(x, w, 3.0)
    assert 0 < field.last_fallback < x.shape[0] * n
    check(model, got, masked_direct(model, x, w, 3.0))
    got = field.causal_tokens(x, w, 0.0, project=False, rows=np.arange(n // 2, n, 3))
    assert field.last_fallback > 0
    check(model, got, masked_direct(model, x, w, 0.0, project=False, rows=np.arange(n // 2, n, 3)))


@pytest.mark.parametrize("kind", ["SA", "USA", "shifted"])
@pytest.mark.parametrize("c, v", [(1.0, 1.0), (-0.5, 0.7), (0.0, 1.3)])
@pytest.mark.parametrize("alibi", [0.0, 3.0, 50.0])
def test_sphere_prefix_matches_masked_direct(kind, c, v, alibi):
    rng = np.random.default_rng(int(10 * c) + 20 + int(alibi) + len(kind))
    model = mf.AttentionModel(d=3, beta=9.0, Q=c * np.eye(3), V=v * np.eye(3), normalized=kind == "SA",
                              shift=kind == "shifted")
    field = SpectralSphereField(model, tolerance=TOL)
    B, n = 2, 150
    x = sphere(rng, (B, n))
    w = weights(rng, n)
    for project in (True, False):
        got = field.causal_tokens(x, w, alibi, project=project)
        assert got.shape == (B, n, 3)
        check(model, got, masked_direct(model, x, w, alibi, project=project))
    rows = np.array([2, 70, 149])
    check(model, field.causal_tokens(x[0], w, alibi, rows=rows), masked_direct(model, x[0], w, alibi, rows=rows))


def test_sphere_sa_fallback_on_clustered_prompt():
    """Light tokens at the antipode of a tight cluster at ``beta = 30``: ``Phi_s`` there is
    their own weight (``~1e-7 / i`` of the prefix weight) plus ``e^{-2 beta}``, below the
    threshold; those rows use the masked direct sums."""
    rng = np.random.default_rng(6)
    model = mf.AttentionModel(d=3, beta=30.0)
    field = SpectralSphereField(model, tolerance=TOL)
    n = 200
    pole = np.array([0.0, 0.0, 1.0])
    cluster = pole + 0.03 * rng.normal(size=(n, 3))
    x = cluster / np.linalg.norm(cluster, axis=1, keepdims=True)
    far = np.arange(n // 2, n, 5)  # every fifth token of the second half, light, at the antipode
    x[far] = -x[far]
    w = weights(rng, n)
    w[far] *= 1e-7
    got = field.causal_tokens(x, w, 3.0, project=False)
    assert 0 < field.last_fallback_count < n
    check(model, got, masked_direct(model, x, w, 3.0, project=False))


def test_first_token_sees_only_itself():
    rng = np.random.default_rng(7)
    for field in (SpectralCircleField(mf.AttentionModel(d=2, beta=9.0), tolerance=TOL),
                  SpectralSphereField(mf.AttentionModel(d=3, beta=9.0), tolerance=TOL)):
        d = field.model.d
        x = sphere(rng, (20,)) if d == 3 else circle(rng.uniform(0, 2 * np.pi, 20))
        w = weights(rng, 20)
        # V = I: the self-interaction x_0 is radial, the field vanishes; before P_x it is x_0
        assert np.abs(field.causal_tokens(x, w, 3.0)[0]).max() <= TOL
        np.testing.assert_allclose(field.causal_tokens(x, w, 3.0, project=False)[0], x[0], rtol=0, atol=TOL)
    Q, K, V = QKV["random"](rng)
    model = mf.AttentionModel(d=2, beta=5.0, Q=Q, K=K, V=V, normalized=False)
    x = circle(rng.uniform(0, 2 * np.pi, 30))
    w = weights(rng, 30)
    first = SpectralCircleField(model, tolerance=TOL).causal_tokens(x, w, 0.0, project=False, rows=[0])[0]
    own = w[0] * math.exp(x[0] @ model.interaction @ x[0]) * (model.V @ x[0])
    np.testing.assert_allclose(first, own, rtol=10 * TOL, atol=0)


def test_causal_tokens_dispatch_and_general_heads():
    """``causal_tokens`` takes the prefix path of the spectral backends and the masked direct
    sums for a general sphere head (no prefix path of its own)."""
    rng = np.random.default_rng(8)
    x = circle(rng.uniform(0, 2 * np.pi, 100))
    w = weights(rng, 100)
    model = mf.AttentionModel(d=2, beta=9.0)
    np.testing.assert_array_equal(causal_tokens(SpectralCircleField(model), x, w, 3.0),
                                  SpectralCircleField(model).causal_tokens(x, w, 3.0))
    general = mf.AttentionModel(d=3, beta=2.0, K=np.eye(3) + 0.4 * rng.normal(size=(3, 3)))
    head = GeneralSphereField(general)
    assert not hasattr(head, "causal_tokens")
    y = sphere(rng, (60,))
    wy = weights(rng, 60)
    np.testing.assert_array_equal(causal_tokens(head, y, wy, 3.0), masked_direct(general, y, wy, 3.0))


def test_bad_input_raises():
    circ = SpectralCircleField(mf.AttentionModel(d=2, beta=1.0))
    sph = SpectralSphereField(mf.AttentionModel(d=3, beta=1.0))
    rng = np.random.default_rng(9)
    x2, x3 = circle(rng.uniform(0, 2 * np.pi, 10)), sphere(rng, (10,))
    for field, x in ((circ, x2), (sph, x3)):
        w = np.full(10, 0.1)
        with pytest.raises(ValueError):
            field.causal_tokens(x, np.full(9, 0.1))
        with pytest.raises(ValueError):
            field.causal_tokens(x, w, -1.0)
        with pytest.raises(ValueError):
            field.causal_tokens(x, -w)
        with pytest.raises(ValueError):
            field.causal_tokens(x, w, rows=[3, 2])
        with pytest.raises(ValueError):
            field.causal_tokens(x[:, :2] if x.shape[1] == 3 else np.zeros((10, 3)), w)


def test_usa_overflow_raises():
    rng = np.random.default_rng(10)
    x = circle(rng.uniform(0, 2 * np.pi, 10))
    with pytest.raises(FieldOverflowError):
        SpectralCircleField(mf.AttentionModel(d=2, beta=800.0, normalized=False)).causal_tokens(x, np.full(10, 0.1))
    y = sphere(rng, (10,))
    with pytest.raises(FieldOverflowError):
        SpectralSphereField(mf.AttentionModel(d=3, beta=800.0, normalized=False)).causal_tokens(y, np.full(10, 0.1))


def test_prefix_sums_are_exact_to_round_off():
    """:class:`CausalPrefix` over uneven blocks against the decayed sums in extended precision."""
    rng = np.random.default_rng(11)
    n, F = 5000, 3
    v = rng.normal(size=(F, n)) + 1j * rng.normal(size=(F, n))
    for g in (0.0, 3.0 / n, 0.5, 10.0):
        pre = CausalPrefix(F, g)
        got = np.concatenate([pre(v[:, a:b]) for a, b in ((0, 128), (128, 4224), (4224, n))], axis=1)
        ref = np.empty((F, n), dtype=np.clongdouble)
        acc = np.zeros(F, dtype=np.clongdouble)
        decay = np.exp(np.longdouble(-g))
        for i in range(n):
            acc = acc * decay + v[:, i]
            ref[:, i] = acc
        mass = np.empty((F, n))  # the decayed sums of |v|: what round-off is relative to
        acc = np.zeros(F)
        for i in range(n):
            acc = acc * math.exp(-g) + np.abs(v[:, i])
            mass[:, i] = acc
        assert np.all(np.abs(got - ref.astype(complex)) <= 1e-15 * mass)

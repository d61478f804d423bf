"""``project=False`` (the attention average before P_x) for every backend, against DirectField."""

from __future__ import annotations

import numpy as np
import pytest

import meanfield as mf
from meanfield.parallel import DistributedField, split_evaluate
from meanfield.fields.spectral_circle import SpectralCircleField
from meanfield.fields.spectral_sphere import SpectralSphereField
from meanfield.fields.spectral_sphere_general import GeneralSphereField


def _sphere(rng, n, d):
    p = rng.normal(size=(n, d))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _measure(rng, d, n=300):
    x = _sphere(rng, n, d)
    x[: n // 2] += 1.5 * np.eye(d)[0]  # half of the mass near e_1: a non-uniform measure
    return x / np.linalg.norm(x, axis=1, keepdims=True), rng.random(n) / n


CASES = [  # (d, beta, Q^T K or general, V, kind)
    (2, 9.0, "iso", 1.0), (2, 3.0, "general", None), (2, 0.0, "iso", 1.0),
    (3, 9.0, "iso", 1.0), (3, 4.0, "iso", -2.0), (3, 3.0, "neg", 0.5), (3, 1e-60, "iso", 1.0), (3, 0.0, "iso", 1.0),
    (3, 3.0, "general", None),
]


def _model(d, beta, kind, v, normalized, rng):
    if kind == "general":
        eye = np.eye(d)
        mats = {"Q": eye + 0.3 * rng.normal(size=(d, d)), "K": eye + 0.3 * rng.normal(size=(d, d)),
                "V": rng.normal(size=(d, d))}
    else:
        mats = {"Q": (-1.0 if kind == "neg" else 1.0) * np.eye(d), "V": v * np.eye(d)}
    return mf.AttentionModel(d=d, beta=beta, normalized=normalized, **mats)


def _spectral(model):
    if model.d == 2:
        return SpectralCircleField(model)
    return SpectralSphereField(model) if model.isotropic() is not None else GeneralSphereField(model)


@pytest.mark.parametrize("normalized", [True, False])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"d{c[0]}-b{c[1]:g}-{c[2]}")
def test_unprojected_average_matches_direct(case, normalized):
    d, beta, kind, v = case
    rng = np.random.default_rng(CASES.index(case) + (10 if normalized else 0))
    model = _model(d, beta, kind, v, normalized, rng)
    x, w = _measure(rng, d)
    t = _sphere(rng, 200, d)
    direct, field = mf.DirectField(model), _spectral(model)
    ref = direct(t, x, w, project=False)
    got = field(t, x, w, project=False)
    # SA: tolerance ||V||_2 (the default 1e-12); USA: relative to max |X|
    scale = np.linalg.norm(model.V, 2) if normalized else np.abs(ref).max()
    assert np.abs(got - ref).max() <= 2e-12 * scale, np.abs(got - ref).max() / scale
    # the radial part is really there, and projecting it gives the field
    radial = np.einsum("ij,ij->i", ref, t)
    assert np.abs(radial).max() > 1e-3 * np.abs(ref).max()
    proj = got - np.einsum("ij,ij->i", got, t)[:, None] * t
    assert np.abs(proj - field(t, x, w)).max() <= 2e-12 * scale
    # the two-phase API takes the keyword too
    two = field.evaluate(t, field.coefficients(x, w), x, w, project=False)
    assert np.array_equal(two, got)


def test_sa_fallback_rows_are_unprojected_too():
    # a concentrated measure at beta = 30: most SA targets fall back to the direct sums
    rng = np.random.default_rng(1)
    x = np.array([0.0, 0.0, 1.0]) + 0.05 * rng.normal(size=(100, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = np.full(100, 0.01)
    t = _sphere(rng, 100, 3)
    for field in (SpectralSphereField(mf.AttentionModel(d=3, beta=30.0)),
                  SpectralCircleField(mf.AttentionModel(d=2, beta=200.0))):
        d = field.model.d
        xs = x[:, :d] / np.linalg.norm(x[:, :d], axis=1, keepdims=True)
        ts = t[:, :d] / np.linalg.norm(t[:, :d], axis=1, keepdims=True)
        got = field(ts, xs, w, project=False)
        count = getattr(field, "last_fallback_count", getattr(field, "last_fallback", 0))
        assert count > 0
        ref = mf.DirectField(field.model)(ts, xs, w, project=False)
        assert np.abs(got - ref).max() <= 1e-12


def test_shifted_large_beta_unprojected():
    rng = np.random.default_rng(2)
    x = np.array([1.0, 0.0, 0.0]) + 0.05 * rng.normal(size=(200, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = np.full(200, 1 / 200)
    t = np.concatenate([x[:100], _sphere(rng, 50, 3)])
    model = mf.AttentionModel(d=3, beta=1000.0, normalized=False, shift=True)
    ref = mf.DirectField(model)(t, x, w, project=False)
    got = SpectralSphereField(model)(t, x, w, project=False)
    assert np.abs(got - ref).max() <= 1e-10 * np.abs(ref).max()


class _OneRank:
    """A Distributor of one rank without MPI."""

    rank, size = 0, 1

    def share(self, n):
        return slice(0, n)

    def allreduce_sum(self, c):
        return c

    def allgather_rows(self, local, n):
        return np.asarray(local)

    def abort(self, message, code=1):
        raise RuntimeError(message)


class _PlainField:
    """A backend without the keyword (e.g. someone else's sum of heads)."""

    def __init__(self, model):
        self.model, self.name = model, "plain"
        self._direct = mf.DirectField(model)

    def __call__(self, targets, sources, weights):
        return self._direct(targets, sources, weights)


def test_split_evaluate_and_distributed_field_pass_project():
    rng = np.random.default_rng(3)
    x, w = _measure(rng, 3)
    t = _sphere(rng, 50, 3)
    dist = _OneRank()
    for model in (mf.AttentionModel(d=3, beta=5.0), mf.AttentionModel(d=3, beta=5.0, normalized=False)):
        ref = mf.DirectField(model)(t, x, w, project=False)
        for field in (mf.DirectField(model), SpectralSphereField(model)):
            got = split_evaluate(field, dist, t, x, w, slice(0, len(w)), project=False)
            assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()
            got = DistributedField(field, dist)(t, x, w, project=False)
            assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()
        # a backend without the keyword still serves the projected field
        plain = DistributedField(_PlainField(model), dist)
        assert np.array_equal(plain(t, x, w), mf.DirectField(model)(t, x, w))

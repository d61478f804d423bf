"""The shifted USA kernel exp(beta (<Qx, Ky> - ||Q^T K||_2)) (model.shift; issue 10 item 10)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import special

import meanfield as mf
from meanfield.io.case import CaseError, resolve_case
from meanfield.run import build_model
from meanfield.pde.solver import make_field
from meanfield.fields.spectral_circle import SpectralCircleField
from meanfield.fields.spectral_sphere import SpectralSphereField
from meanfield.fields.spectral_sphere_general import GeneralSphereField


def _sphere(rng, n, d):
    p = rng.normal(size=(n, d))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _general(rng, d):
    eye = np.eye(d)
    return {k: eye + 0.3 * rng.normal(size=(d, d)) for k in "QK"} | {"V": rng.normal(size=(d, d))}


def _backends(model):
    fields = [mf.DirectField(model)]
    if model.d == 2:
        fields.append(SpectralCircleField(model))
    elif model.isotropic() is not None:
        fields.append(SpectralSphereField(model))
    else:
        fields.append(GeneralSphereField(model))
    return fields


def test_logit_offset():
    qk = np.array([[2.0, 1.0], [0.0, 1.0]])
    c = float(np.linalg.norm(qk, 2))
    assert mf.AttentionModel(d=2, beta=3.0, K=qk, normalized=False, shift=True).logit_offset == pytest.approx(3 * c)
    assert mf.AttentionModel(d=2, beta=3.0, K=qk, normalized=False).logit_offset == 0.0
    assert mf.AttentionModel(d=2, beta=3.0, K=qk, normalized=True, shift=True).logit_offset == 0.0  # SA: cancels
    assert mf.AttentionModel(d=2, beta=0.0, normalized=False, shift=True).logit_offset == 0.0


@pytest.mark.parametrize("d, general", [(2, False), (2, True), (3, False), (3, True)])
@pytest.mark.parametrize("project", [True, False])
def test_shifted_field_is_the_field_times_exp_minus_beta_c(d, general, project):
    rng = np.random.default_rng(10 * d + general)
    x, t = _sphere(rng, 300, d), _sphere(rng, 200, d)
    w = rng.random(300) / 300
    mats = _general(rng, d) if general else {"V": -1.5 * np.eye(d)}
    beta = 4.0 if general else 9.0
    plain = mf.AttentionModel(d=d, beta=beta, normalized=False, **mats)
    shifted = mf.AttentionModel(d=d, beta=beta, normalized=False, shift=True, **mats)
    factor = math.exp(-shifted.logit_offset)
    reference = mf.DirectField(plain)(t, x, w, project=project)
    scale = np.abs(reference).max()
    for f, g in zip(_backends(plain), _backends(shifted)):
        a, b = f(t, x, w, project=project), g(t, x, w, project=project)
        assert np.abs(b - factor * a).max() <= 1e-12 * factor * scale, (f.name, np.abs(b - factor * a).max())
    # SA is not changed by the flag
    sa, sa_shift = (mf.AttentionModel(d=d, beta=beta, normalized=True, shift=s, **mats) for s in (False, True))
    assert np.array_equal(mf.DirectField(sa)(t, x, w), mf.DirectField(sa_shift)(t, x, w))


# (S^2 at beta = 1e4 needs lmax ~ 930, too slow for the suite: S^2 is covered at beta = 1000)
@pytest.mark.parametrize("d, general, beta", [(2, False, 1000.0), (2, True, 1000.0), (3, False, 1000.0),
                                              (2, False, 1e4), (2, True, 1e4)])
def test_large_beta_shifted_usa_is_finite_and_backends_agree(d, general, beta):
    rng = np.random.default_rng(7)
    mats = _general(rng, d) if general else {}
    model = mf.AttentionModel(d=d, beta=beta, normalized=False, shift=True, **mats)
    # a clustered measure: the field is far from zero near the clusters; for general Q, K
    # clusters at +-v_1 and targets near +-u_1 (top singular vectors of A = beta Q^T K),
    # where the largest logits are reached
    u, _, vt = np.linalg.svd(model.interaction)
    centres = np.stack([vt[0], -vt[0]]) if general else _sphere(rng, 3, d)
    x = centres[rng.integers(0, len(centres), 400)] + 0.03 * rng.normal(size=(400, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = np.full(400, 1 / 400)
    near = (u[:, 0] if general else centres[0]) + 0.05 * rng.normal(size=(150, d))
    near[::2] *= -1
    t = np.concatenate([near / np.linalg.norm(near, axis=1, keepdims=True), _sphere(rng, 100, d)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, no invalid value anywhere
        direct, spectral = (f(t, x, w) for f in _backends(model))
    assert np.all(np.isfinite(direct)) and np.abs(direct).max() > 0
    if general:
        # the documented USA accuracy: tolerance W ||V||_2 e^{|A^T x| - offset} per target (for
        # general Q, K at large beta the field itself can lie far below that bound: its
        # largest logits miss the sources by many units of 1 / beta)
        bound = np.linalg.norm(model.V, 2) * np.exp(np.linalg.norm(t @ model.interaction, axis=1) - model.logit_offset)
        assert np.all(np.abs(spectral - direct).max(axis=1) <= 1e-11 * bound + 1e-300)
        assert np.abs(spectral - direct).max() <= 1e-10 * np.abs(direct).max()
    else:
        assert np.abs(spectral - direct).max() <= 1e-10 * np.abs(direct).max()
    with pytest.raises(mf.FieldOverflowError, match="model.shift = true"):
        mf.DirectField(mf.AttentionModel(d=d, beta=beta, normalized=False, **mats))(t, x, w)


def test_general_sphere_at_large_beta_refuses_and_auto_takes_direct():
    rng = np.random.default_rng(3)
    model = mf.AttentionModel(d=3, beta=1000.0, normalized=False, shift=True, **_general(rng, 3))
    with pytest.raises(ValueError, match="direct"):
        GeneralSphereField(model)
    assert isinstance(make_field(model, "auto", n_targets=10**6, n_sources=10**6), mf.DirectField)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_shifted_growth_rates_are_the_table_times_exp_minus_beta(d):
    ls = np.arange(1, 40)
    nu = d / 2 - 1
    for beta in (0.5, 9.0, 200.0, -3.0):
        b = abs(beta)
        a = math.gamma(d / 2) * (2 / b) ** nu * special.iv(ls + nu, b) * np.where(ls % 2 == 1, np.sign(beta), 1.0)
        table = ls * (ls + d - 2) * a / beta  # SPEC section 2, USA
        got = mf.growth_rate(ls, beta, d, normalized=False, shift=True)
        assert np.allclose(got, math.exp(-b) * table, rtol=1e-12, atol=0)
        # SA is unchanged
        assert np.array_equal(mf.growth_rate(ls, beta, d, True, shift=True), mf.growth_rate(ls, beta, d, True))
    # large beta: finite, and e^{-beta} I_nu(beta) ~ 1 / sqrt(2 pi beta) for nu << sqrt(beta)
    got = mf.growth_rate(1, 1e4, 2, normalized=False, shift=True)
    assert got == pytest.approx(1 / (1e4 * math.sqrt(2 * math.pi * 1e4)), rel=1e-4)


@pytest.mark.parametrize("beta", [9.0, 1000.0])
def test_circle_field_gives_the_shifted_growth_rate(beta):
    # density (1 + eps cos k theta) / 2 pi on an equispaced grid (exact quadrature): the USA
    # tangential velocity is -eps (k / beta) I_k e^{-beta} sin k theta, i.e. the rate
    # sigma_k = k^2 I_k(beta) e^{-beta} / beta
    n, eps = 1024, 0.5
    k = 4 if beta < 100 else 40
    th = 2 * np.pi * (np.arange(n) + 0.5) / n
    x = np.c_[np.cos(th), np.sin(th)]
    w = (1 + eps * np.cos(k * th)) / n
    model = mf.AttentionModel(d=2, beta=beta, normalized=False, shift=True)
    expected = float(mf.growth_rate(k, beta, 2, normalized=False, shift=True))
    if beta < 100:
        assert expected == pytest.approx(math.exp(-beta) * k * k * special.iv(k, beta) / beta, rel=1e-12)
    for f in _backends(model):
        u = np.einsum("ij,ij->i", f(x, x, w), np.c_[-np.sin(th), np.cos(th)])
        amplitude = 2 * np.mean(u * np.sin(k * th))
        assert -amplitude * k / eps == pytest.approx(expected, rel=1e-10)
        assert np.abs(u - amplitude * np.sin(k * th)).max() <= 1e-10 * abs(amplitude)


def test_sphere_field_gives_the_shifted_growth_rate():
    # (1 + eps P_l(cos theta)) / 4 pi on a Gauss-Legendre grid: X_theta = -(eps / b) i_l(b)
    # e^{-b} sin theta P_l'(cos theta), the rate l (l + 1) i_l(b) e^{-b} / b
    beta, l, eps = 1000.0, 30, 0.5
    nodes, gw = np.polynomial.legendre.leggauss(200)
    nphi = 400
    phi = 2 * np.pi * np.arange(nphi) / nphi
    z = np.repeat(nodes, nphi)
    s = np.sqrt(1 - z * z)
    ph = np.tile(phi, nodes.size)
    y = np.c_[s * np.cos(ph), s * np.sin(ph), z]
    w = np.repeat(gw, nphi) / (2 * nphi) * (1 + eps * special.eval_legendre(l, z))
    zt = np.linspace(-0.95, 0.95, 23)
    st = np.sqrt(1 - zt * zt)
    t = np.c_[st * np.cos(0.3), st * np.sin(0.3), zt]
    e_theta = np.c_[zt * np.cos(0.3), zt * np.sin(0.3), -st]
    dP = l * (zt * special.eval_legendre(l, zt) - special.eval_legendre(l - 1, zt)) / (zt * zt - 1)
    g = st * dP
    model = mf.AttentionModel(d=3, beta=beta, normalized=False, shift=True)
    expected = float(mf.growth_rate(l, beta, 3, normalized=False, shift=True))
    for f in _backends(model):
        xt = np.einsum("ij,ij->i", f(t, y, w), e_theta)
        scaled_il = -beta * (xt @ g) / (eps * (g @ g))
        assert l * (l + 1) * scaled_il / beta == pytest.approx(expected, rel=1e-9)


def test_rate_bound_scales_by_exp_minus_beta_c():
    rng = np.random.default_rng(5)
    for mats in ({}, _general(rng, 3)):
        plain = mf.AttentionModel(d=3, beta=20.0, normalized=False, **mats)
        shifted = mf.AttentionModel(d=3, beta=20.0, normalized=False, shift=True, **mats)
        assert shifted.rate_bound() == pytest.approx(math.exp(-shifted.logit_offset) * plain.rate_bound(), rel=1e-12)
    big = mf.AttentionModel(d=3, beta=1e4, normalized=False, shift=True)
    assert 0 < big.rate_bound() < 1


def test_shifted_energy_is_exp_minus_beta_c_times_the_energy_and_finite():
    rng = np.random.default_rng(2)
    x = _sphere(rng, 80, 3)
    w = np.full(80, 1 / 80)
    mats = _general(rng, 3)
    plain = mf.AttentionModel(d=3, beta=30.0, normalized=False, **mats)
    shifted = mf.AttentionModel(d=3, beta=30.0, normalized=False, shift=True, **mats)
    assert mf.energy(shifted, x, w) == pytest.approx(math.exp(-shifted.logit_offset) * mf.energy(plain, x, w),
                                                     rel=1e-12)
    for beta in (1000.0, 1e4):
        m = mf.AttentionModel(d=3, beta=beta, normalized=False, shift=True)
        direct, spectral = (mf.energy(m, x, w, method=k) for k in ("direct", "spectral"))
        G = x @ x.T
        naive = float(w @ (np.exp(beta * (G - 1)) - math.exp(-beta)) @ w) / (2 * beta)
        assert direct == pytest.approx(naive, rel=1e-12)
        assert spectral == pytest.approx(direct, rel=1e-11)


def test_shifted_usa_particles_ascend_the_shifted_energy():
    from meanfield.particles.system import evolve

    rng = np.random.default_rng(4)
    x0 = np.array([0.0, 0.0, 1.0]) + 0.12 * rng.normal(size=(60, 3))
    x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    model = mf.AttentionModel(d=3, beta=200.0, normalized=False, shift=True)
    energies = [mf.energy(model, x0, np.full(60, 1 / 60))]
    evolve(mf.DirectField(model), x0, 40.0, callback=lambda st, dt: energies.append(mf.energy(model, st.x, st.weights)))
    e = np.array(energies)
    assert len(e) > 10 and e[-1] > 1.5 * e[0]  # something happened
    assert np.all(np.diff(e) >= -1e-13 * e[-1])


def test_shifted_usa_pde_ascends_the_shifted_energy():
    from meanfield.geometry.mesh import CircleMesh
    from meanfield.pde.solver import Simulation, State

    mesh = CircleMesh(256)
    model = mf.AttentionModel(d=2, beta=100.0, normalized=False, shift=True)
    sim = Simulation(mesh, model, scheme="muscl", backend="direct")
    rho = np.exp(3 * np.cos(mesh.angles)) * (1 + 0.3 * np.cos(5 * mesh.angles))
    state = State(0.0, rho / (rho @ mesh.areas))
    energies = [mf.energy(model, mesh.centers, state.rho * mesh.areas)]
    for t in np.linspace(2.0, 60.0, 30):
        sim.advance(state, t)
        energies.append(mf.energy(model, mesh.centers, state.rho * mesh.areas))
    e = np.array(energies)
    assert e[-1] > 2 * e[0] and np.all(np.diff(e) > 0)


def test_shifted_pseudo_spectral_scheme_velocity():
    from meanfield.geometry.mesh import CircleMesh
    from meanfield.pde.spectral_scheme import SpectralCircleSimulation

    mesh = CircleMesh(128)
    rho = 1 + 0.3 * np.cos(3 * mesh.angles) + 0.2 * np.sin(5 * mesh.angles)
    sims = [SpectralCircleSimulation(mesh, mf.AttentionModel(d=2, beta=20.0, normalized=False, shift=s))
            for s in (False, True)]
    u, us = (s.tangential_velocity(rho) for s in sims)
    assert np.allclose(us, math.exp(-20.0) * u, rtol=1e-12, atol=0)
    big = SpectralCircleSimulation(CircleMesh(512), mf.AttentionModel(d=2, beta=1000.0, normalized=False, shift=True))
    assert np.all(np.isfinite(big.tangential_velocity(np.ones(512) + 0.1 * np.cos(np.arange(512)))))


def _case(shift, beta=1000.0):
    raw = {"domain": {"manifold": "circle", "cells": 64}, "model": {"kind": "USA", "beta": beta, "shift": shift}}
    return resolve_case(raw)


def test_build_model_passes_the_shift_and_accepts_large_beta():
    model = build_model(_case(True), 2).single_head
    assert model.shift and model.logit_offset == pytest.approx(1000.0)
    with pytest.raises(CaseError, match="model.shift = true"):
        build_model(_case(False), 2)
    assert not build_model(_case(False, 9.0), 2).single_head.shift

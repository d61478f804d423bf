"""Lost in the middle (meanfield.particles.retrieval): the closed form against quadrature, the
series and the authors' formula; the finite-n linear response converging to it; the batched
Monte Carlo against both (docs/retrieval.md)."""

import math

import numpy as np
import pytest
from scipy import integrate, special
from scipy.linalg import expm

from meanfield.particles.retrieval import (
    discrete_profile,
    green,
    mode_rates,
    paper_time,
    psi,
    retrieval_experiment,
    retrieval_profile,
    soft_score,
    truncation,
)


def psi_series(c, u, terms=200):
    k = np.arange(terms)
    logs = (k + 1) * math.log(c) + k * math.log(u) - special.gammaln(k + 1) - special.gammaln(k + 2)
    return float(np.exp(logs).sum())


def test_psi_matches_its_series_and_limits():
    for c in (1e-3, 0.4, 2.0, 7.5):
        for u in (1e-9, 1e-4, 0.3, 2.0, 6.0):
            assert psi(c, u) == pytest.approx(psi_series(c, u), rel=1e-13)
    assert psi(0.7, 0.0) == pytest.approx(0.7, rel=1e-15)
    assert np.isfinite(psi(50.0, 400.0))  # 2 sqrt(cu) = 283: ive, no overflow


def test_closed_form_matches_the_authors_formula():
    # generate_u_shape_numerology_data.py: profile_value(s, beta, tau, lam, M, n_max) with
    # a_n = n^2 I_n(beta), series psi, in the paper's time tau = t / (beta I_0(beta))
    beta, lam, M, n_max, tau = 1.3, 1.0, 8.0, 20, 1.5
    t = tau * beta * special.i0(beta)
    s = np.array([0.02, 0.1, 0.37, 0.8, 0.98])
    ours = retrieval_profile(s, t, beta, lam, M, modes=n_max)
    y = np.log(math.expm1(lam) / np.expm1(lam * s))
    coeff = lam * np.exp(lam * s) / math.expm1(lam)
    theirs = [coeff[i] * sum(math.exp(-0.5 * (math.pi * m / M) ** 2) * psi_series(m * m * special.iv(m, beta) * tau, y[i])
                             for m in range(1, n_max + 1)) for i in range(s.size)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert float(paper_time(t, beta)) == pytest.approx(tau, rel=1e-15)
    # c_m t = a_m tau
    np.testing.assert_allclose(mode_rates(beta, 5) * t, np.arange(1, 6) ** 2 * special.iv(np.arange(1, 6), beta) * tau,
                               rtol=1e-13)


def test_truncation_drops_only_negligible_modes():
    for beta, M in ((0.5, 8.0), (3.0, 8.0), (20.0, 30.0)):
        m = truncation(beta, M)
        s = np.linspace(0.01, 1.0, 30)
        full = retrieval_profile(s, 2.0, beta, 1.0, M, modes=4 * m + 40)
        np.testing.assert_allclose(retrieval_profile(s, 2.0, beta, 1.0, M), full, rtol=1e-13)


@pytest.mark.parametrize("lam", [0.0, 2.0])
def test_green_function_solves_the_linear_equation(lam):
    """a(t, 1) of d/dt a = c H a from a smooth a_0, by the Green's-function quadrature, against
    the equation itself on a fine grid (trapezoid H, exact exponential in time)."""
    c, t = 0.8, 1.7
    a0 = lambda s: 1.0 + np.cos(3.0 * s) * s  # noqa: E731
    W = (lambda s: s) if lam == 0 else (lambda s: np.expm1(lam * s) / lam)
    Wp = (lambda s: np.ones_like(s)) if lam == 0 else (lambda s: np.exp(lam * s))

    def kernel(sp):
        return psi(c * t, np.log(W(1.0) / W(sp))) * Wp(sp) / W(1.0) * a0(sp)

    green_value = a0(1.0) + integrate.quad(kernel, 0.0, 1.0, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
    values = []
    for N in (400, 800):
        s = np.linspace(0.0, 1.0, N + 1)
        h = 1.0 / N
        T = np.tril(np.ones((N + 1, N + 1))) * h
        T[:, 0] *= 0.5
        T[np.arange(N + 1), np.arange(N + 1)] *= 0.5
        T[0, 0] = 0.0
        Hm = T * Wp(s)[None, :]
        Hm[1:] /= W(s[1:])[:, None]
        Hm[0, 0] = 1.0  # H a(0) = a(0)
        values.append((expm(c * t * Hm) @ a0(s))[-1])
    assert abs(values[1] - green_value) < 0.3 * abs(values[0] - green_value) + 1e-9  # second order
    assert values[1] == pytest.approx(green_value, rel=2e-5)
    # and green() is the delta-source response: the integral of green(., s') a0(s') is the quadrature
    assert integrate.quad(lambda sp: green(c, t, sp, lam) * a0(sp), 0, 1, limit=200)[0] == pytest.approx(
        green_value - a0(1.0), rel=1e-10)


def test_alibi_zero_limit_is_continuous():
    s = np.array([0.01, 0.2, 0.5, 0.9, 1.0])
    at0 = retrieval_profile(s, 2.0, 1.0, 0.0)
    for lam in (1e-6, 1e-9):
        np.testing.assert_allclose(retrieval_profile(s, 2.0, 1.0, lam), at0, rtol=5 * lam)
    np.testing.assert_allclose(discrete_profile(16, 2.0, 1.0, 1e-9), discrete_profile(16, 2.0, 1.0, 0.0), rtol=1e-8)


def test_soft_score_is_the_wrapped_normal():
    M = 8.0
    u = np.linspace(-math.pi, math.pi, 7)
    sd = math.pi / M
    wrapped = sum(np.exp(-0.5 * ((u + 2 * math.pi * k) / sd) ** 2) for k in range(-5, 6)) / (sd * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(soft_score(u, M), 2 * math.pi * wrapped, rtol=1e-12, atol=1e-15)
    assert integrate.quad(lambda v: soft_score(v, M), 0, 2 * math.pi)[0] / (2 * math.pi) == pytest.approx(1.0, abs=1e-12)


def test_discrete_response_converges_to_the_closed_form_at_order_one_over_n():
    beta, lam, t = 1.0, 3.0, 2.0
    errs = []
    for n in (64, 128, 256):
        s = np.arange(1, n) / n
        keep = s >= 0.25
        errs.append(np.abs(discrete_profile(n, t, beta, lam) - retrieval_profile(s, t, beta, lam))[keep].max())
    # measured 0.466, 0.245, 0.126 (docs/retrieval.md): halves with n
    assert 1.7 < errs[0] / errs[1] < 2.3 and 1.7 < errs[1] / errs[2] < 2.3


@pytest.fixture(scope="module")
def experiment():
    # n = 32, beta = 0.25, ALiBi 3, M = 8, 20000 prompts, two times: about 10 s on one core
    return retrieval_experiment(32, 20000, 0.25, 3.0, [1.0, 2.0], seed=0, backend="direct")


def test_monte_carlo_agrees_with_the_linear_response(experiment):
    r = experiment
    m = r.sigma0.size
    se = r.se.mean()
    for k in range(2):
        # against the finite-n linear response: every source within 3.5 SE, chi2 near its count
        assert np.abs(r.deviation("discrete")[k]).max() < 3.5
        assert r.chi2("discrete")[k] < 2.0 * m
        # against the closed form (n -> infinity): within 3.5 SE plus its finite-n bias |D - S|
        # (the O(1/n) discretization, 0.1-0.35 here: up to 2 SE; docs/retrieval.md). Without
        # that bias the worst source is 3.98 SE off at t = 1: the MC sees the finite-n correction
        bias = np.abs(r.discrete[k] - r.theory[k])
        assert np.all(np.abs(r.mean[k] - r.theory[k]) < 3.5 * r.se[k] + bias)
        assert r.chi2("theory")[k] > r.chi2("discrete")[k]
        # the effect is many SEs: the profile rises from primacy to recency by >= 8 SE
        assert r.theory[k].max() - r.theory[k].min() > (8 if k == 1 else 4) * se
    # power: the paper's time tau read as our t (the factor beta I_0(beta) = 0.254 forgotten)
    # (the paper's profile at tau = t is ours at t beta I_0(beta))
    wrong = retrieval_profile(r.sigma0, float(r.times[1]) * r.beta * special.i0(r.beta), r.beta, r.alibi, r.M)
    assert np.max(np.abs(r.mean[1] - wrong) / r.se[1]) > 6  # measured 8.8
    # the batch does not change the numbers (prompts drawn up front)
    assert r.se.shape == r.mean.shape == (2, 31)


def test_batches_and_backends_give_the_same_numbers():
    a = retrieval_experiment(8, 40, 1.0, 1.0, [0.5, 1.0], seed=3, batch=7)
    b = retrieval_experiment(8, 40, 1.0, 1.0, [0.5, 1.0], seed=3, batch=40)
    np.testing.assert_allclose(a.mean, b.mean, rtol=0, atol=1e-12)
    c = retrieval_experiment(8, 40, 1.0, 1.0, [0.5, 1.0], seed=3, batch=40, backend="auto")
    np.testing.assert_allclose(a.mean, c.mean, rtol=0, atol=1e-8)
    assert "sigma0" in a.table() and a.to_dict()["mean"].shape == (2, 7)


@pytest.mark.parametrize("kwargs, word", [
    (dict(n=1), "n"), (dict(prompts=1), "prompts"), (dict(beta=-1.0), "beta"), (dict(alibi=-0.5), "alibi"),
    (dict(times=[1.0, 0.5]), "times"), (dict(times=[-1.0]), "times"), (dict(M=0.0), "M"),
    (dict(alibi=float("nan")), "alibi"), (dict(backend="fast"), "backend"),
])
def test_bad_input_raises(kwargs, word):
    args = dict(n=4, prompts=4, beta=1.0, alibi=0.0, times=[0.5])
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        retrieval_experiment(**args)


def test_bad_profile_input_raises():
    with pytest.raises(ValueError, match="sigma0"):
        retrieval_profile([0.0, 0.5], 1.0, 1.0)
    with pytest.raises(ValueError, match="M"):
        retrieval_profile(0.5, 1.0, 1.0, M=-1)
    with pytest.raises(ValueError, match="t"):
        retrieval_profile(0.5, -1.0, 1.0)

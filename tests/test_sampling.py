"""Seeded exact samplers of the initial densities: moments and goodness of fit."""

import logging
import math

import numpy as np
import pytest
from scipy import special, stats

import meanfield as mf
from meanfield.particles.distances import bin_particles
from meanfield.initial import InitialDataError
from meanfield.particles.sampling import sample, vmf_log_normalizer
from meanfield.geometry.sphere import load_icosahedral


def initial(manifold="circle", base_dir=".", **kw):
    return mf.resolve_case({"domain": {"manifold": manifold}, "initial": kw}, base_dir=base_dir)["initial"]


def mean_resultant(d, kappa):
    """A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) = E <x, c> under vMF(c, kappa)."""
    return special.ive(d / 2, kappa) / special.ive(d / 2 - 1, kappa)


def check_vmf_moments(x, c, d, kappa):
    """<x, c> has mean A_d and variance 1 - (d - 1) A_d / kappa - A_d^2: 4 sigma tolerances."""
    n = len(x)
    a = mean_resultant(d, kappa)
    var = 1 - (d - 1) * a / kappa - a**2
    proj = x @ c
    assert abs(proj.mean() - a) < 4 * math.sqrt(var / n)
    assert abs(proj.var() / var - 1) < 0.05
    return proj.mean() - a, 4 * math.sqrt(var / n)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_uniform_moments(d):
    n = 40000
    x, w = sample(initial(kind="uniform"), d, n, seed=1)
    assert x.shape == (n, d) and np.all(w == 1 / n)
    assert np.max(np.abs(np.linalg.norm(x, axis=1) - 1)) < 1e-15
    assert np.max(np.abs(x.mean(axis=0))) < 4 / math.sqrt(d * n)
    # E x x^T = I / d, Var(x_i^2) = 3 / (d (d + 2)) - 1 / d^2
    second = x.T @ x / n
    sd = math.sqrt((3 / (d * (d + 2)) - 1 / d**2) / n)
    assert np.max(np.abs(np.diag(second) - 1 / d)) < 4.5 * sd


@pytest.mark.parametrize("d", [2, 3, 5])
@pytest.mark.parametrize("kappa", [0.5, 4.0, 50.0, 5000.0])
def test_vmf_mean_resultant_length(d, kappa):
    c = np.random.default_rng(d).standard_normal(d)
    c /= np.linalg.norm(c)
    x, _ = sample({"kind": "vmf", "centers": [list(2 * c)], "kappas": [kappa], "weights": [1.0]}, d, 20000, seed=7)
    assert np.max(np.abs(np.linalg.norm(x, axis=1) - 1)) < 1e-15
    check_vmf_moments(x, c, d, kappa)


def test_vmf_log_normalizer():
    # Z_3(kappa) = 4 pi sinh(kappa) / kappa; Z_2 = 2 pi I_0; kappa = 0: the measure of the sphere
    assert vmf_log_normalizer(2.0, 3) == pytest.approx(math.log(4 * math.pi * math.sinh(2.0) / 2.0), rel=1e-14)
    assert vmf_log_normalizer(3.0, 2) == pytest.approx(math.log(2 * math.pi * special.i0(3.0)), rel=1e-14)
    assert vmf_log_normalizer(0.0, 3) == pytest.approx(math.log(4 * math.pi), rel=1e-15)
    assert vmf_log_normalizer(5000.0, 3) == pytest.approx(5000 - math.log(5000) + math.log(2 * math.pi), rel=1e-14)


# -- goodness of fit on the circle: Kolmogorov--Smirnov against the exact CDF ------------------
def circle_cdf_modes(modes):
    def cdf(theta):
        val = theta.copy()
        for m in modes:
            k, a, ph = m["k"], m["amplitude"], m.get("phase", 0.0)
            val += a * (np.sin(k * theta - ph) + np.sin(ph)) / k
        return val / (2 * np.pi)

    return cdf


def circle_cdf_vmf(centers, kappas, probs):
    def cdf(theta):
        out = np.zeros_like(theta)
        for c, k, p in zip(centers, kappas, probs):
            loc = math.atan2(c[1], c[0])
            # von Mises law of the angle on [0, 2 pi)
            out += p * (stats.vonmises.cdf(theta, k, loc=loc) - stats.vonmises.cdf(0.0, k, loc=loc)) % 1.0
        return out

    return cdf


def ks_pvalue(x, cdf):
    theta = np.sort(np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi))
    return stats.kstest(theta, cdf).pvalue


def test_modes_on_the_circle_ks():
    modes = [{"k": 1, "amplitude": 0.6, "phase": 0.5}, {"k": 3, "amplitude": 0.3, "phase": 0.0}]
    x, _ = sample(initial(kind="modes", modes=modes), 2, 20000, seed=11)
    assert ks_pvalue(x, circle_cdf_modes(modes)) > 1e-3
    # the test has power: the same sample against the density without the k = 3 mode
    assert ks_pvalue(x, circle_cdf_modes(modes[:1])) < 1e-6


def test_vmf_mixture_on_the_circle_ks():
    # density w1 e^{k1 <c1,x>} + w2 e^{k2 <c2,x>}: the mixture probabilities are
    # p_j ∝ w_j 2 pi I_0(k_j), not w_j (the case weights multiply unnormalized exponentials)
    centers, kappas, weights = [[1.0, 0.0], [-0.5, 0.8]], [2.0, 8.0], [1.0, 0.05]
    spec = initial(kind="vmf", centers=centers, kappas=kappas, weights=weights)
    x, _ = sample(spec, 2, 20000, seed=12)
    z = np.array(weights) * special.i0(kappas)
    assert ks_pvalue(x, circle_cdf_vmf(centers, kappas, z / z.sum())) > 1e-3
    wrong = np.array(weights) / np.sum(weights)
    assert ks_pvalue(x, circle_cdf_vmf(centers, kappas, wrong)) < 1e-6


def test_python_density_on_the_circle_ks(tmp_path):
    (tmp_path / "dens.py").write_text("import numpy as np\ndef f(x):\n    return 1.0 + x[:, 0] ** 2\n")
    x, _ = sample(initial(kind="python", function="dens.py:f", base_dir=tmp_path), 2, 20000, seed=13)
    # ∫_0^theta (1 + cos^2) = 3 theta / 2 + sin(2 theta) / 4, total 3 pi
    assert ks_pvalue(x, lambda t: (1.5 * t + np.sin(2 * t) / 4) / (3 * np.pi)) > 1e-3


# -- goodness of fit on the sphere: chi-square of the cell histogram against cell masses -------
def chi_square_pvalue(mesh, x, masses):
    """Pearson's chi-square; cells expecting fewer than 5 points are pooled into one bin."""
    n = len(x)
    obs = bin_particles(mesh, x) * n
    exp = masses / masses.sum() * n
    small = exp < 5
    o = np.append(obs[~small], obs[small].sum())
    e = np.append(exp[~small], exp[small].sum())
    if e[-1] == 0:
        o, e = o[:-1], e[:-1]
    chi = np.sum((o - e) ** 2 / e)
    return stats.chi2.sf(chi, len(e) - 1), len(e)


@pytest.fixture(scope="module")
def ico2():
    return load_icosahedral(2)


def sphere_specs(tmp_path):
    (tmp_path / "dens.py").write_text(
        "import numpy as np\ndef f(x):\n    return np.exp(6 * (x[:, 2] - 1)) + 0.2 * (1 + x[:, 0] ** 2)\n")
    return {
        "modes": initial("sphere", kind="modes",
                         modes=[{"l": 2, "m": 1, "amplitude": 1.2}, {"l": 1, "m": 0, "amplitude": 0.8}]),
        "vmf": initial("sphere", kind="vmf", centers=[[0, 0, 1], [1, 0, 0]], kappas=[2.0, 15.0], weights=[1.0, 2e-5]),
        "python": initial("sphere", tmp_path, kind="python", function="dens.py:f"),
    }


@pytest.mark.parametrize("kind", ["modes", "vmf", "python"])
def test_sphere_histogram_matches_cell_masses(kind, ico2, tmp_path):
    spec = sphere_specs(tmp_path)[kind]
    x, _ = sample(spec, 3, 100000, seed=21)
    assert np.max(np.abs(np.linalg.norm(x, axis=1) - 1)) < 1e-15
    masses = mf.project(ico2, spec) * ico2.areas
    p, bins = chi_square_pvalue(ico2, x, masses)
    assert bins > 150 and p > 1e-3


def test_sphere_chi_square_has_power(ico2):
    # vMF mixture weights taken as probabilities instead of w_j Z(kappa_j): rejected
    # (here w_j Z(kappa_j) gives the two components 45% and 55% of the mass)
    spec = initial("sphere", kind="vmf", centers=[[0, 0, 1], [1, 0, 0]], kappas=[2.0, 15.0], weights=[1.0, 2e-5])
    x, _ = sample(spec, 3, 100000, seed=21)
    # the wrong law sum_j (w_j / sum w) vMF_j has case weights w_j / Z(kappa_j)
    z = np.exp(vmf_log_normalizer(np.array([2.0, 15.0]), 3))
    wrong = dict(spec, weights=list(np.array([1.0, 2e-5]) * z[0] / z))
    masses = mf.project(ico2, wrong) * ico2.areas
    assert chi_square_pvalue(ico2, x, masses)[0] < 1e-6


def test_python_sharp_density_needs_bound_repair_and_stays_exact(tmp_path, caplog):
    # exp(2000 (<c, x> - 1)) has width 0.02 rad, a fifth of a proposal cell: the initial
    # bound of the cell holding the peak is wrong, gets repaired (restart), and the law is
    # still the vMF with kappa = 2000.
    (tmp_path / "sharp.py").write_text(
        "import numpy as np\nC = np.array([0.3, -0.5, 0.8]) / np.sqrt(0.98)\n"
        "def f(x):\n    return np.exp(2000 * (x @ C - 1))\n")
    spec = initial("sphere", tmp_path, kind="python", function="sharp.py:f")
    with caplog.at_level(logging.DEBUG, logger="meanfield"):
        x, _ = sample(spec, 3, 20000, seed=5)
    assert any("bound raised" in r.message for r in caplog.records)
    check_vmf_moments(x, np.array([0.3, -0.5, 0.8]) / math.sqrt(0.98), 3, 2000.0)


def test_python_density_in_four_dimensions(tmp_path):
    (tmp_path / "d4.py").write_text("import numpy as np\ndef f(x):\n    return np.exp(3 * x[:, 1])\n")
    spec = initial("circle", tmp_path, kind="python", function="d4.py:f")  # the table is the same for any d
    x, _ = sample(spec, 4, 20000, seed=3)
    assert x.shape == (20000, 4)
    check_vmf_moments(x, np.array([0.0, 1.0, 0.0, 0.0]), 4, 3.0)


# -- determinism, points, errors ----------------------------------------------------------------
ALL_KINDS = ["uniform", "modes", "vmf", "python"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_seeded_reproducibility(kind, tmp_path):
    spec = sphere_specs(tmp_path).get(kind, initial("sphere", kind="uniform"))
    a, _ = sample(spec, 3, 3000, seed=42)
    np.random.seed(0)  # the global numpy state plays no role
    np.random.random(10)
    b, _ = sample(spec, 3, 3000, seed=42)
    c, _ = sample(spec, 3, 3000, seed=43)
    assert np.array_equal(a, b)
    assert np.min(np.linalg.norm(a - c, axis=1)) > 0 and np.mean(np.linalg.norm(a - c, axis=1)) > 0.5


def test_given_points_are_normalized_with_their_weights():
    spec = initial(kind="points", points=[[2.0, 0.0], [0.0, -0.5], [3.0, 4.0]], weights=[1.0, 1.0, 2.0])
    x, w = sample(spec, 2, None, seed=None)
    assert np.allclose(x, [[1, 0], [0, -1], [0.6, 0.8]], atol=1e-16, rtol=0)
    assert np.array_equal(w, [0.25, 0.25, 0.5])
    assert np.array_equal(sample(spec, 2, 3, seed=1)[0], x)
    with pytest.raises(ValueError, match="3 points"):
        sample(spec, 2, 10, seed=1)


def test_invalid_input():
    with pytest.raises(InitialDataError, match="negative"):
        sample(initial(kind="modes", modes=[{"k": 2, "amplitude": 1.5}]), 2, 1000, seed=0)
    with pytest.raises(InitialDataError, match="d = 4"):
        sample({"kind": "modes", "modes": [{"k": 1, "amplitude": 0.1}]}, 4, 10, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        sample(initial(kind="uniform"), 2, 0, seed=0)

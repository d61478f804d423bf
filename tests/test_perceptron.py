"""The perceptron (feed-forward) velocity term X_P(x) = P_x(W sigma(Ux + b)).

Values against a plain loop, tangency, the activations' antiderivatives and Lipschitz
constants, the gradient form (potential, energy, an exact ODE flow ascending it), the speed
and rate bounds against measured maxima, and the input checks.
"""

import dataclasses
import doctest
import math

import numpy as np
import pytest
from scipy import integrate

from meanfield.dynamics import perceptron as perceptron_module
from meanfield.dynamics.perceptron import ACTIVATIONS, Activation, Perceptron

NAMES = sorted(ACTIVATIONS)

# Scalar reference activations, written independently of the module (math only).
SCALAR = {
    "relu": lambda z: max(z, 0.0),
    "gelu": lambda z: 0.5 * z * math.erfc(-z / math.sqrt(2.0)),  # = z Phi(z), no cancellation
    "tanh": math.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + math.exp(-z)),
    "identity": lambda z: z,
}


def sphere_points(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1)[:, None]


def random_perceptron(rng, d, m, activation, gradient=False):
    U = rng.normal(size=(m, d))
    b = rng.normal(size=m)
    W = U.T * rng.normal(size=m) if gradient else rng.normal(size=(d, m))
    return Perceptron(W=W, U=U, b=b, activation=activation)


def tangent_basis(x):
    """(d-1, d) orthonormal basis of the tangent space at the unit vector x."""
    q, _ = np.linalg.qr(np.column_stack([x, np.eye(len(x))]))
    return q[:, 1:len(x)].T


def test_activation_registry():
    assert NAMES == ["gelu", "identity", "relu", "sigmoid", "tanh"]
    for name, a in ACTIVATIONS.items():
        assert isinstance(a, Activation) and a.name == name


# ---------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", NAMES)
@pytest.mark.parametrize("d", [2, 3, 5])
def test_values_match_a_plain_loop(d, activation):
    rng = np.random.default_rng(10 * d + NAMES.index(activation))
    m = 4
    p = random_perceptron(rng, d, m, activation)
    x = sphere_points(rng, 7, d)
    f = SCALAR[activation]
    expect_avg = np.zeros((7, d))
    expect = np.zeros((7, d))
    for n in range(7):
        s = [f(sum(p.U[i, k] * x[n, k] for k in range(d)) + p.b[i]) for i in range(m)]
        y = [sum(p.W[j, i] * s[i] for i in range(m)) for j in range(d)]
        xy = sum(y[j] * x[n, j] for j in range(d))
        expect_avg[n] = y
        expect[n] = [y[j] - xy * x[n, j] for j in range(d)]
    np.testing.assert_allclose(p.average(x), expect_avg, rtol=0, atol=1e-13)
    np.testing.assert_allclose(p(x, project=False), expect_avg, rtol=0, atol=1e-13)
    np.testing.assert_allclose(p(x), expect, rtol=0, atol=1e-13)
    assert p.d == d and p.m == m


@pytest.mark.parametrize("activation", NAMES)
@pytest.mark.parametrize("d", [2, 3, 5])
def test_field_is_tangent(d, activation):
    rng = np.random.default_rng(100 + d)
    p = random_perceptron(rng, d, 6, activation)
    x = sphere_points(rng, 2000, d)
    X = p(x)
    scale = np.maximum(1.0, np.linalg.norm(p.average(x), axis=1))
    assert np.all(np.abs(np.einsum("ij,ij->i", X, x)) <= 1e-15 * scale)
    # ...and the projection removed a real normal component.
    assert np.abs(np.einsum("ij,ij->i", p(x, project=False), x)).max() > 0.1


def test_no_points_and_shapes():
    rng = np.random.default_rng(1)
    p = random_perceptron(rng, 3, 4, "gelu", gradient=True)
    empty = np.zeros((0, 3))
    assert p(empty).shape == (0, 3)
    assert p.average(empty).shape == (0, 3)
    assert p.potential(empty).shape == (0,)
    assert p.energy(empty, np.zeros(0)) == 0.0
    with pytest.raises(ValueError, match=r"^x must have shape \(N, 3\)"):
        p(np.zeros(3))
    with pytest.raises(ValueError, match=r"^x must have shape \(N, 3\)"):
        p.potential(np.zeros((2, 2)))


def test_default_bias_is_zero_and_arrays_are_frozen_copies():
    W = np.arange(6.0).reshape(3, 2)
    U = np.ones((2, 3))
    p = Perceptron(W=W, U=U)
    assert p.activation == "relu"
    assert p.b.shape == (2,) and not np.any(p.b)
    W[0, 0] = 99.0  # the caller's array: not shared
    assert p.W[0, 0] == 0.0
    for name in "WUb":
        with pytest.raises(ValueError):
            getattr(p, name)[0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.W = W
    q = Perceptron(W=np.arange(6.0).reshape(3, 2), U=U, b=[0, 0])
    assert p == q and hash(p) == hash(q)
    assert p != Perceptron(W=q.W, U=U, activation="tanh")


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_antiderivative(name):
    a = ACTIVATIONS[name]
    assert a.antiderivative(np.array(0.0)) == 0.0
    # Central differences, on a grid that keeps relu's kink (z = 0) further than h away.
    z = np.linspace(-20.0, 20.0, 4001) + 0.0037
    h = 1e-5
    dS = (a.antiderivative(z + h) - a.antiderivative(z - h)) / (2 * h)
    s = a.function(z)
    assert np.all(np.abs(dS - s) <= 1e-8 * np.maximum(1.0, np.abs(s)))
    # No overflow, no invalid values far out.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        big = np.array([-1000.0, 1000.0])
        S = a.antiderivative(big)
        assert np.all(np.isfinite(S)) and np.all(np.isfinite(a.function(big)))
    expected = {
        "relu": [0.0, 5e5],
        "identity": [5e5, 5e5],
        "tanh": [1000.0 - math.log(2), 1000.0 - math.log(2)],
        "sigmoid": [-math.log(2), 1000.0 - math.log(2)],
        "gelu": [0.25, 5e5 - 0.25],  # S(-inf) = int_{-inf}^0 |z| Phi(z) dz = 1/4
    }[name]
    np.testing.assert_allclose(S, expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_function_matches_scalar_reference(name):
    a = ACTIVATIONS[name]
    z = np.linspace(-30.0, 30.0, 1201)
    expect = np.array([SCALAR[name](float(t)) for t in z])
    np.testing.assert_allclose(a.function(z), expect, rtol=1e-12, atol=1e-300)  # erfc tails differ ~1e-13


def test_gelu_is_the_exact_erf_form():
    from scipy.special import erf

    z = np.linspace(-8.0, 8.0, 3201)
    # The erf form loses relative accuracy for z << 0 (1 + erf cancels): absolute 1e-15 there.
    np.testing.assert_allclose(ACTIVATIONS["gelu"].function(z), 0.5 * z * (1.0 + erf(z / np.sqrt(2.0))), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_lipschitz_constant_is_the_sup(name):
    a = ACTIVATIONS[name]
    z = np.linspace(-12.0, 12.0, 240001)  # step 1e-4, through 0 and +-sqrt(2) closely
    h = 1e-6
    slope = np.abs(a.function(z + h) - a.function(z - h)) / (2 * h)
    assert slope.max() <= a.lipschitz * (1 + 1e-8)
    assert slope.max() >= 0.999 * a.lipschitz


def test_gelu_lipschitz_exact_value():
    # sigma' = Phi(z) + z phi(z) peaks at z = sqrt 2 (sigma'' = (2 - z^2) phi).
    from scipy import optimize, special

    def slope(z):
        return special.ndtr(z) + z * np.exp(-z * z / 2) / np.sqrt(2 * np.pi)

    top = optimize.minimize_scalar(lambda z: -slope(z), bounds=(0.5, 3.0), method="bounded", options={"xatol": 1e-10})
    assert abs(top.x - math.sqrt(2)) < 1e-5
    assert abs(ACTIVATIONS["gelu"].lipschitz - slope(math.sqrt(2))) < 1e-15
    assert abs(ACTIVATIONS["gelu"].lipschitz - 1.1289041451851) < 1e-12
    # The other candidate, the most negative slope at -sqrt 2, is smaller in size.
    assert abs(slope(-math.sqrt(2))) < 0.13


def test_max_abs_on_intervals():
    gelu = ACTIVATIONS["gelu"]
    (zmin,) = gelu.extrema
    z = np.linspace(-3, 3, 600001)
    assert abs(z[np.argmin(gelu.function(z))] - zmin) < 1e-5
    lo = np.array([-1.0, -5.0, 0.5, -0.5])
    hi = np.array([-0.5, 0.0, 2.0, 0.5])
    for name in NAMES:
        a = ACTIVATIONS[name]
        got = a.max_abs(lo, hi)
        for k in range(4):
            grid = np.linspace(lo[k], hi[k], 200001)
            exact = np.abs(a.function(grid)).max()
            assert exact <= got[k] <= exact + 1e-9


# ---------------------------------------------------------------------------------------
# Gradient form, potential, energy
# ---------------------------------------------------------------------------------------
def test_gradient_weights_recovered_and_refused():
    rng = np.random.default_rng(5)
    U = rng.normal(size=(5, 3))
    w = np.array([1.5, -0.25, 2.0, 0.0, -3.0])
    p = Perceptron(W=U.T * w, U=U, b=rng.normal(size=5), activation="tanh")
    np.testing.assert_allclose(p.gradient_weights(), w, rtol=1e-14, atol=1e-15)
    assert p.describe() == "perceptron m=5 tanh (gradient form)"
    generic = Perceptron(W=rng.normal(size=(3, 5)), U=U)
    assert generic.gradient_weights() is None
    assert generic.describe() == "perceptron m=5 relu"
    # The tolerance is 1e-12 of max |W|: 1e-14 passes, 1e-10 does not.
    W = U.T * w
    for eps, ok in [(1e-14, True), (1e-10, False)]:
        V = W.copy()
        V[1, 2] += eps * np.abs(W).max()
        assert (Perceptron(W=V, U=U).gradient_weights() is not None) == ok
    # A zero row of U: fine with a zero column of W (w_i = 0), refused with a nonzero one.
    U0 = U.copy()
    U0[1] = 0.0
    W0 = U0.T * w
    np.testing.assert_allclose(Perceptron(W=W0, U=U0).gradient_weights(), w * [1, 0, 1, 1, 1], rtol=1e-14)
    W0[0, 1] = 0.5
    assert Perceptron(W=W0, U=U0).gradient_weights() is None
    # The zero perceptron is the gradient of Phi = 0.
    np.testing.assert_array_equal(Perceptron(W=np.zeros((3, 5)), U=U).gradient_weights(), np.zeros(5))


def test_potential_refused_without_gradient_form():
    rng = np.random.default_rng(6)
    p = random_perceptron(rng, 3, 4, "relu")
    message = "the perceptron is not in gradient form W = U^T diag(w): it has no potential"
    with pytest.raises(ValueError, match="^" + message.replace("^", r"\^").replace("(", r"\(").replace(")", r"\)") + "$"):
        p.potential(sphere_points(rng, 3, 3))
    with pytest.raises(ValueError, match="not in gradient form"):
        p.energy(sphere_points(rng, 3, 3), np.ones(3) / 3)


@pytest.mark.parametrize("activation", NAMES)
@pytest.mark.parametrize("d", [2, 3, 5])
def test_field_is_tangential_gradient_of_potential(d, activation):
    rng = np.random.default_rng(300 + 7 * d + NAMES.index(activation))
    p = random_perceptron(rng, d, 5, activation, gradient=True)
    x = sphere_points(rng, 40, d)
    X = p(x)
    h = 1e-5
    worst = 0.0
    for n in range(len(x)):
        grad = np.zeros(d)
        for v in tangent_basis(x[n]):
            # Along the great circle cos(t) x + sin(t) v, d/dt Phi at 0 = <grad_S Phi, v>.
            plus = np.cos(h) * x[n] + np.sin(h) * v
            minus = np.cos(h) * x[n] - np.sin(h) * v
            slope = (p.potential(plus[None])[0] - p.potential(minus[None])[0]) / (2 * h)
            grad += slope * v
        worst = max(worst, np.abs(grad - X[n]).max())
    assert worst <= 1e-7
    assert np.abs(X).max() > 0.1  # a real field, not zero against zero


def test_energy_is_weighted_sum_of_potential():
    rng = np.random.default_rng(7)
    p = random_perceptron(rng, 3, 4, "sigmoid", gradient=True)
    x = sphere_points(rng, 50, 3)
    w = rng.random(50)
    expect = sum(w[i] * p.potential(x[i:i + 1])[0] for i in range(50))
    assert abs(p.energy(x, w) - expect) <= 1e-14 * max(1.0, abs(expect))
    with pytest.raises(ValueError, match=r"^weights must have shape \(50,\)"):
        p.energy(x, w[:-1])
    with pytest.raises(ValueError, match="^weights must be nonnegative"):
        p.energy(x, -w)
    with pytest.raises(ValueError, match=r"^points must have shape \(N, 3\)"):
        p.energy(x[:, :2], w)


@pytest.mark.parametrize("activation", ["gelu", "tanh", "relu"])
def test_exact_flow_ascends_the_potential(activation):
    rng = np.random.default_rng(8)
    n, d = 6, 3
    p = random_perceptron(rng, d, 5, activation, gradient=True)
    x0 = sphere_points(rng, n, d)

    def rhs(t, y):
        x = y[:-1].reshape(n, d)
        x = x / np.linalg.norm(x, axis=1)[:, None]
        X = p(x)
        # Last component: int_0^t sum_i |X_P(x_i)|^2, which must equal the potential's gain.
        return np.concatenate([X.ravel(), [np.einsum("ij,ij->", X, X)]])

    T = 3.0
    sol = integrate.solve_ivp(rhs, (0.0, T), np.concatenate([x0.ravel(), [0.0]]), method="DOP853",
                              rtol=1e-11, atol=1e-12, dense_output=True)
    assert sol.success

    def state(t):
        y = sol.sol(t)
        x = y[:-1].reshape(n, d)
        return x / np.linalg.norm(x, axis=1)[:, None], y[-1]

    ts = np.linspace(0.0, T, 301)
    phi = np.array([p.potential(state(t)[0]).sum() for t in ts])
    gain = np.array([state(t)[1] for t in ts])
    assert np.all(np.diff(phi) >= -1e-12)
    assert phi[-1] - phi[0] > 0.1  # it really moved
    np.testing.assert_allclose(phi - phi[0], gain, rtol=0, atol=1e-8)
    # Pointwise: dPhi/dt = sum |X_P|^2, central differences of the dense solution.
    dt = 1e-5
    for t in [0.05, 0.2, 1.0, 2.5]:
        x, _ = state(t)
        rate = (p.potential(state(t + dt)[0]).sum() - p.potential(state(t - dt)[0]).sum()) / (2 * dt)
        speed2 = np.einsum("ij,ij->", p(x), p(x))
        assert abs(rate - speed2) <= 1e-6 * max(1.0, speed2)


# ---------------------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", NAMES)
@pytest.mark.parametrize("d", [2, 3, 5])
def test_speed_bound(d, activation):
    rng = np.random.default_rng(500 + 3 * d + NAMES.index(activation))
    p = random_perceptron(rng, d, 4, activation)
    x = sphere_points(rng, 20000, d)
    measured = np.linalg.norm(p(x), axis=1).max()
    bound = p.speed_bound()
    assert measured <= bound
    assert np.linalg.norm(p.average(x), axis=1).max() <= bound
    assert bound <= 10 * measured


def test_speed_bound_exact_cases():
    # One hidden unit, U = 0: F = W sigma(b) is constant; max |P_x c| = |c| on the sphere.
    W = np.array([[3.0], [4.0], [0.0]])
    p = Perceptron(W=W, U=np.zeros((1, 3)), b=[2.0], activation="tanh")
    assert abs(p.speed_bound() - 5.0 * math.tanh(2.0)) < 1e-14
    # gelu on an interval around its minimum: the bound is |gelu(z_min)|, not the ends.
    gelu = ACTIVATIONS["gelu"]
    zmin = gelu.extrema[0]
    q = Perceptron(W=W, U=np.array([[0.0, 0.0, 0.1]]), b=[zmin], activation="gelu")
    expect = 5.0 * abs(float(gelu.function(np.array(zmin))))
    assert abs(q.speed_bound() - expect) < 1e-14
    assert Perceptron(W=np.zeros((3, 2)), U=np.ones((2, 3))).speed_bound() == 0.0


def measured_lipschitz(p, rng, pairs=4000, delta=1e-4):
    """max |X(x) - X(y)| / dist(x, y) over random close pairs (geodesic distance)."""
    d = p.d
    x = sphere_points(rng, pairs, d)
    v = rng.normal(size=(pairs, d))
    v -= np.einsum("ij,ij->i", v, x)[:, None] * x
    v /= np.linalg.norm(v, axis=1)[:, None]
    y = np.cos(delta) * x + np.sin(delta) * v
    return (np.linalg.norm(p(x) - p(y), axis=1) / delta).max()


@pytest.mark.parametrize("activation", NAMES)
@pytest.mark.parametrize("d", [2, 3, 5])
def test_rate_bound(d, activation):
    rng = np.random.default_rng(700 + 3 * d + NAMES.index(activation))
    p = random_perceptron(rng, d, 4, activation)
    ratio = measured_lipschitz(p, rng)
    assert 0 < ratio <= p.rate_bound()
    assert p.rate_bound() <= 20 * ratio


def test_rate_bound_needs_the_projection_term():
    # U = 0: X = P_x c with c = W sigma(b) constant, whose Lipschitz constant is exactly |c|
    # (DF = 0: all of it comes from the projection), attained at x orthogonal to c.
    p = Perceptron(W=np.array([[3.0], [4.0], [0.0]]), U=np.zeros((1, 3)), b=[1.0], activation="sigmoid")
    c = 5.0 / (1.0 + math.exp(-1.0))
    assert abs(p.rate_bound() - c) < 1e-14
    ratio = measured_lipschitz(p, np.random.default_rng(9), pairs=20000)
    assert c * 0.99 < ratio <= p.rate_bound() * (1 + 1e-6)
    assert Perceptron(W=np.zeros((3, 2)), U=np.ones((2, 3))).rate_bound() == 0.0
    # Identity, W = U = I: L_F = 1 plus the speed bound ||W||_2 |M|_2 = sqrt 3 (M_i = 1; the
    # true max |F| is 1, the per-unit bound cannot see that |x| = 1 ties the units together).
    q = Perceptron(W=np.eye(3), U=np.eye(3), activation="identity")
    assert abs(q.rate_bound() - (1.0 + math.sqrt(3.0))) < 1e-15


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------
GOOD = {"W": np.ones((3, 4)), "U": np.ones((4, 3)), "b": np.zeros(4), "activation": "relu"}
BAD = [
    ({"W": np.ones(3)}, r"^W must be a d x m matrix"),
    ({"W": np.ones((1, 4))}, r"^W must be a d x m matrix"),
    ({"W": np.ones((3, 0)), "U": np.ones((0, 3)), "b": np.zeros(0)}, r"^W must be a d x m matrix"),
    ({"W": [["a"] * 4] * 3}, r"^W must be"),
    ({"W": np.ones((3, 4)) * 1j}, r"^W must be"),
    ({"W": np.full((3, 4), np.nan)}, r"^W has non-finite entries"),
    ({"U": np.ones((3, 4))}, r"^U must be m x d \(W is 3 x 4, so U must be 4 x 3\), got shape \(3, 4\)"),
    ({"U": np.full((4, 3), np.inf)}, r"^U has non-finite entries"),
    ({"U": None}, r"^U must be"),
    ({"b": np.zeros(3)}, r"^b must have shape \(m,\) = \(4,\), got shape \(3,\)"),
    ({"b": np.zeros((4, 1))}, r"^b must have shape \(m,\)"),
    ({"b": [0, 0, np.nan, 0]}, r"^b has non-finite entries"),
    ({"activation": "foo"}, r"^activation must be one of 'gelu', 'identity', 'relu', 'sigmoid', 'tanh', got 'foo'$"),
    ({"activation": None}, r"^activation must be one of"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_inputs(change, message):
    with pytest.raises(ValueError, match=message):
        Perceptron(**{**GOOD, **change})


def test_good_input_is_accepted():
    p = Perceptron(**GOOD)
    assert (p.d, p.m) == (3, 4) and p.W.dtype == float


def test_module_doctests():
    result = doctest.testmod(perceptron_module)
    assert result.attempted >= 5 and result.failed == 0

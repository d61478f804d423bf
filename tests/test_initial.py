"""Initial data projected onto cells by quadrature."""

import math

import numpy as np
import pytest
from scipy import special

import meanfield as mf


def resolved(initial, base_dir="."):
    return mf.resolve_case({"initial": initial}, base_dir=base_dir)["initial"]


def test_modes_are_exact_cell_averages():
    mesh = mf.CircleMesh(50)
    init = resolved({"kind": "modes", "modes": [{"k": 3, "amplitude": 0.4, "phase": 0.7}, {"k": 7, "amplitude": 0.2}]})
    rho = mf.project(mesh, init)
    a, b = mesh.edge_angles, mesh.edge_angles + mesh.h
    avg = lambda k, ph: (np.sin(k * b - ph) - np.sin(k * a - ph)) / (k * mesh.h)  # noqa: E731
    exact = (1 + 0.4 * avg(3, 0.7) + 0.2 * avg(7, 0.0)) / (2 * np.pi)
    assert np.max(np.abs(rho - exact)) < 1e-13  # midpoint values would be off by 1e-2
    assert math.fsum(rho * mesh.areas) == pytest.approx(1.0, abs=1e-15)


def test_von_mises_density_and_mass():
    mesh = mf.CircleMesh(400)
    kappa = 5.0
    init = resolved({"kind": "vmf", "centers": [[0.0, 2.0]], "kappas": [kappa]})
    rho = mf.project(mesh, init)
    exact_point = np.exp(kappa * np.sin(mesh.angles)) / (2 * np.pi * special.i0(kappa))
    # cell average = point value + h^2/24 rho'' + ...: second-order agreement
    assert np.max(np.abs(rho - exact_point)) < 2e-3 * exact_point.max()
    assert math.fsum(rho * mesh.areas) == pytest.approx(1.0, abs=1e-14)
    assert abs(mesh.angles[np.argmax(rho)] - np.pi / 2) <= mesh.h


def test_vmf_with_huge_concentration_does_not_overflow():
    mesh = mf.CircleMesh(64)
    rho = mf.project(mesh, resolved({"kind": "vmf", "centers": [[1.0, 0.0]], "kappas": [5000.0]}))
    assert np.all(np.isfinite(rho)) and math.fsum(rho * mesh.areas) == pytest.approx(1.0, abs=1e-14)


def test_python_function_from_a_file(tmp_path):
    (tmp_path / "dens.py").write_text("import numpy as np\ndef f(x):\n    return 1.0 + x[:, 0] ** 2\n")
    init = resolved({"kind": "python", "function": "dens.py:f"}, base_dir=tmp_path)
    mesh = mf.CircleMesh(64)
    rho = mf.project(mesh, init)
    # 1 + cos^2 has mass 3 pi; cell averages of cos^2 are exact with the degree-8 rule
    a, b = mesh.edge_angles, mesh.edge_angles + mesh.h
    avg = 1.5 + (np.sin(2 * b) - np.sin(2 * a)) / (4 * mesh.h)
    assert np.max(np.abs(rho - avg / (3 * np.pi))) < 1e-15


def test_points_are_binned_into_cells():
    mesh = mf.CircleMesh(8)
    pts = [[math.cos(t), math.sin(t)] for t in (0.1, 0.2, 3.0)]
    rho = mf.project(mesh, resolved({"kind": "points", "points": pts, "weights": [1.0, 1.0, 2.0]}))
    assert rho[0] * mesh.h == pytest.approx(0.5) and rho[3] * mesh.h == pytest.approx(0.5)
    assert np.count_nonzero(rho) == 2


def test_negative_density_is_rejected():
    with pytest.raises(ValueError, match="negative"):
        mf.project(mf.CircleMesh(32), resolved({"kind": "modes", "modes": [{"k": 2, "amplitude": 1.5}]}))


def test_real_spherical_harmonics_are_orthonormal():
    import basix

    # tensor Gauss rule on the sphere in (cos polar, azimuth)
    pts, wts = basix.make_quadrature(basix.CellType.interval, 30, rule=basix.QuadratureType.gauss_jacobi)
    z = 2 * pts[:, 0] - 1
    phi = 2 * np.pi * (np.arange(64) + 0.5) / 64
    Z, P = np.meshgrid(z, phi, indexing="ij")
    s = np.sqrt(1 - Z**2)
    x = np.stack([s * np.cos(P), s * np.sin(P), Z], axis=-1).reshape(-1, 3)
    w = (np.outer(2 * wts, np.full(64, 2 * np.pi / 64))).ravel()
    lm = [(l, m) for l in range(4) for m in range(-l, l + 1)]
    Y = np.stack([mf.real_sph_harm(l, m, x) for l, m in lm])
    gram = (Y * w) @ Y.T
    assert np.max(np.abs(gram - np.eye(len(lm)))) < 1e-12
    # the documented Cartesian form of degree 1
    c = math.sqrt(3 / (4 * math.pi))
    assert np.allclose(Y[lm.index((1, 1))], c * x[:, 0]) and np.allclose(Y[lm.index((1, -1))], c * x[:, 1])
    assert np.allclose(Y[lm.index((1, 0))], c * x[:, 2])

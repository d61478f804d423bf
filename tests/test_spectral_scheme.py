"""The Fourier pseudo-spectral solver on S^1: exact growth rates, mass, agreement with FV."""

import numpy as np
import pytest

import meanfield as mf
from meanfield.pde.spectral_scheme import SpectralCircleSimulation, interpolant_cell_averages


def measure_rate(M, beta, k, normalized, eps=1e-6, z=0.02):
    """Fit log |rho_k(t)| as in tests/test_circle_solver.py.

    Near the uniform state the modes decouple, so the RK4 error of mode k depends only on
    ``z = sigma_k dt``: with z <= 0.02 its relative rate error is <= z^4 / 120 ~ 1.3e-9.
    The step is set from sigma_k (rate_cfl = z sigma_max / sigma_k): a slow mode then
    takes few steps, which keeps the round-off of adding increments of relative size
    sigma_k dt eps to a density of order one (about 1e-8 of the rate for k = 6,
    beta = 1 with dt set by sigma_max) out of the fit.
    """
    mesh = mf.CircleMesh(M)
    model = mf.AttentionModel(d=2, beta=beta, normalized=normalized)
    sigma = float(mf.growth_rate(k, beta, 2, normalized))
    sim = SpectralCircleSimulation(mesh, model, rate_cfl=z * model.rate_bound(M // 2) / abs(sigma))
    st = mf.State(0.0, (1 + eps * np.cos(k * mesh.angles)) / (2 * np.pi))
    horizon = min(2.0 / abs(sigma), 12.0 / sim.rate)
    times = np.linspace(0.0, horizon, 7)
    amps = []
    for t in times:
        sim.advance(st, t)
        amps.append(abs(st.rho @ np.cos(k * mesh.angles)))
    return np.polyfit(times, np.log(amps), 1)[0], sigma


@pytest.mark.parametrize("normalized", [True, False], ids=["SA", "USA"])
@pytest.mark.parametrize("beta", [1.0, 9.0])
@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_linear_growth_rates_to_1e_8(normalized, beta, k):
    rate, sigma = measure_rate(64, beta, k, normalized)
    assert abs(rate / sigma - 1) <= 1e-8, rate / sigma - 1


@pytest.mark.parametrize("beta, normalized", [(0.0, True), (0.0, False), (25.0, True)])
def test_velocity_matches_direct_sums(beta, normalized):
    mesh = mf.CircleMesh(64)
    model = mf.AttentionModel(d=2, beta=beta, normalized=normalized, V=[[0.5, 0], [0, 0.5]])
    rho = np.exp(0.7 * np.cos(mesh.angles - 1.0) + 0.3 * np.sin(2 * mesh.angles))
    rho /= 2 * np.pi * rho.mean()
    ref = mf.DirectField(model)(mesh.centers, mesh.centers, rho * mesh.areas)
    vel = SpectralCircleSimulation(mesh, model).velocity(rho)
    assert vel.shape == (64, 2)
    assert np.abs(vel - ref).max() <= 1e-12 * np.abs(ref).max()


@pytest.mark.parametrize("kind", ["SA", "USA"])
def test_mass_conservation(kind):
    mesh = mf.CircleMesh(128)
    sim = SpectralCircleSimulation(mesh, mf.AttentionModel(d=2, beta=4.0, normalized=kind == "SA"))
    th = mesh.angles
    st = mf.State(0.0, (1 + 0.2 * np.cos(2 * th) + 0.1 * np.cos(3 * th - 2.0)) / (2 * np.pi))
    masses = []
    # until the density has sharpened (max from 1.3 to > 3 / (2 pi)) while still resolved
    sim.advance(st, 3.0 if kind == "SA" else 0.2, lambda s, dt: masses.append(2 * np.pi * s.rho.mean()))
    assert st.steps > 20
    assert st.rho.max() > 3.0 / (2 * np.pi)
    assert max(abs(m - 1) for m in masses) <= 1e-13


def test_steps_land_on_targets_and_respect_dt_max():
    mesh = mf.CircleMesh(32)
    sim = SpectralCircleSimulation(mesh, mf.AttentionModel(d=2, beta=2.0), dt_max=0.013)
    st = mf.State(0.0, (1 + 0.3 * np.cos(mesh.angles)) / (2 * np.pi))
    dts = []
    for t in (0.1, 0.3, 1.0 / 3.0):
        sim.advance(st, t, lambda s, dt: dts.append(dt))
        assert st.t == t
    assert max(dts) <= 0.013


def test_anisotropic_model_is_rejected():
    with pytest.raises(ValueError, match="finite-volume"):
        SpectralCircleSimulation(mf.CircleMesh(16), mf.AttentionModel(d=2, Q=[[2.0, 0.0], [0.0, 1.0]]))


def test_cell_averages_of_interpolant_are_exact():
    M, cells = 16, 48
    th = (np.arange(M) + 0.5) * 2 * np.pi / M
    rho = 1 + 0.4 * np.cos(3 * th - 0.5) + 0.2 * np.sin(7 * th)
    edges = np.arange(cells + 1) * 2 * np.pi / cells
    exact = 1 + (0.4 * (np.sin(3 * edges[1:] - 0.5) - np.sin(3 * edges[:-1] - 0.5)) / 3
                 - 0.2 * (np.cos(7 * edges[1:]) - np.cos(7 * edges[:-1])) / 7) / (2 * np.pi / cells)
    assert np.abs(interpolant_cell_averages(rho, cells) - exact).max() <= 1e-14


def test_agrees_with_muscl_on_a_smooth_nonlinear_solution():
    # SA, beta = 1, t = 1 (the case of test_circle_solver's order test).
    def initial(theta):
        return (1 + 0.5 * np.cos(theta) + 0.3 * np.cos(2 * theta - 1.0)) / (2 * np.pi)

    model = mf.AttentionModel(d=2, beta=1.0)
    fine = mf.CircleMesh(1024)
    fv = mf.Simulation(fine, model, scheme="muscl")
    case = mf.resolve_case({"initial": {"kind": "modes", "modes": [
        {"k": 1, "amplitude": 0.5}, {"k": 2, "amplitude": 0.3, "phase": 1.0}]}})
    st_fv = mf.State(0.0, mf.project(fine, case["initial"]))
    fv.advance(st_fv, 1.0)

    mesh = mf.CircleMesh(128)
    st = mf.State(0.0, initial(mesh.angles))
    SpectralCircleSimulation(mesh, model).advance(st, 1.0)
    spec = interpolant_cell_averages(st.rho, 1024)
    assert np.abs(spec - st_fv.rho).max() <= 1e-4


def test_spectral_scheme_through_the_cli(tmp_path):
    from meanfield.cli import main

    case = tmp_path / "c.toml"
    case.write_text('[domain]\ncells = 128\n[model]\nbeta = 1.0\n[initial]\nkind = "modes"\n'
                    'modes = [{k = 1, amplitude = 0.5}]\n[solver]\nscheme = "spectral"\nt_end = 1.0\n'
                    '[output]\nplots = false\n')
    assert main(["run", str(case), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert main(["run", str(case), "--set", 'solver.scheme="muscl"', "--set", "domain.cells=1024",
                 "--out", str(tmp_path / "f"), "--quiet"]) == 0
    s, f = np.load(tmp_path / "s" / "final.npz"), np.load(tmp_path / "f" / "final.npz")
    assert abs(s["masses"].sum() - 1) < 1e-13
    # point values of the spectral solution against the finite volumes (cell averages of
    # 8 fine cells around each grid point are second-order accurate point values)
    fine = f["density"].reshape(128, 8).mean(axis=1)
    assert np.max(np.abs(s["density"] - fine)) < 1e-3 * s["density"].max()

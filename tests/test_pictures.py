"""Sphere pictures (meanfield.io.render, meanfield.io.maps): rendered headless, read back.

A known cluster (a von Mises--Fisher density on icosahedral level 3) must put its
brightest pixels where the cluster is: on the Mollweide map (the pixel of its lon/lat
through the map axes' transData) and at the centre of the front view.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest

from meanfield.geometry.sphere import load_icosahedral
from meanfield.io.maps import lon_lat, sphere_map
from meanfield.io.render import DPI, render_sphere, sphere_figure

LON, LAT = 1.0, 0.4  # the cluster's centre (radians)


def unit(lon, lat) -> np.ndarray:
    return np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


@pytest.fixture(scope="module")
def mesh():
    return load_icosahedral(3)


def vmf(mesh, direction, kappa=8.0) -> np.ndarray:
    rho = np.exp(kappa * (np.asarray(mesh.centers) @ direction - 1.0))
    return rho / (rho @ mesh.areas)


def pixels(fig) -> np.ndarray:
    """The figure as written (RGB in [0, 1], rows from the top)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    buf.seek(0)
    return mpimg.imread(buf)[..., :3]


def bright_centroid(img, ax, tol=0.03):
    """Centroid (x, y from the bottom, pixels) of the pixels inside ``ax`` of the colour
    map's top colour, and their count."""
    top = np.asarray(matplotlib.colormaps["magma"](1.0)[:3])
    h = img.shape[0]
    box = ax.get_window_extent()
    rows, cols = np.nonzero(np.abs(img - top).max(axis=-1) < tol)
    y = h - rows - 0.5
    x = cols + 0.5
    inside = (x >= box.x0) & (x <= box.x1) & (y >= box.y0) & (y <= box.y1)
    return np.array([x[inside].mean(), y[inside].mean()]) if inside.any() else None, int(inside.sum())


def test_render_writes_a_picture_that_is_not_blank(tmp_path, mesh):
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(64, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    path = render_sphere(tmp_path / "final.png", mesh, vmf(mesh, unit(LON, LAT)), title="case, SA, beta = 4, t = 1",
                         points=pts)
    img = mpimg.imread(path)
    assert img.shape[:2] == (600, 1500)
    assert img[..., :3].std() > 0.1
    # the old signature, as plots.py calls it
    path = render_sphere(tmp_path / "plain.png", mesh, np.ones(mesh.n_cells), title="density at t = 0")
    assert mpimg.imread(path).shape[:2] == (600, 1500)


def test_single_cluster_is_brightest_where_it_is_on_map_and_front_view(mesh):
    fig, axes, direction = sphere_figure(mesh, vmf(mesh, unit(LON, LAT)), title="one cluster")
    assert direction @ unit(LON, LAT) > 0.99  # the front view looks at the mass
    img = pixels(fig)
    expected = axes["map"].transData.transform((LON, LAT))
    found, n = bright_centroid(img, axes["map"])
    assert n > 10 and np.linalg.norm(found - expected) < 15, (found, expected, n)
    expected = axes["front"].transData.transform((0.0, 0.0))
    found, n = bright_centroid(img, axes["front"])
    assert n > 10 and np.linalg.norm(found - expected) < 15, (found, expected, n)
    assert bright_centroid(img, axes["back"])[1] == 0


def test_cluster_on_the_date_line_does_not_smear(mesh):
    fig, axes, _ = sphere_figure(mesh, vmf(mesh, unit(np.pi, 0.0), kappa=20.0))
    img = pixels(fig)
    ax = axes["map"]
    h = img.shape[0]
    top = np.asarray(matplotlib.colormaps["magma"](1.0)[:3])
    for side in (-1, 1):  # the cluster shows at both ends of the map
        x, y = ax.transData.transform((side * (np.pi - 0.08), np.radians(7.5)))  # between grid lines
        assert np.abs(img[int(h - y), int(x)] - top).max() < 0.1
    # nothing bright across the middle (a triangle drawn from lon -pi to pi would be)
    for lat in np.radians(np.arange(-67.5, 70, 15)):  # between the grid lines
        for lon in np.radians(np.arange(-105, 106, 30)):
            x, y = ax.transData.transform((lon, lat))
            assert img[int(h - y), int(x)].mean() < 0.25, (lon, lat, img[int(h - y), int(x)])


def test_poles_are_covered_on_a_rotated_mesh(mesh):
    """A triangle around a pole (not a vertex at it) still fills the map up to the pole."""
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    rotated = SimpleNamespace(vertices=mesh.vertices @ q.T, triangles=mesh.triangles, centers=mesh.centers @ q.T,
                              areas=mesh.areas)
    z = np.asarray(rotated.centers)[:, 2]
    fig, axes, _ = sphere_figure(rotated, z ** 2 + 0.05)
    img = pixels(fig)
    h = img.shape[0]
    for lat in (1.5, -1.5):
        for lon in np.linspace(-2.0, 2.0, 5):  # (the ellipse's outline lies further out)
            x, y = axes["map"].transData.transform((lon, lat))
            assert img[int(h - y), int(x)].mean() > 0.5, (lon, lat)  # bright: no black background shows


def test_colour_bar_outside_the_discs_and_log_label(mesh):
    fig, axes, _ = sphere_figure(mesh, vmf(mesh, unit(LON, LAT), kappa=20.0))
    bar = axes["colorbar"].get_window_extent()
    for name in ("map", "front", "back"):
        assert not bar.overlaps(axes[name].get_window_extent()), name
    assert "log scale" in axes["colorbar"].get_xlabel()
    fig, axes, _ = sphere_figure(mesh, 1.0 + 0.5 * np.asarray(mesh.centers)[:, 0])
    assert "log" not in axes["colorbar"].get_xlabel()
    # the map alone: its own colour bar below it
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=DPI)
    ax = fig.add_subplot(projection="mollweide")
    sphere_map(ax, mesh, vmf(mesh, unit(LON, LAT)))
    cax = fig.axes[-1]
    assert cax is not ax and not cax.get_window_extent().overlaps(ax.get_window_extent())


def test_particles_are_visible(mesh):
    pts = np.array([unit(-2.0, -0.5), unit(0.5, 0.7)])
    fig, axes, direction = sphere_figure(mesh, np.ones(mesh.n_cells), points=pts)
    img = pixels(fig)
    h = img.shape[0]
    for p in pts:
        x, y = axes["map"].transData.transform(lon_lat(p))
        assert img[int(h - y), int(x)].min() > 0.9  # a white dot over the (black) density
    assert fig.axes[1].collections[-1].get_offsets().shape[0] + fig.axes[2].collections[-1].get_offsets().shape[0] == 2


CASE_WITH_NOISE = """
[domain]
cells = 64
[model]
beta = 4.0
noise = 0.1
[initial]
kind = "modes"
modes = [{k = 2, amplitude = 0.3}]
[solver]
t_end = 0.5
integrator = "rk4"
[output]
every = 0.25
movie = true
[particles]
n = 60
[compare]
particles = [40, 80]
seeds = 1
"""


def test_every_picture_of_particles_and_compare_names_the_case_model_and_noise(tmp_path, monkeypatch, capsys):
    """The particle and compare pictures and movies carry the case file's name, the model and
    the noise in their titles (the particle pictures had only "64 particles ..., t = 15")."""
    from meanfield.cli import main
    from meanfield.io import movie, plots

    titles = {}

    def recording(name, function, key):
        def wrapper(path, *args, **kwargs):
            titles.setdefault(name, []).append(kwargs.get(key, ""))
            return function(path, *args, **kwargs)
        return wrapper

    for name, key in (("plot_diagnostics", "title"), ("plot_particles", "label"), ("plot_compare", "title"),
                      ("plot_cluster_tracks", "title")):
        monkeypatch.setattr(plots, name, recording(name, getattr(plots, name), key))
    monkeypatch.setattr(movie, "write_movie", recording("write_movie", movie.write_movie, "title"))
    case = tmp_path / "noisy_case.toml"
    case.write_text(CASE_WITH_NOISE)
    for command in ("run", "particles", "compare"):
        assert main([command, str(case), "--out", str(tmp_path / command)]) == 0, capsys.readouterr().err
    expected = "noisy_case, SA beta=4, noise sigma=0.1"
    assert set(titles) == {"plot_diagnostics", "plot_particles", "plot_compare", "plot_cluster_tracks", "write_movie"}
    for name, seen in titles.items():
        assert seen and all(title.startswith(expected) for title in seen), (name, seen)
    assert any(title.endswith("particles against the PDE") for title in titles["plot_compare"])
    # the PDE movies of run and of compare's pde/, and the particles' movie
    assert sorted(titles["write_movie"]) == [expected, expected, f"{expected}, particles"]
    assert (tmp_path / "particles" / "movie.gif").is_file() and (tmp_path / "compare" / "particles.png").is_file()


@pytest.mark.parametrize("counts", [[0, 0, 0], [0, 1, 1], [4, 3, 2, 1], [62, 40, 1]])
def test_cluster_count_axes_have_integer_ticks_only(counts):
    """All-zero counts (an early causal run) drew ticks at -0.04 .. 0.04."""
    import matplotlib.pyplot as plt

    from meanfield.io.plots import _integer_axis

    fig, ax = plt.subplots()
    ax.step(range(len(counts)), counts)
    _integer_axis(ax, counts)
    low, high = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if low <= t <= high]
    plt.close(fig)
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    assert low < min(counts) and high > max(counts)


def test_thousands_of_particles_leave_the_density_visible(mesh):
    """4096 dots of the 64-particle size covered 48% of the middle of the map (measured;
    sphere_compare's particles.png hid its three bumps); the smaller dots for large n cover
    21%, while 64 particles keep the full-size dots."""
    from meanfield.io.maps import POINT_STYLE, point_style

    assert point_style(64) == POINT_STYLE and point_style(4096)["s"] < POINT_STYLE["s"] / 3
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(4096, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    covered = []
    for points in (None, pts):
        fig, axes, _ = sphere_figure(mesh, np.ones(mesh.n_cells), points=points)
        img = pixels(fig)
        box = axes["map"].get_window_extent()
        h = img.shape[0]
        middle = img[int(h - box.y1 + 0.3 * box.height): int(h - box.y0 - 0.3 * box.height),
                     int(box.x0 + 0.3 * box.width): int(box.x1 - 0.3 * box.width)]
        if points is None:
            background = np.median(middle.reshape(-1, 3), axis=0)
        covered.append(float((np.abs(middle - background).max(axis=-1) > 0.1).mean()))
    assert covered[0] < 0.1 and 0.05 < covered[1] < 0.3, covered

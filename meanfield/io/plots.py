"""PNG pictures of a run (matplotlib, Agg backend: no display needed).

* ``density.png`` (circle): the density over angle and time as a space-time image, with
  the initial and final profiles beside it.
* ``initial.png``, ``final.png`` (sphere): the density on the sphere from two opposite
  view points (pyvista, rendered offscreen; :mod:`meanfield.io.render`).
* ``diagnostics.png``: energy, order parameter, number of clusters, extremes of the
  density and the mass error over time.
* causal runs (``model.mask = "causal"``), ``causal.png``: the density over position and
  angle ``(s, theta)`` at three times (circle), or each band's order parameter as an image
  over ``(s, t)`` (sphere, beside renderings of the first, middle and last band at the end),
  and the per-position order parameter and cluster count at the first and last snapshot;
  particle runs draw the tokens over ``(s, theta)`` instead (circle).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_run_plots", "write_causal_plots", "plot_causal", "plot_causal_tokens", "plot_spacetime",
           "plot_diagnostics"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt



def _save(plt, fig, path, tight: bool = True) -> Path:
    """Lay out (``tight``; ``False`` for a figure with its own layout engine), write (110 dpi)
    and close ``fig``; returns the path."""
    if tight:
        fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def geometric_times(t) -> bool:
    """Whether the output times ``t`` are spaced geometrically (``output.per_decade``): their
    intervals grow by more than 100 times from the first to the last."""
    t = np.asarray(t, dtype=float)
    positive = t[t > 0]
    if positive.size < 4:
        return False
    steps = np.diff(positive)
    return bool(steps[-1] > 100 * max(steps[0], 1e-300))


def _time_axis(ax, t) -> None:
    """A symmetric-log time axis (linear below the first positive output, logarithmic above)
    for geometric output times, so that the long plateaus and the fast formation both show."""
    t = np.asarray(t, dtype=float)
    if geometric_times(t):
        ax.set_xscale("symlog", linthresh=float(t[t > 0].min()), linscale=0.5)
        ax.set_xlabel("t (logarithmic above the first output)")
        ax.set_xlim(left=float(t.min()))  # the autoscale margin would open negative decades


def plot_spacetime(path, mesh, snapshots, title: str = "") -> Path:
    """Space-time picture of circle densities ``[(t, rho), ...]``; ``title`` (the case and
    model) above both panels (a long one overflowed the left panel's own title)."""
    plt = _pyplot()
    t = np.array([s[0] for s in snapshots])
    rho = np.array([s[1] for s in snapshots])
    zonal = getattr(mesh, "manifold", "") == "zonal"  # bands of the polar angle phi in [0, pi]
    if zonal:
        # the law of the polar angle (mass per unit phi): the density per unit measure of S^{d-1}
        # is huge at the poles, whose bands have measure ~ phi^{d-1}
        rho = rho * mesh.areas / (np.pi / mesh.n_cells)
    theta = mesh.polar_angle(mesh.centers) if zonal else mesh.angles
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    if len(t) > 1:
        edges_t = np.concatenate([[t[0]], 0.5 * (t[1:] + t[:-1]), [t[-1]]])
    else:
        edges_t = np.array([t[0], t[0] + 1.0])
    # More cells than pixel rows would drop one-cell-wide clusters from the picture:
    # pool groups of cells by their maximum so every peak stays visible.
    group = max(1, int(np.ceil(rho.shape[1] / 400)))
    ncol = rho.shape[1] // group
    pooled = rho[:, : ncol * group].reshape(len(t), ncol, group).max(axis=2)
    edges_theta = np.linspace(0.0, np.pi if zonal else 2 * np.pi, ncol + 1)
    uniform = 1.0 / np.pi if zonal else 1.0 / mesh.total_measure
    from matplotlib.colors import LogNorm

    vmax = max(pooled.max(), 2 * uniform)
    norm = LogNorm(vmin=max(min(pooled.min(), uniform / 2), vmax * 1e-4), vmax=vmax)
    img = ax.pcolormesh(edges_t, edges_theta, np.maximum(pooled.T, norm.vmin), shading="flat", cmap="magma", norm=norm)
    fig.colorbar(img, ax=ax, label="mass per unit φ (log scale)" if zonal else "density (log scale)")
    ax.set_xlabel("t")
    _time_axis(ax, t)
    if zonal:
        ax.set_ylabel("polar angle φ (x_1 = cos φ)")
        ax.set_yticks([0, np.pi / 4, np.pi / 2, 3 * np.pi / 4, np.pi], ["0", "π/4", "π/2", "3π/4", "π"])
        ax.set_title(f"law of the polar angle φ on S^{mesh.d - 1} (mass per unit φ)", fontsize=10)
    else:
        ax.set_ylabel("angle θ")
        ax.set_yticks([0, np.pi / 2, np.pi, 3 * np.pi / 2, 2 * np.pi], ["0", "π/2", "π", "3π/2", "2π"])
        ax.set_title("density ρ(θ, t)", fontsize=10)
    ax2.plot(theta, rho[0], label=f"t = {t[0]:g}", color="0.5")
    ax2.plot(theta, rho[-1], label=f"t = {t[-1]:g}", color="C3")
    ax2.set_yscale("log" if rho[-1].max() > 50 * max(rho[-1].min(), 1e-300) else "linear")
    ax2.set_xlabel("polar angle φ" if zonal else "angle θ")
    ax2.set_ylabel("mass per unit φ" if zonal else "density")
    if zonal:
        ax2.set_xticks([0, np.pi / 2, np.pi], ["0", "π/2", "π"])
    else:
        ax2.set_xticks([0, np.pi, 2 * np.pi], ["0", "π", "2π"])
    ax2.legend()
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


def plot_diagnostics(path, rows: list[dict], title: str = "", shifted: bool = False, switches=()) -> Path:
    """``shifted``: the energy column is ``exp(-beta c) E_beta`` (``model.shift``); an empty
    energy (undefined: the terms are no gradient flow) is said in its panel; ``w1_target``
    (when the case has a target) is drawn on the energy panel's right axis; ``switches``:
    the schedule's switch times, dotted in every panel."""
    plt = _pyplot()
    t = np.array([r["t"] for r in rows])
    get = lambda k: np.array([np.nan if r.get(k) is None else r[k] for r in rows], dtype=float)  # noqa: E731
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    ax = axes[0, 0]
    energy = get("energy")
    if np.all(np.isnan(energy)):
        ax.text(0.5, 0.5, "energy undefined:\nthe velocity is not a gradient flow\n(see docs/dynamics.md)",
                ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_yticks([])
    else:
        ax.plot(t, energy, "o-", ms=3)
    ax.set_ylabel("shifted energy $e^{-\\beta c} E_\\beta$" if shifted else "energy E_β")
    if "w1_target" in rows[0]:
        ax2 = ax.twinx()
        ax2.semilogy(t, get("w1_target"), "s-", ms=3, color="C2")
        ax2.set_ylabel("W1 to the target", color="C2")
    for row in axes:
        for a in row:
            for ts in switches:
                a.axvline(ts, color="0.6", ls=":", lw=1)
    ax = axes[0, 1]
    ax.plot(t, get("order_parameter"), "o-", ms=3, label="order parameter |∫x dμ|")
    ax.set_ylim(-0.02, 1.02)
    ax3 = ax.twinx()
    ax3.step(t, get("n_clusters"), where="post", color="C3", label="clusters")
    ax3.set_ylabel("clusters", color="C3")
    _integer_axis(ax3, get("n_clusters"))
    ax.set_ylabel("order parameter")
    ax = axes[1, 0]
    ax.semilogy(t, get("max_density"), label="max")
    floor = get("max_density").max() * 1e-16  # an emptied region would otherwise span 300 decades
    ax.semilogy(t, np.maximum(get("min_density"), floor), label="min (drawn ≥ 1e-16 max)")
    ax.set_ylabel("density")
    from matplotlib.ticker import NullFormatter

    ax.yaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis overlap
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("t")
    ax = axes[1, 1]
    ax.semilogy(t, np.maximum(np.abs(get("mass") - 1.0), 1e-17), "o-", ms=3)
    ax.set_ylabel("|mass − 1| (drawn ≥ 1e-17)")
    ax.set_xlabel("t")
    for a in axes[1]:
        _time_axis(a, t)  # (shared x: every panel)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


def write_run_plots(out_dir, mesh, result, shifted: bool = False, switches=(), label: str = "",
                    model=None) -> list[Path]:
    """``diagnostics.png`` and ``density.png`` (circle, zonal; ``modes.png`` on the circle for one
    isotropic head, :func:`plot_modes`) or ``initial.png``/``final.png`` (sphere); ``label``
    (e.g. the case and its model) heads every title."""
    out_dir = Path(out_dir)
    head = f"{label}: " if label else ""
    paths = [plot_diagnostics(out_dir / "diagnostics.png", result.rows, title=label, shifted=shifted,
                              switches=switches)]
    if mesh.manifold in ("circle", "zonal"):
        t_end = result.snapshots[-1][0]
        paths.append(plot_spacetime(out_dir / "density.png", mesh, result.snapshots,
                                    title=f"{head}density to t = {t_end:g}" if label else ""))
        if model is not None:
            got = plot_modes(out_dir / "modes.png", mesh, result.snapshots, model, label=label)
            if got is not None:
                paths.append(got)
    else:
        from .render import render_sphere

        for name, (t, rho) in (("initial.png", result.snapshots[0]), ("final.png", result.snapshots[-1])):
            paths.append(render_sphere(out_dir / name, mesh, rho, title=f"{head}density at t = {t:g}"))
    return paths


def plot_modes(path, mesh, snapshots, model, count: int = 4, label: str = "") -> Path | None:
    """``modes.png`` (circle runs of one isotropic head): the Fourier amplitudes
    ``|rho_k(t)|`` of the ``count`` modes largest at ``t = 0`` on a log scale, each against its
    linear theory ``|rho_k(0)| e^{sigma_k t}`` (``sigma_k`` of :func:`meanfield.growth_rate`,
    dashed, drawn while it stays on the picture), the first check a reader makes; geometric
    output times on a log axis; ``label`` (the case and model) heads the title. ``None`` when
    the model has no such theory."""
    from ..dynamics.model import as_velocity_model
    from ..fields.attention import AttentionModel, growth_rate

    single = model if isinstance(model, AttentionModel) else as_velocity_model(model).single_head
    if getattr(mesh, "manifold", "") != "circle" or single is None or single.isotropic() is None:
        return None
    c, v = single.isotropic()
    t = np.array([s[0] for s in snapshots])
    rho = np.array([s[1] for s in snapshots])
    amp = np.abs(np.fft.rfft(rho * mesh.areas, axis=1))[:, 1:] / np.pi  # |rho_k| per unit of the uniform state
    if amp.shape[1] == 0:
        return None
    ks = np.argsort(-amp[0])[:count] + 1
    rates = v * growth_rate(ks, single.beta * c, 2, single.normalized, shift=single.logit_offset != 0.0)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    floor = amp.max() * 1e-12
    top = amp.max()
    for i, (k, rate) in enumerate(zip(ks, rates)):
        color = f"C{i}"
        ax.semilogy(t, np.maximum(amp[:, k - 1], floor), "o-", ms=3, color=color, label=f"k = {k} (rate {rate:.3g})")
        with np.errstate(over="ignore"):
            theory = amp[0, k - 1] * np.exp(rate * t)
        shown = theory <= 100 * top  # the first point past the top still drawn, then cut
        cut = int(np.argmin(shown)) + 1 if not shown.all() else t.size
        ax.semilogy(t[:cut], theory[:cut], "--", color=color, lw=1)
    ax.set_ylim(max(floor, amp[0, ks - 1].min() * 1e-3), top * 10)
    ax.set_xlabel("t")
    _time_axis(ax, t)
    ax.set_ylabel("|Fourier amplitude| of the cell masses")
    what = "modes against the linear theory (dashed: |rho_k(0)| e^{sigma_k t})"
    ax.set_title(f"{label}\n{what}" if label else what, fontsize=10)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _integer_axis(ax, counts) -> None:
    """A count axis with integer ticks only: the limits span at least 0..1 (all-zero counts
    would otherwise get ticks at -0.04 .. 0.04)."""
    counts = np.asarray(counts, dtype=float)
    top = float(np.nanmax(counts)) if counts.size and np.isfinite(counts).any() else 0.0
    ax.set_ylim(-0.05 * max(top, 1.0), 1.05 * max(top, 1.0))
    ax.yaxis.get_major_locator().set_params(integer=True)


def _band_panels(fig, axes, positions, profiles) -> None:
    """Per-position order parameter and cluster count ``profiles [(t, order (P,), clusters (P,))]``."""
    ax, ax2 = axes
    colors = ["0.55", "C3"] if len(profiles) == 2 else [f"C{i}" for i in range(len(profiles))]
    for (t, order, clusters), color in zip(profiles, colors):
        ax.plot(positions, order, "o-", ms=3, color=color, label=f"t = {t:g}")
        ax2.step(positions, clusters, where="mid", color=color, label=f"t = {t:g}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, 1)
    ax.set_xlabel("position s")
    ax.set_ylabel("order parameter |∫ x f(s, x) dx|")
    ax.legend()
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("position s")
    ax2.set_ylabel("clusters per position band")
    _integer_axis(ax2, np.concatenate([np.ravel(c) for _, _, c in profiles]))


def plot_causal(path, mesh, snapshots, criterion=None, title: str = "") -> Path:
    """The causal mean field ``[(t, rho (P, N)), ...]``: on the circle the density over
    ``(s, theta)`` at the first, a middle and the last snapshot (log colour scale, one
    colour bar), on the sphere the order parameter of every band over ``(s, t)``; below,
    the per-position order parameter and cluster count at the first and last snapshot."""
    from matplotlib.colors import LogNorm

    from ..causal_run import band_centres, band_diagnostics
    from .. import diagnostics as diag

    criterion = criterion or diag.ClusterCriterion()
    plt = _pyplot()
    P = snapshots[0][1].shape[0]
    positions = band_centres(P)
    s_edges = np.linspace(0.0, 1.0, P + 1)
    fig = plt.figure(figsize=(13, 7.5), layout="constrained")
    grid = fig.add_gridspec(2, 6, height_ratios=[1.15, 1])
    if mesh.manifold == "circle":
        picks = [snapshots[0], snapshots[len(snapshots) // 2], snapshots[-1]]
        top = max(float(r.max()) for _, r in picks)
        uniform = 1.0 / (2 * np.pi)
        norm = LogNorm(vmin=max(top * 1e-4, min(uniform / 2, min(float(r.min()) for _, r in picks) or uniform / 2)),
                       vmax=max(top, 2 * uniform))
        group = max(1, int(np.ceil(mesh.n_cells / 400)))  # pool cells by their maximum: every peak stays visible
        ncol = mesh.n_cells // group
        theta_edges = np.linspace(0.0, 2 * np.pi, ncol + 1)
        for k, (t, rho) in enumerate(picks):
            ax = fig.add_subplot(grid[0, 2 * k: 2 * k + 2])
            pooled = rho[:, : ncol * group].reshape(P, ncol, group).max(axis=2)
            img = ax.pcolormesh(s_edges, theta_edges, np.maximum(pooled.T, norm.vmin), shading="flat", cmap="magma",
                                norm=norm)
            ax.set_title(f"f(s, θ) at t = {t:g}")
            ax.set_xlabel("position s")
            ax.set_yticks([0, np.pi, 2 * np.pi], ["0", "π", "2π"])
            if k == 0:
                ax.set_ylabel("angle θ")
        fig.colorbar(img, ax=fig.axes[:3], label="density (log scale)", shrink=0.9, pad=0.01)
    else:
        t = np.array([sn[0] for sn in snapshots])
        orders = np.array([band_diagnostics(mesh, rho, criterion)[0] for _, rho in snapshots])
        t_edges = np.concatenate([[t[0]], 0.5 * (t[1:] + t[:-1]), [t[-1]]]) if len(t) > 1 else np.array([t[0], t[0] + 1])
        ax = fig.add_subplot(grid[0, :])
        img = ax.pcolormesh(t_edges, s_edges, orders.T, shading="flat", cmap="viridis", vmin=0, vmax=1)
        fig.colorbar(img, ax=ax, label="order parameter of the band")
        ax.set_xlabel("t")
        ax.set_ylabel("position s")
        ax.set_title("order parameter |∫ x f(s, x) dx| over position and time")
    profiles = []
    for t, rho in (snapshots[0], snapshots[-1]):
        order, clusters = band_diagnostics(mesh, rho, criterion)
        profiles.append((t, order, clusters))
    _band_panels(fig, (fig.add_subplot(grid[1, :3]), fig.add_subplot(grid[1, 3:])), positions, profiles)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path, tight=False)


def plot_causal_tokens(path, points, t0_points, t: float, bands: int, criterion=None) -> Path:
    """Causal particles: the tokens over ``(s, theta)`` (circle; ``s = i/n``) at the start and
    at ``t``, and the per-position order parameter and cluster count of ``bands`` bands."""
    from ..causal_run import band_centres, particle_band_diagnostics
    from .. import diagnostics as diag

    criterion = criterion or diag.ClusterCriterion()
    plt = _pyplot()
    n, d = points.shape
    s = np.arange(1, n + 1) / n
    w = np.full(n, 1.0 / n)
    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.15, 1])
    if d == 2:
        ax = fig.add_subplot(grid[0, :])
        size = max(1.0, min(12.0, 4000.0 / n))
        for x, color, label in ((t0_points, "0.6", "t = 0"), (points, "C3", f"t = {t:g}")):
            ax.scatter(s, np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi), s=size, color=color, label=label,
                       linewidths=0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 2 * np.pi)
        ax.set_yticks([0, np.pi, 2 * np.pi], ["0", "π", "2π"])
        ax.set_xlabel("position s = i/n")
        ax.set_ylabel("angle θ")
        ax.set_title(f"{n} causal tokens")
        ax.legend(loc="upper right", markerscale=3)
    else:
        ax = fig.add_subplot(grid[0, :])
        gram = points @ points.T
        ax.imshow(gram, vmin=-1, vmax=1, cmap="RdBu_r", extent=(0, 1, 1, 0))
        ax.set_xlabel("position s'")
        ax.set_ylabel("position s")
        ax.set_title(f"<x_i, x_j> of the {n} tokens at t = {t:g}")
    profiles = []
    for tt, x in ((0.0, t0_points), (t, points)):
        order, clusters = particle_band_diagnostics(x, w, bands, criterion)
        profiles.append((tt, order, clusters))
    _band_panels(fig, (fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])), band_centres(bands), profiles)
    return _save(plt, fig, path)


def write_causal_plots(out_dir, mesh, result, switches=(), criterion=None, label: str = "") -> list[Path]:
    """``diagnostics.png`` and ``causal.png`` of a causal PDE run (sphere: also
    ``final_band_first.png``, ``final_band_middle.png``, ``final_band_last.png``);
    ``label`` (the case and model) heads the titles."""
    out_dir = Path(out_dir)
    head = f"{label}: " if label else ""
    paths = [plot_diagnostics(out_dir / "diagnostics.png", result.rows, title=label, switches=switches),
             plot_causal(out_dir / "causal.png", mesh, result.snapshots, criterion, title=label)]
    if mesh.manifold == "sphere":
        from .render import render_sphere

        t, rho = result.snapshots[-1]
        P = rho.shape[0]
        for name, p in (("first", 0), ("middle", P // 2), ("last", P - 1)):
            paths.append(render_sphere(out_dir / f"final_band_{name}.png", mesh, rho[p],
                                       title=f"{head}band s = {(p + 0.5) / P:.3g} at t = {t:g}"))
    return paths


def plot_particles(path, mesh, points, weights, t: float, density=None, histogram=None, label: str = "") -> Path:
    """Particles at time ``t`` over the PDE density (when given): on the circle a weighted
    histogram of the particle angles against the density, on the sphere a rendering over
    ``density`` or, without it, over ``histogram`` (the particle density per cell, e.g.
    :func:`~meanfield.particles.distances.bin_particles` over the cell areas; needed then).
    ``label`` (the case and model, :func:`~meanfield.dynamics.model.run_label`) heads the
    title."""
    path = Path(path)
    head = f"{label}: " if label else ""
    if mesh is None or mesh.manifold == "zonal" or points.shape[1] > 3:
        return plot_tokens(path, points, weights, t, mesh=mesh, density=density, label=label)
    if mesh.manifold == "sphere":
        from .render import render_sphere

        if density is None and histogram is None:
            raise ValueError("plot_particles on the sphere needs the PDE density or the particle histogram")
        shown = density if density is not None else histogram
        what = "PDE density" if density is not None else "particle histogram"
        return render_sphere(path, mesh, shown, title=f"{head}{len(points)} particles over the {what}, t = {t:g}",
                             points=points)
    plt = _pyplot()
    theta = np.mod(np.arctan2(points[:, 1], points[:, 0]), 2 * np.pi)
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = min(mesh.n_cells, max(16, int(np.sqrt(len(points)))))
    ax.hist(theta, bins=bins, range=(0, 2 * np.pi), weights=weights, density=True, color="C0", alpha=0.6,
            label=f"{len(points)} particles (histogram)")
    if density is not None:
        ax.plot(mesh.angles, density, color="C3", lw=1.5, label="PDE density")
    ax.plot(theta, np.zeros_like(theta), "|", color="k", ms=8, alpha=0.4)
    ax.set_xlabel("angle θ")
    ax.set_ylabel("density")
    ax.set_xticks([0, np.pi, 2 * np.pi], ["0", "π", "2π"])
    ax.set_title(f"{head}t = {t:g}", fontsize=10)
    ax.legend()
    return _save(plt, fig, path)


def plot_tokens(path, points, weights, t: float, mesh=None, density=None, label: str = "") -> Path:
    """Tokens on S^{d-1}, any d: their projection on the first two principal axes (of the
    uncentred second moment, so a cluster and its antipode stay apart), their Gram matrix
    ``<x_i, x_j>`` (tokens ordered by their angle in that plane), and the law of the polar
    angle ``phi`` (``x_1 = cos phi``) against the zonal PDE's when ``mesh`` is zonal and
    ``density`` its band densities."""
    plt = _pyplot()
    x = np.asarray(points, dtype=float)
    n, d = x.shape
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:2].T
    panels = 3 if mesh is not None and getattr(mesh, "manifold", "") == "zonal" else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.8))
    ax = axes[0]
    ax.scatter(proj[:, 0], proj[:, 1], s=max(4.0, min(20.0, 3000.0 / n)), c=np.arange(n), cmap="viridis",
               linewidths=0)
    ax.add_artist(plt.Circle((0, 0), 1.0, fill=False, color="0.7", lw=0.8))
    ax.set_aspect("equal")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    share = (sv[:2] ** 2).sum() / max((sv ** 2).sum(), 1e-300)
    ax.set_title(f"{n} tokens on S^{d - 1} at t = {t:g}: first two principal axes ({100 * share:.0f}% of |x|^2)",
                 fontsize=9)
    ax.set_xlabel("axis 1")
    ax.set_ylabel("axis 2 (colour: token index)")
    order = np.argsort(np.arctan2(proj[:, 1], proj[:, 0]))
    img = axes[1].imshow((x @ x.T)[np.ix_(order, order)], vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    fig.colorbar(img, ax=axes[1], label="<x_i, x_j>")
    axes[1].set_title("Gram matrix (tokens ordered by their angle in the plane)", fontsize=9)
    if panels == 3:
        ax = axes[2]
        phi = np.arccos(np.clip(x[:, 0], -1, 1))
        bins = min(mesh.n_cells, max(16, int(np.sqrt(n))))
        ax.hist(phi, bins=bins, range=(0, np.pi), weights=weights, density=True, color="C0", alpha=0.6,
                label=f"{n} tokens (histogram)")
        if density is not None:
            centres = mesh.polar_angle(mesh.centers)
            ax.plot(centres, density * mesh.areas / (np.pi / mesh.n_cells), color="C3", lw=1.5,
                    label="zonal PDE")
        ax.set_xlabel("polar angle φ (x_1 = cos φ)")
        ax.set_ylabel("mass per unit φ")
        ax.set_xticks([0, np.pi / 2, np.pi], ["0", "π/2", "π"])
        ax.legend()
    if label:
        fig.suptitle(label)
    return _save(plt, fig, path)


def plot_batch(path, rows, x_final) -> Path:
    """A batch of prompts (``particles.batch``): the order parameter and the cluster count over
    time (median, 25-75 % and 5-95 % bands over the prompts), the fraction of merged pairs
    (``<x_i, x_j> >= 0.999``), and the final Gram matrix of the first prompt."""
    plt = _pyplot()
    t = np.array([r["t"] for r in rows])
    get = lambda k: np.array([np.nan if r.get(k) is None else r[k] for r in rows], dtype=float)  # noqa: E731
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, name, label in ((axes[0], "order_parameter", "order parameter |mean x|"),
                            (axes[1], "n_clusters", "clusters (groups at <x_i, x_j> >= 0.999)")):
        ax.fill_between(t, get(f"{name}_q05"), get(f"{name}_q95"), color="C0", alpha=0.2, label="5-95 %")
        ax.fill_between(t, get(f"{name}_q25"), get(f"{name}_q75"), color="C0", alpha=0.4, label="25-75 %")
        ax.plot(t, get(f"{name}_q50"), color="C0", label="median")
        ax.set_xlabel("t")
        ax.set_ylabel(label)
        ax.legend()
    axes[1].yaxis.get_major_locator().set_params(integer=True)
    axes[2].plot(t, get("merged_fraction"), "o-", ms=3)
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_xlabel("t")
    axes[2].set_ylabel("fraction of merged pairs (mean over prompts)")
    x = np.asarray(x_final[0])
    img = axes[3].imshow(x @ x.T, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    fig.colorbar(img, ax=axes[3], label="<x_i, x_j>")
    axes[3].set_title(f"prompt 0 at t = {t[-1]:g}")
    fig.suptitle(f"{rows[-1].get('prompts', len(x_final))} prompts of {x.shape[0]} tokens on S^{x.shape[1] - 1}")
    return _save(plt, fig, path)


def plot_cluster_tracks(out_dir, manifold: str, radius: float = 0.5 * np.pi, title: str = "") -> Path | None:
    """``clusters.png``: the clusters of the run in ``out_dir`` matched across its snapshots
    (:class:`~meanfield.clusters.ClusterTracker`), circle: angle against t, sphere: a map, with
    the mergers starred and ``title`` (the case and model) above; ``None`` for other manifolds
    or a run without clusters."""
    if manifold not in ("circle", "sphere"):
        return None
    from ..clusters import ClusterTracker

    tracker = ClusterTracker.from_run(out_dir, radius=radius)
    if not tracker.tracks:
        return None
    return tracker.plot_tracks(Path(out_dir) / "clusters.png", manifold, log_time=geometric_times(tracker.times),
                               title=f"{title}: cluster tracks" if title else None)


def plot_compare(path, rows, title: str = "") -> Path:
    """Mean distance against n (log-log) at a few times, with a n^(-1/2) guide; ``title``
    (the case and model) above."""
    plt = _pyplot()
    ns = np.array(sorted({r["n"] for r in rows}), dtype=float)
    times = sorted({r["t"] for r in rows})
    pick = sorted({times[0], times[len(times) // 2], times[-1]})
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for t in pick:
        sel = [r for r in rows if r["t"] == t]
        means = np.array([np.mean([r["distance"] for r in sel if r["n"] == n]) for n in ns])
        spread = np.array([np.std([r["distance"] for r in sel if r["n"] == n]) for n in ns])
        slope = np.polyfit(np.log(ns), np.log(means), 1)[0] if len(ns) > 1 and np.all(means > 0) else float("nan")
        ax.errorbar(ns, means, yerr=spread, marker="o", capsize=3, label=f"t = {t:g} (fitted n^{slope:.2f})")
    if len(ns) > 1 and rows:
        ref = np.mean([r["distance"] for r in rows if r["n"] == ns[0]])
        ax.plot(ns, ref * (ns / ns[0]) ** -0.5, "k--", lw=1, label="n^(-1/2)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    for axis in (ax.xaxis, ax.yaxis):  # minor tick labels of a short log axis overlap
        axis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ns, [f"{int(n)}" for n in ns])
    ax.set_xlabel("number of particles n")
    ax.set_ylabel(f"{rows[0]['metric'] if rows else ''} distance to the PDE (mean ± std over seeds)")
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)

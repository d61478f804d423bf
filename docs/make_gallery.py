"""Make the gallery: run the cases behind the figures users come for, shrink their pictures into
docs/gallery/, and write docs/gallery.md with the command, the run time and what to look at.

Usage (from anywhere; several minutes on one core):  python docs/make_gallery.py [--only NAME ...]

Every figure is made by a case of ``cases/`` (or, for the cluster count against beta, by the
loop below over the same solver), so the gallery is what a user gets from the commands it
lists. Pictures are stored as small palette PNGs (at most 900 pixels wide).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
OUT = DOCS / "gallery"
MEANFIELD = shutil.which("meanfield", path=str(Path(sys.executable).parent)) or shutil.which("meanfield")

#: (name, title, command (with {tmp} for a scratch directory), picture in {tmp}, what to look at)
FIGURES = [
    ("clusters_vs_beta", "Clusters on the circle against beta",
     [sys.executable, "docs/make_gallery.py", "--clusters-vs-beta", "{tmp}/clusters_vs_beta.png"],
     "clusters_vs_beta.png",
     "SA from a perturbed uniform density (modes k = 1..12, amplitude 0.01, 256 cells): the number of clusters "
     "follows the fastest linear mode k* = argmax k^2 I_k(beta) / (beta I_0(beta)), close to sqrt(2 beta)."),
    ("circle_clusters", "Four clusters and metastability on the circle (SA, beta = 9)",
     [MEANFIELD, "run", "cases/circle_sa_clusters.toml", "--out", "{tmp}/r"], "r/density.png",
     "Mode k = 4 grows fastest; four clusters form at t ~ 6 and persist (merging is exponentially slow)."),
    ("sphere_clusters", "Clusters on the sphere (non-symmetric Q^T K, rotating V)",
     [MEANFIELD, "run", "cases/sphere_qkv.toml", "--out", "{tmp}/r"], "r/final.png",
     "Four clusters circle the z axis; two of them merge."),
    ("staircase", "The metastable staircase (USA, beta = 5: 64 tokens and the PDE)",
     [sys.executable, "cases/metastable_merging.py", "--out", "{tmp}/r"], "r/staircase.png",
     "Three clusters form by t ~ 45 and merge pairwise after waiting times exponential in beta (t ~ 250 and "
     "5.2e4); the energy against log(t)/beta climbs a staircase whose plateaus are predicted from the cluster "
     "masses alone (each merger of masses m_i, m_j adds m_i m_j / beta; docs/clusters.md). The PDE (512 cells, "
     "noise 0.03 keeping its clusters resolved, the implicit stepper with MUSCL) forms four clusters from its own "
     "perturbed start and merges three times (t ~ 120, 900, 4.5e3: the mergers of SSPRK3 + MUSCL in 1/100 of its "
     "time), its plateaus within 0.7% of the prediction."),
    ("phase_diagram", "Phase diagram of token merging (n = 32, d = 8 and 128)",
     [sys.executable, "cases/phase_diagram.py", "--prompts", "64", "--betas", "8", "--out", "{tmp}/r"], "r/phase.png",
     "P(<x_i, x_j> >= 0.999) over (t, beta), 64 prompts per beta (the authors use 2048), with the equiangular "
     "crossing time: in d = 128 the front follows it, in d = 8 large beta stays metastable."),
    ("causal_clusters", "Causal clustering: the mean field on [0, 1] x S^1",
     [MEANFIELD, "run", "cases/circle_causal_clusters.toml", "--out", "{tmp}/r"], "r/causal.png",
     "Each position attends to the earlier ones: the first positions' clusters take the whole prompt."),
    ("alibi", "The ALiBi slope",
     [sys.executable, "cases/causal_alibi_sweep.py", "--out", "{tmp}/r"], "r/alibi_sweep.png",
     "Early tokens near theta = 0, late near pi: the slope moves where the prompt switches clusters from s = 0.76 "
     "(lambda = 0) to 0.51 (lambda = 32)."),
    ("lost_in_the_middle", "Lost in the middle: the retrieval U shape",
     [sys.executable, "cases/causal_retrieval.py", "--out", "{tmp}/r"], "r/retrieval.png",
     "Soft retrieval accuracy of the last token over the source position: Monte Carlo (20000 prompts) against "
     "the closed form and the finite-n linear response (docs/retrieval.md)."),
    ("perceptron", "Perceptron localization",
     [MEANFIELD, "run", "cases/circle_perceptron_localization.toml", "--out", "{tmp}/r"], "r/density.png",
     "A USA head plus a perceptron in gradient form: three atoms at the critical points, with the masses of "
     "the basins."),
    ("measure_to_measure", "Measure-to-measure interpolation",
     [MEANFIELD, "run", "cases/circle_measure_to_measure.toml", "--out", "{tmp}/r"], "r/density.png",
     "A schedule of perceptron and attention terms maps vMF(kappa = 1) onto 0.7 delta(60°) + 0.3 delta(200°)."),
    ("noise", "Noise mitigates clustering (beta = 1, sigma above the critical 0.945)",
     [MEANFIELD, "run", "cases/circle_noise_sweep.toml", "--set", "model.noise=1.0", "--out", "{tmp}/r"],
     "r/density.png",
     "Above the critical noise the perturbation decays and the density stays uniform; below it "
     "(--set model.noise=0.8) one cluster forms."),
    ("zonal", "The zonal PDE on S^7",
     [MEANFIELD, "run", "cases/zonal_sa_d8.toml", "--out", "{tmp}/r"], "r/density.png",
     "The law of the polar angle: the equator's mass runs into two polar caps."),
]


def clusters_vs_beta(path: Path) -> None:
    """n_clusters at the end of SA runs on the circle against beta, with the fastest mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import meanfield as mf
    from meanfield import diagnostics as diag
    from meanfield.geometry.mesh import CircleMesh
    from meanfield.pde.solver import Simulation, State

    betas = [2.0, 4.0, 9.0, 16.0, 25.0, 36.0]
    mesh = CircleMesh(256)
    rng = np.random.default_rng(0)
    theta = mesh.angles
    rho0 = 1.0 + 0.01 * sum(np.cos(k * theta - rng.uniform(0, 2 * np.pi)) for k in range(1, 13))
    rho0 /= rho0 @ mesh.areas
    counts, fastest = [], []
    for beta in betas:
        ks = np.arange(1, 40)
        rates = mf.growth_rate(ks, beta, 2)
        fastest.append(int(ks[np.argmax(rates)]))
        sim = Simulation(mesh, mf.AttentionModel(d=2, beta=beta))
        state = State(0.0, rho0.copy())
        sim.advance(state, 30.0 / float(rates.max()))  # 30 e-foldings of the fastest mode
        counts.append(int(diag.find_clusters(mesh, state.rho)[0].size))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    b = np.linspace(1.5, 40, 200)
    ax.plot(b, np.sqrt(2 * b), color="0.6", label="sqrt(2 beta)")
    ax.plot(betas, fastest, "s--", color="C1", label="fastest linear mode k*")
    ax.plot(betas, counts, "o", color="C0", ms=8, label="clusters at the end (PDE)")
    ax.set_xlabel("beta")
    ax.set_ylabel("number of clusters")
    ax.set_title("SA on the circle from a perturbed uniform density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print("beta", betas, "clusters", counts, "fastest mode", fastest)


def shrink(src: Path, dst: Path, width: int = 900) -> None:
    """A small palette PNG of ``src`` (at most ``width`` pixels wide)."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.convert("P", palette=Image.ADAPTIVE, colors=256).save(dst, optimize=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", help="names of the figures to (re)make")
    ap.add_argument("--clusters-vs-beta", type=Path, metavar="PNG",
                    help="only draw the clusters-against-beta figure into PNG (six SA runs on 256 cells, beta 2 to 36)")
    args = ap.parse_args(argv)
    if args.clusters_vs_beta:
        clusters_vs_beta(args.clusters_vs_beta)
        return 0
    if MEANFIELD is None:
        ap.error("the meanfield command is not installed (pip install .)")
    OUT.mkdir(exist_ok=True)
    times_file = OUT / "times.txt"
    times = dict(line.split("\t", 1) for line in times_file.read_text().splitlines()) if times_file.exists() else {}
    for name, title, cmd, picture, note in FIGURES:
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            full = [c.replace("{tmp}", tmp) for c in cmd]
            start = time.perf_counter()
            proc = subprocess.run(full, cwd=REPO, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                sys.stderr.write(f"{name}: {' '.join(full)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}\n")
                return 1
            shrink(Path(tmp) / picture, OUT / f"{name}.png")
        times[name] = f"{seconds:.0f}"
        print(f"{name}: {seconds:.1f} s")
    times_file.write_text("".join(f"{k}\t{v}\n" for k, v in times.items()))
    lines = ["# Gallery", "",
             "The figures users come for, each made by the command under it (from the repository root), "
             "with its run time on one core of the 2-core development machine. Regenerate with "
             "`python docs/make_gallery.py` (`--only NAME` for one).", ""]
    for name, title, cmd, picture, note in FIGURES:
        if name not in times:
            continue
        shown = " ".join(Path(c).name if c in (sys.executable, MEANFIELD) else c for c in cmd)
        shown = shown.replace(Path(sys.executable).name, "python").replace("{tmp}", "runs")
        lines += [f"## {title}", "", f"![{title}](gallery/{name}.png)", "", note, "",
                  f"`{shown}` ({times[name]} s)", ""]
    (DOCS / "gallery.md").write_text("\n".join(lines))
    print(f"wrote {DOCS / 'gallery.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

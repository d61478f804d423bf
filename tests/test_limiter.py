"""The MUSCL slope limiter itself, on discontinuous data, without the solver around it.

The solver's runs cannot show a broken limiter: :class:`~meanfield.pde.solver.Simulation`
rejects every step whose stages would go negative (so a run with unlimited slopes stays
nonnegative, in tiny steps) and clips round-off negatives to 0. These tests look at the
face values and at one forward-Euler update instead:

* the face values of rough data lie within the local minimum and maximum of the cells
  around (the cells sharing a vertex, found here from the triangles), and in
  ``[0, 2 rho_i]``, while smooth data keep their unlimited slopes;
* a forward-Euler step at the stated positivity CFL keeps every density >= 0 with no
  clipping and no rejection;
* on the circle the limiter is exactly the monotonized-central (MC) one, and forward Euler
  with it is TVD and keeps the maximum principle for a rigid rotation up to CFL 1/2.
"""

import numpy as np
import pytest
from scipy import sparse

import meanfield as mf
from meanfield.pde.finite_volume import SCHEMES, FiniteVolume
from meanfield.geometry.sphere import SphereMesh, icosahedral


def _shuffled(mesh, seed=0, edge_points=2):
    """The same triangulation with its cells numbered at random (a user mesh), two Gauss
    points per edge (face values near the corners)."""
    perm = np.random.default_rng(seed).permutation(mesh.n_cells)
    return SphereMesh(mesh.vertices, mesh.triangles[perm], edge_points=edge_points)


MESHES = {
    "circle": lambda: mf.CircleMesh(96),
    "icosahedral": lambda: icosahedral(3),
    "user-2pt": lambda: _shuffled(icosahedral(2)),
}


def rough_density(mesh, seed):
    """Discontinuous data: a plateau with jumps of 4x, empty cells, isolated spikes."""
    rng = np.random.default_rng(seed)
    c = mesh.centers
    axis = rng.normal(size=mesh.d)
    axis /= np.linalg.norm(axis)
    s = c @ axis
    rho = np.where(s > 0.3, 4.0, 1.0) + 0.3 * rng.random(mesh.n_cells)
    rho[np.abs(s + 0.2) < 0.15] = 0.0  # an empty band
    rho[rng.random(mesh.n_cells) < 0.05] = 0.0  # scattered empty cells
    rho[rng.random(mesh.n_cells) < 0.03] *= 10.0  # spikes
    return rho


def local_bounds(mesh, rho):
    """``(low, high)``: extrema of ``rho`` over each cell and every cell sharing a vertex with
    it (circle: the two neighbours), found from the triangles alone."""
    if mesh.d == 2:
        nb = np.stack([np.roll(rho, 1), rho, np.roll(rho, -1)])
        return nb.min(axis=0), nb.max(axis=0)
    n, nv = mesh.n_cells, mesh.vertices.shape[0]
    inc = sparse.csr_matrix((np.ones(3 * n), (np.repeat(np.arange(n), 3), mesh.triangles.ravel())), shape=(n, nv))
    touch = (inc @ inc.T).tocsr()  # cells sharing at least one vertex (and the cell itself)
    touch.sort_indices()
    vals = rho[touch.indices]
    return np.minimum.reduceat(vals, touch.indptr[:-1]), np.maximum.reduceat(vals, touch.indptr[:-1])


def face_values(mesh, rho, scheme="muscl"):
    fv = FiniteVolume(mesh, mf.DirectField(mf.AttentionModel(d=mesh.d)), scheme)
    return np.asarray(SCHEMES[scheme](fv, rho))  # (N, faces, points)


def unlimited_face_values(mesh, rho):
    """The least-squares reconstruction before limiting (the mesh's gradient operator)."""
    grad = np.einsum("ndk,nk->nd", mesh.grad_operator, rho[mesh.neighbors] - rho[:, None])
    return rho[:, None, None] + np.einsum("nd,nfqd->nfq", grad, mesh.face_displacement)


@pytest.mark.parametrize("kind", list(MESHES))
def test_face_values_obey_the_local_maximum_principle(kind):
    mesh = MESHES[kind]()
    for seed in range(3):
        rho = rough_density(mesh, seed)
        low, high = local_bounds(mesh, rho)
        faces = face_values(mesh, rho)
        tol = 1e-14 * rho.max()
        assert np.all(faces >= low[:, None, None] - tol), (faces - low[:, None, None]).min()
        assert np.all(faces <= high[:, None, None] + tol), (faces - high[:, None, None]).max()
        assert np.all(faces >= 0) and np.all(faces <= 2 * rho[:, None, None] + tol)
        assert np.all(faces[rho == 0] == 0)  # an empty cell sends nothing
        # the data are rough enough for the limiter to matter: the unlimited slopes break
        # the bounds at many faces (measured 23 % .. 43 % of the face points)
        raw = unlimited_face_values(mesh, rho)
        broken = (raw < low[:, None, None] - tol) | (raw > high[:, None, None] + tol) | (raw < 0)
        assert broken.mean() > 0.05, broken.mean()


@pytest.mark.parametrize("kind", list(MESHES))
def test_smooth_data_keep_their_unlimited_slopes(kind):
    """Away from extrema the limiter must not act: a smooth, monotone-ish density keeps the
    second-order reconstruction on (nearly) every cell (the vertex stencil of the sphere
    exists for this: face-neighbour bounds would clip linear data at corner Gauss points)."""
    mesh = MESHES[kind]()
    a = np.array([0.3, -0.5, 0.8][: mesh.d])
    rho = 2.0 + mesh.centers @ a
    faces, raw = face_values(mesh, rho), unlimited_face_values(mesh, rho)
    kept = np.all(np.abs(faces - raw) <= 1e-13, axis=(1, 2))
    # measured: all but the cells at the two extrema of a.x (circle 4 of 96 cells,
    # level 3 0.6 %, level 2 with 2 points per edge 2.5 %)
    assert kept.mean() > 0.95, kept.mean()
    assert np.abs(faces - rho[:, None, None]).max() > 0.01  # the slopes are really there


def _fields(d):
    """Strongly compressive and rotating fields (SA, beta = 9, V = I + J or I + W)."""
    rot = np.zeros((d, d))
    rot[0, 1], rot[1, 0] = -1.0, 1.0
    return [mf.AttentionModel(d=d, beta=9.0), mf.AttentionModel(d=d, beta=9.0, V=np.eye(d) + rot)]


@pytest.mark.parametrize("scheme", ["upwind", "muscl"])
@pytest.mark.parametrize("kind", list(MESHES))
def test_forward_euler_at_the_positivity_cfl_needs_no_clipping(kind, scheme):
    """``rho + dt L(rho)`` with ``dt = positivity_cfl * cfl_dt``: face values in
    ``[0, 2 rho_i]`` give ``rho_i^new >= rho_i (1 - 2 dt sum w|u| / |C_i|) >= 0``. Twenty
    such steps from rough data: nothing below 0 beyond round-off, nothing rejected."""
    mesh = MESHES[kind]()
    for model in _fields(mesh.d):
        fv = FiniteVolume(mesh, mf.DirectField(model), scheme)
        rho = rough_density(mesh, 7)
        rho /= rho @ mesh.areas
        for step in range(20):
            lu, un, dt_pos = fv.rhs(rho)
            dt = fv.positivity_cfl * fv.cfl_dt(un)
            assert dt_pos >= dt * (1 - 1e-12)  # the exact per-step bound covers the stated one
            new = rho + dt * lu
            # a cell that empties (exactly, or nearly) in this step: round-off either side
            # of 0, measured down to -1e-19 (1e-18 of rho_max); the only thing the
            # solver clips, and the field takes no negative mass
            assert new.min() >= -1e-15 * rho.max(), (step, new.min())
            if step == 0:
                # the CFL condition is what keeps it: four times the step empties cells
                # past zero (measured min -0.002 .. -0.66 rho_max)
                assert (rho + 4 * dt * lu).min() < -1e-3 * rho.max()
            assert abs((new - rho) @ mesh.areas) <= 1e-14
            rho = np.maximum(new, 0.0)


def test_circle_limiter_is_monotonized_central():
    """On the uniform circle the least-squares slope is the central difference and the
    Barth--Jespersen bounds turn it into MC: the face offset is
    ``minmod((d- + d+) / 4, d-, d+)`` (d- = rho_i - rho_{i-1}, d+ = rho_{i+1} - rho_i)."""
    mesh = mf.CircleMesh(96)
    rng = np.random.default_rng(3)
    for rho in (rough_density(mesh, 1), rng.random(96), np.where(rng.random(96) < 0.5, 0.0, rng.random(96))):
        dm, dp = rho - np.roll(rho, 1), np.roll(rho, -1) - rho
        cands = np.stack([(dm + dp) / 4, dm, dp])
        same = (np.sign(cands) == np.sign(cands[0])).all(axis=0) & (cands[0] != 0)
        offset = np.where(same, np.sign(cands[0]) * np.abs(cands).min(axis=0), 0.0)
        faces = face_values(mesh, rho)
        # cell i: face 0 is its left end (edge i), face 1 its right end (edge i + 1)
        assert np.max(np.abs(faces[:, 0, 0] - (rho - offset))) <= 1e-14 * rho.max()
        assert np.max(np.abs(faces[:, 1, 0] - (rho + offset))) <= 1e-14 * rho.max()
        # all three branches occur: extrema (0), the central slope, a one-sided bound
        central = (offset != 0) & (np.abs(offset) == np.abs(cands[0]))
        limited = (offset != 0) & ~central
        assert min(np.count_nonzero(offset == 0), np.count_nonzero(central), np.count_nonzero(limited)) >= 5


class _Rotation:
    """A rigid rotation of the circle at speed c: divergence-free, the plain advection
    equation (any callable ``(targets, sources, weights)`` serves as the field)."""

    def __init__(self, c):
        self.c = c

    def __call__(self, targets, sources, weights):
        return self.c * np.stack([-targets[:, 1], targets[:, 0]], axis=1)


@pytest.mark.parametrize("c", [1.0, -0.7])
def test_circle_mc_forward_euler_is_tvd_and_keeps_the_maximum_principle(c):
    """Advection with MC slopes and forward Euler at CFL nu = c dt / h = 1/2 (``dt = cfl_dt``,
    twice the positivity step): Harten's coefficients lie in [0, 2 nu], so the total
    variation never grows and every new value lies between the old neighbours' extrema."""
    mesh = mf.CircleMesh(128)
    fv = FiniteVolume(mesh, _Rotation(c), "muscl")
    rho = rough_density(mesh, 5)
    tv0 = np.abs(np.diff(rho, append=rho[:1])).sum()
    for step in range(200):
        lu, un, _ = fv.rhs(rho)
        dt = fv.cfl_dt(un)
        assert abs(abs(c) * dt / mesh.h - 0.5) < 1e-12
        new = rho + dt * lu
        low, high = local_bounds(mesh, rho)
        tol = 1e-14 * rho.max()  # round-off (measured 1e-14 absolute)
        assert np.all(new >= low - tol) and np.all(new <= high + tol), step
        tv_old, tv_new = (np.abs(np.diff(r, append=r[:1])).sum() for r in (rho, new))
        assert tv_new <= tv_old + 1e-13, (step, tv_old, tv_new)
        rho = new
    assert tv_new < 0.9 * tv0  # it did smear the jumps (the test is not a no-op)

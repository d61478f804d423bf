"""The finite-volume domain split, checked serially: each rank's share of the update,
assembled, is the serial update (no MPI needed: a stand-in for the communicator)."""

import numpy as np
import pytest

import meanfield as mf
from _helpers import FakeComm
from meanfield.pde.finite_volume import FiniteVolume
from meanfield.geometry.mesh import CircleMesh, morton_order
from meanfield.parallel import Distributor, Partition
from meanfield.geometry.sphere import SphereMesh, icosahedral




class _Dist(Distributor):
    def allreduce_min(self, values):  # one process: the local value
        return np.array(values, dtype=float)


class _CountingField:
    """A backend that records the targets of every evaluation (the work a rank did)."""

    def __init__(self, field):
        self.field, self.model, self.targets = field, field.model, []

    def __call__(self, targets, sources, weights):
        self.targets.append(np.array(targets))
        return self.field(targets, sources, weights)


def _shuffled(mesh, seed=0):
    """The same triangulation with its cells numbered at random (a user mesh)."""
    perm = np.random.default_rng(seed).permutation(mesh.n_cells)
    return SphereMesh(mesh.vertices, mesh.triangles[perm])


@pytest.mark.parametrize("size", [2, 3, 7])
@pytest.mark.parametrize("kind", ["circle", "icosahedral", "user"])
@pytest.mark.parametrize("scheme", ["upwind", "muscl"])
def test_the_shares_of_the_update_assemble_to_the_serial_update(kind, scheme, size):
    mesh = {"circle": lambda: CircleMesh(96), "icosahedral": lambda: icosahedral(2),
            "user": lambda: _shuffled(icosahedral(2))}[kind]()
    model = mf.AttentionModel(d=mesh.d, beta=4.0)
    field = mf.DirectField(model)
    rng = np.random.default_rng(size)
    rho = 1.0 + 0.5 * rng.random(mesh.n_cells)
    rho[rng.random(mesh.n_cells) < 0.1] = 0.0  # empty cells: the limiter's bounds matter
    serial = FiniteVolume(mesh, field, scheme)
    want, un, dt_pos = serial.rhs(rho)
    got = np.full(mesh.n_cells, np.nan)
    owners = np.zeros(mesh.n_cells, dtype=int)
    smallest = np.inf
    evaluated = []
    for rank in range(size):
        part = Partition(_Dist(FakeComm(rank, size)), mesh)
        owners[part.cells] += 1
        counting = _CountingField(field)
        fv = FiniteVolume(mesh, counting, scheme, partition=part)
        lu, _, dt_rank = fv.rhs(rho)
        got[part.cells] = lu
        smallest = min(smallest, dt_rank)
        # the field was evaluated once, at this rank's share of the edge points only (the
        # edges of its cells: measured <= 1.27 x all / size, level 2 on 7 ranks)
        assert len(counting.targets) == 1
        evaluated.append(counting.targets[0])
        assert len(evaluated[-1]) <= 1.35 * mesh.edge_points[:, :, 0].size / size
    assert np.all(owners == 1)  # every cell owned exactly once
    # together the ranks evaluated every edge point
    points = mesh.edge_points.reshape(-1, mesh.d)
    assert sum(map(len, evaluated)) <= 1.25 * len(points)
    assert np.unique(np.concatenate(evaluated), axis=0).shape[0] == np.unique(points, axis=0).shape[0]
    assert np.max(np.abs(got - want)) <= 1e-13 * np.abs(want).max()
    assert smallest == pytest.approx(dt_pos, rel=1e-14)


def test_shares_are_compact_along_the_curve():
    """A rank's cells form a compact patch: few of its edges are shared with other ranks."""
    for mesh in (icosahedral(4), _shuffled(icosahedral(4), seed=3)):
        part = Partition(_Dist(FakeComm(1, 4)), mesh)
        mask = np.zeros(mesh.n_cells, dtype=bool)
        mask[part.cells] = True
        sides = mask[mesh.edge_cells]
        interface = np.count_nonzero(sides[:, 0] != sides[:, 1])
        inside = np.count_nonzero(sides.all(axis=1))
        assert interface < 0.12 * inside, (interface, inside)
        # a random quarter of the cells would cut about 3/4 of their edges
        assert part.cells.size in (mesh.n_cells // 4, mesh.n_cells // 4 + 1)


def test_morton_order_is_a_permutation_following_the_curve():
    pts = np.random.default_rng(0).uniform(-1, 1, size=(1000, 3))
    order = morton_order(pts)
    assert np.array_equal(np.sort(order), np.arange(1000))
    # consecutive points along the curve are much closer than random pairs
    step = np.linalg.norm(np.diff(pts[order], axis=0), axis=1).mean()
    assert step < 0.35 * np.linalg.norm(pts[1:] - pts[:-1], axis=1).mean()

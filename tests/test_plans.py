"""Plans (meanfield.fields.plans): a fixed point set prepared once per backend and reused.

Every backend takes a plan or a raw array wherever it takes points, with the same bits; the
finite-volume operator (serial and on a partition) makes its plans once and its stages
reuse what they prepared; a field without ``plan`` still gets raw arrays."""

from __future__ import annotations

import numpy as np
import pytest

import meanfield as mf
from _helpers import sphere_points
from _helpers import FakeComm
from meanfield.fields.plans import PointPlan, as_points, make_plan
from meanfield.fields.spectral_circle import SpectralCircleField
from meanfield.fields.spectral_sphere import SpectralSphereField
from meanfield.fields.spectral_sphere_general import GeneralSphereField
from meanfield.geometry.mesh import CircleMesh
from meanfield.geometry.sphere import icosahedral
from meanfield.parallel import DistributedField, DistributedPlan, Distributor, Partition
from meanfield.pde.finite_volume import FiniteVolume




class _OneRank(Distributor):
    """A distributor of one rank, no MPI."""

    def __init__(self):
        super().__init__(FakeComm(0, 1))

    def allreduce_sum(self, coeffs):
        return np.array(coeffs, copy=True)

    def allreduce_min(self, values):
        return np.array(values, dtype=float)

    def allgather_rows(self, local, n):
        return np.asarray(local)

    def abort(self, message, code=1):
        raise RuntimeError(message)


def _circle_points(rng, n):
    t = rng.uniform(0, 2 * np.pi, n)
    return np.column_stack([np.cos(t), np.sin(t)])


def _backends():
    K = [[1, -0.5, 0], [0.5, 1, 0], [0, 0, 1]]
    V = [[1, -1, 0], [1, 1, 0], [0, 0, 1]]
    return [
        ("direct circle", mf.DirectField(mf.AttentionModel(d=2, beta=4.0))),
        ("circle iso", SpectralCircleField(mf.AttentionModel(d=2, beta=4.0))),
        ("circle general", SpectralCircleField(mf.AttentionModel(d=2, beta=4.0, K=[[1, 0.3], [0, 1]]))),
        ("direct sphere", mf.DirectField(mf.AttentionModel(d=3, beta=5.0))),
        ("sphere SA", SpectralSphereField(mf.AttentionModel(d=3, beta=5.0))),
        ("sphere USA", SpectralSphereField(mf.AttentionModel(d=3, beta=5.0, normalized=False))),
        ("general", GeneralSphereField(mf.AttentionModel(d=3, beta=3.0, K=K, V=V))),
    ]


@pytest.mark.parametrize("name, field", _backends(), ids=[b[0] for b in _backends()])
def test_a_plan_gives_the_bits_of_raw_arrays(name, field):
    rng = np.random.default_rng(4)
    d = field.model.d
    x = sphere_points(rng, 400) if d == 3 else _circle_points(rng, 400)
    t = sphere_points(rng, 150) if d == 3 else _circle_points(rng, 150)
    w = rng.random(400)
    ref = field(t, x, w)
    shared = field(x, x, w)
    tp, xp = field.plan(t), field.plan(x)
    assert isinstance(tp, PointPlan) and len(tp) == 150 and tp.shape == t.shape
    assert not tp.points.flags.writeable and np.array_equal(as_points(tp), t)
    assert np.array_equal(field(tp, xp, w), ref)
    assert np.array_equal(field(tp, x, w), ref)
    assert np.array_equal(field(xp, xp, w), shared)
    for _ in range(2):  # prepared on the first call, reused by the second
        assert np.array_equal(field(xp, xp, w), shared)
    if hasattr(field, "coefficients"):
        assert np.array_equal(field.evaluate(tp, field.coefficients(xp, w), x, w), ref)
        assert np.array_equal(field.coefficients(xp, w), field.coefficients(x, w))
        zero = w.copy()
        zero[::7] = 0.0  # dropped sources are prepared for that call only
        assert np.array_equal(field.coefficients(xp, zero), field.coefficients(x, zero))
        assert np.array_equal(field(tp, xp, zero), field(t, x, zero))
    # a plan of another backend: its points are used
    other = mf.DirectField(field.model).plan(t)
    assert np.array_equal(field(other, xp, w), ref)
    # the one-rank split takes plans too
    split = DistributedField(field, _OneRank())
    sp = split.plan(x)
    assert isinstance(sp, DistributedPlan) and len(sp) == 400
    assert np.array_equal(split(sp, sp, w), shared)
    assert np.array_equal(split(x, x, w), shared)
    assert np.array_equal(split(split.plan(t), x, w), ref)


def test_prepared_items_are_made_once():
    rng = np.random.default_rng(2)
    x = sphere_points(rng, 300)
    plan = SpectralSphereField(mf.AttentionModel(d=3, beta=5.0)).plan(x)
    calls = []
    item = plan.prepared("k", lambda p: calls.append(1) or p.sum())
    assert plan.prepared("k", lambda p: calls.append(1)) == item and calls == [1]
    x[0] = 0.0  # the plan holds a copy
    assert plan.points[0, 0] != 0.0 or plan.points[0, 1] != 0.0


def test_make_plan_leaves_a_field_without_plans_alone():
    class Plain:
        def __call__(self, targets, sources, weights):
            return np.zeros_like(targets)

    pts = np.zeros((3, 2))
    assert make_plan(Plain(), pts) is pts
    assert as_points(pts) is pts


@pytest.mark.parametrize("kind", ["circle", "sphere"])
def test_the_finite_volume_operator_prepares_its_points_once(kind):
    if kind == "circle":
        mesh = CircleMesh(64)
        field = SpectralCircleField(mf.AttentionModel(d=2, beta=4.0))
    else:
        mesh = icosahedral(2)
        field = SpectralSphereField(mf.AttentionModel(d=3, beta=5.0))
    rng = np.random.default_rng(1)
    rho = 1.0 + 0.3 * rng.random(mesh.n_cells)
    fv = FiniteVolume(mesh, field, "muscl")
    # the operator's plans are the velocity's; each holds the backend's own plan of the points
    assert isinstance(fv._targets, PointPlan) and fv._targets.field is fv.field
    targets, centers = fv._targets.backend_plan(field), fv._centers.backend_plan(field)
    assert targets.field is field and centers.field is field and fv.n_targets == len(fv._targets)
    ref = field(mesh.edge_points.reshape(-1, mesh.d), mesh.centers, fv.masses(rho))
    lu1, un1, _ = fv.rhs(rho)
    kept = {k: v for k, v in targets._prepared.items()}
    kept_c = {k: v for k, v in centers._prepared.items()}
    assert kept and kept_c  # the targets' and the sources' items
    lu2, un2, _ = fv.rhs(rho)
    assert np.array_equal(lu1, lu2) and np.array_equal(un1, un2)
    assert fv._targets.backend_plan(field) is targets and fv._centers.backend_plan(field) is centers
    assert all(targets._prepared[k] is v for k, v in kept.items())
    assert all(centers._prepared[k] is v for k, v in kept_c.items())
    normals = mesh.edge_normals
    assert np.array_equal(un1, np.einsum("eqd,eqd->eq", ref.reshape(normals.shape), normals))
    assert np.array_equal(fv.velocity_at_centers(rho), field(mesh.centers, mesh.centers, fv.masses(rho)))
    # a partition of one rank: plans of its points, the same bits
    part = Partition(_OneRank(), mesh)
    pfv = FiniteVolume(mesh, field, "muscl", partition=part)
    assert isinstance(pfv._owned_centers, PointPlan) and isinstance(pfv._targets, PointPlan)
    lu3, _, _ = pfv.rhs(rho)
    assert np.abs(lu3 - lu1[part.cells]).max() <= 1e-13 * np.abs(lu1).max()
    assert np.allclose(pfv.velocity_at_centers(rho), fv.velocity_at_centers(rho), rtol=0, atol=1e-13)

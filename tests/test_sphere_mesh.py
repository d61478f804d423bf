"""Geometry and validation of triangulated sphere meshes (meanfield.geometry.sphere)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meanfield.geometry.sphere import (
    MESH_DIR,
    SHIPPED_LEVELS,
    MeshError,
    SphereMesh,
    icosahedral,
    icosahedral_arrays,
    load_icosahedral,
    load_icosahedral_arrays,
    load_mesh,
    parse_mesh_spec,
    spherical_areas,
)

FOUR_PI = 4.0 * math.pi


@pytest.fixture(scope="module")
def levels():
    return {L: load_icosahedral(L) for L in range(6)}


@pytest.fixture(scope="module")
def uv_sphere():
    pv = pytest.importorskip("pyvista")
    s = pv.Sphere(theta_resolution=20, phi_resolution=20)
    return np.asarray(s.points, dtype=float), np.asarray(s.regular_faces, dtype=np.int64)


def _polydata(points, faces):
    import pyvista as pv

    return pv.PolyData.from_regular_faces(np.asarray(points, float), np.asarray(faces))


def _all_meshes(levels, uv_sphere):
    return list(levels.values()) + [SphereMesh(*uv_sphere), SphereMesh(*uv_sphere, edge_points=3)]


# -- areas and quadrature --------------------------------------------------------------------
def test_areas_sum_to_four_pi(levels, uv_sphere):
    for mesh in _all_meshes(levels, uv_sphere):
        assert np.all(mesh.areas > 0)
        assert abs(mesh.areas.sum() - FOUR_PI) <= 1e-12 * FOUR_PI
        mesh.validate()


def test_icosahedral_counts_and_euler(levels):
    for L, mesh in levels.items():
        assert mesh.n_cells == 20 * 4**L
        assert mesh.n_vertices == 10 * 4**L + 2
        assert mesh.n_edges == 30 * 4**L
        assert mesh.n_vertices - mesh.n_edges + mesh.n_cells == 2
        assert mesh.max_degree == int(math.sqrt(mesh.n_cells / 2))
    assert np.allclose(levels[0].areas, FOUR_PI / 20, rtol=1e-14)


def test_areas_match_high_order_quadrature(levels, uv_sphere):
    for mesh in [levels[2], levels[4], SphereMesh(*uv_sphere)]:
        _, w = mesh.cell_quadrature(30, normalize=False)
        assert np.allclose(w.sum(axis=1), mesh.areas, rtol=1e-12, atol=0)


def test_cell_quadrature_weight_sums(levels):
    for L in (2, 3, 4, 5):
        _, w = levels[L].cell_quadrature(8, normalize=False)
        err = np.max(np.abs(w.sum(axis=1) / levels[L].areas - 1.0))
        assert err < (1e-10 if L == 2 else 1e-12), (L, err)
    pts, w = levels[1].cell_quadrature(8)  # normalized: exact sums, points on the sphere
    assert np.allclose(w.sum(axis=1), levels[1].areas, rtol=1e-14)
    assert np.allclose(np.linalg.norm(pts, axis=-1), 1.0, atol=1e-15)
    # integrates a smooth function: int_S x_3^2 = 4 pi / 3
    pts, w = levels[3].cell_quadrature(8)
    assert abs(np.sum(w * pts[..., 2] ** 2) - FOUR_PI / 3) < 1e-12


def test_centers_are_spherical_centroids(levels, uv_sphere):
    for mesh in _all_meshes(levels, uv_sphere):
        assert np.allclose(np.linalg.norm(mesh.centers, axis=1), 1.0, atol=1e-15)
        pts, w = mesh.cell_quadrature(30, normalize=False)
        moment = np.einsum("nq,nqd->nd", w, pts)
        c = moment / np.linalg.norm(moment, axis=1, keepdims=True)
        assert np.max(np.linalg.norm(c - mesh.centers, axis=1)) < 1e-12
        # the centre lies inside its triangle
        v = mesh.vertices[mesh.triangles]
        for k in range(3):
            a, b = v[:, k], v[:, (k + 1) % 3]
            assert np.all(np.einsum("nd,nd->n", np.cross(a, b), mesh.centers) > 0)


# -- edges -------------------------------------------------------------------------------------
def test_edge_geometry(levels, uv_sphere):
    for mesh in _all_meshes(levels, uv_sphere):
        x = mesh.edge_points
        n = mesh.edge_normals
        a = mesh.vertices[mesh.edge_vertices[:, 0]][:, None, :]
        b = mesh.vertices[mesh.edge_vertices[:, 1]][:, None, :]
        assert np.allclose(np.linalg.norm(x, axis=-1), 1.0, atol=1e-15)
        # on the great-circle arc between a and b
        plane = np.cross(a, b)
        assert np.max(np.abs(np.einsum("eqd,eqd->eq", plane, x))) < 1e-15
        ang = lambda p, q: np.arctan2(np.linalg.norm(np.cross(p, q), axis=-1), np.einsum("...d,...d->...", p, q))
        assert np.allclose(ang(a, x) + ang(x, b), mesh.edge_lengths[:, None], rtol=0, atol=1e-14)
        assert np.allclose(mesh.edge_weights.sum(axis=1), mesh.edge_lengths, rtol=1e-14)
        # unit, tangent, perpendicular to the arc, from left into right
        assert np.allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-15)
        assert np.max(np.abs(np.einsum("eqd,eqd->eq", n, x))) < 1e-15
        tangent = np.cross(plane, x)
        assert np.max(np.abs(np.einsum("eqd,eqd->eq", n, tangent))) < 1e-14
        left, right = mesh.centers[mesh.edge_cells[:, 0]], mesh.centers[mesh.edge_cells[:, 1]]
        assert np.all(np.einsum("eqd,ed->eq", n, right - left) > 0)
        # the left cell's third vertex is on the side opposite to the normal
        assert np.all(np.einsum("eqd,ed->eq", n, left) < 0) and np.all(np.einsum("eqd,ed->eq", n, right) > 0)


def test_edge_quadrature_integrates_along_arcs(levels):
    mesh = SphereMesh(levels[1].vertices, levels[1].triangles, edge_points=3)
    # a polynomial of degree <= 5 in the arc-length parameter is integrated exactly
    a = mesh.vertices[mesh.edge_vertices[:, 0]]
    s = np.arctan2(np.linalg.norm(np.cross(a[:, None, :], mesh.edge_points), axis=-1),
                   np.einsum("ed,eqd->eq", a, mesh.edge_points))
    exact = mesh.edge_lengths**6 / 6
    assert np.allclose(np.sum(mesh.edge_weights * s**5, axis=1), exact, rtol=1e-12)


def test_neighbours_and_cell_edges(levels, uv_sphere):
    for mesh in _all_meshes(levels, uv_sphere):
        n = mesh.n_cells
        idx = np.arange(n)
        assert mesh.neighbors.shape == (n, 3) and mesh.cell_edges.shape == (n, 3)
        # symmetric: i is a neighbour of each of its neighbours, across the same edge
        for k in range(3):
            j = mesh.neighbors[:, k]
            assert np.all(j != idx)
            back = mesh.neighbors[j] == idx[:, None]
            assert np.all(back.sum(axis=1) == 1)
            assert np.all(mesh.cell_edges[j][back] == mesh.cell_edges[:, k])
        # each edge appears once with +1 (left) and once with -1 (right)
        e = mesh.cell_edges.ravel()
        sgn = mesh.cell_edge_sign.ravel()
        assert np.all(np.bincount(e[sgn > 0], minlength=mesh.n_edges) == 1)
        assert np.all(np.bincount(e[sgn < 0], minlength=mesh.n_edges) == 1)
        cells = np.repeat(idx, 3)
        assert np.all(mesh.edge_cells[e[sgn > 0], 0] == cells[sgn > 0])
        assert np.all(mesh.edge_cells[e[sgn < 0], 1] == cells[sgn < 0])
        # local edge k joins triangles[:, k] and triangles[:, k + 1]
        ev = np.sort(mesh.edge_vertices[mesh.cell_edges], axis=-1)
        loc = np.sort(np.stack([mesh.triangles, np.roll(mesh.triangles, -1, axis=1)], axis=-1), axis=-1)
        assert np.array_equal(ev, loc)
        assert mesh.perimeter.shape == (n,) and np.all(mesh.perimeter > 0)


# -- icosahedral hierarchy and files ------------------------------------------------------------
def test_children_tile_parents(levels):
    for L in range(5):
        parent, child = levels[L], levels[L + 1]
        sums = child.areas.reshape(-1, 4).sum(axis=1)
        assert np.max(np.abs(sums / parent.areas - 1.0)) < 1e-14
        # children 4i..4i+2 hold the parent's vertices as corners, and vertices are nested
        ct = child.triangles.reshape(-1, 4, 3)
        assert np.array_equal(ct[:, 0, 0], parent.triangles[:, 0])
        assert np.array_equal(ct[:, 1, 1], parent.triangles[:, 1])
        assert np.array_equal(ct[:, 2, 2], parent.triangles[:, 2])
        assert np.array_equal(child.vertices[: parent.n_vertices], parent.vertices)
        # restriction of masses is a sum over groups of 4
        rho = 1.0 + child.centers[:, 0] * child.centers[:, 2]
        assert math.isclose((rho * child.areas).reshape(-1, 4).sum(axis=1).sum(), rho @ child.areas, rel_tol=1e-14)


def test_base_triangles_follow_a_hamiltonian_path(levels):
    nb = levels[0].neighbors
    assert all(i + 1 in nb[i] for i in range(19))
    # hence the descendants of consecutive base triangles are contiguous blocks of 4**L cells
    mesh = levels[3]
    block = np.repeat(np.arange(20), 4**3)
    assert np.array_equal(np.arange(mesh.n_cells) // 4**3, block)


def test_shipped_files_equal_generated():
    for L in SHIPPED_LEVELS:
        path = MESH_DIR / f"icosahedral_{L}.npz"
        with np.load(path) as z:
            assert z["vertices"].dtype == np.float64 and z["triangles"].dtype == np.int32
            v, t = icosahedral_arrays(L)
            assert np.array_equal(z["triangles"], t)
            assert np.allclose(z["vertices"], v, rtol=0, atol=1e-15)
    fresh, shipped = icosahedral(4), load_icosahedral(4)
    assert np.array_equal(fresh.triangles, shipped.triangles)
    assert np.allclose(fresh.areas, shipped.areas, rtol=1e-14)
    assert np.array_equal(load_icosahedral_arrays(2)[1], icosahedral_arrays(2)[1])


def test_higher_levels_are_generated_and_cached(tmp_path, monkeypatch):
    import meanfield.geometry.sphere as sph

    monkeypatch.setenv("MEANFIELD_CACHE", str(tmp_path))
    monkeypatch.setattr(sph, "SHIPPED_LEVELS", range(0, 2))  # pretend only 0, 1 ship
    v, t = sph.load_icosahedral_arrays(3)
    assert (tmp_path / "icosahedral_3.npz").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    v2, t2 = sph.load_icosahedral_arrays(3)  # from the cache
    vf, tf = icosahedral_arrays(3)
    assert np.array_equal(t2, tf) and np.allclose(v2, vf, atol=1e-15) and np.array_equal(v, v2)


def test_parse_mesh_spec(tmp_path, uv_sphere):
    mesh = parse_mesh_spec("icosahedral:2", tmp_path)
    assert mesh.n_cells == 320
    for bad in ("icosahedral", "icosahedral:", "icosahedral:11", "icosahedral:-1", "icosahedral:2.5", "icosahedral:x"):
        with pytest.raises(MeshError, match="icosahedral:LEVEL"):
            parse_mesh_spec(bad, tmp_path)
    _polydata(*uv_sphere).save(tmp_path / "s.vtk")
    assert parse_mesh_spec("s.vtk", tmp_path).n_cells == 720
    with pytest.raises(MeshError, match="missing.vtk"):
        parse_mesh_spec("missing.vtk", tmp_path)


# -- gradient reconstruction ---------------------------------------------------------------------
def test_gradient_of_linear_function_converges(levels):
    """Least-squares gradient of rho = a.x from the 3 neighbours vs the tangential
    projection of a at the centres. First order: a.x is not linear in the geodesic
    displacements (curvature term (a.c)|v|^2/2) and the 3-cell stencil is not symmetric."""
    a = np.array([0.3, -0.5, 0.8])
    errs = []
    for L in range(2, 7):
        mesh = levels[L] if L in levels else load_icosahedral(L)
        rho = mesh.centers @ a
        g = np.einsum("ndk,nk->nd", mesh.grad_operator, rho[mesh.neighbors] - rho[:, None])
        c = mesh.centers
        exact = a - (c @ a)[:, None] * c
        assert np.max(np.abs(np.einsum("nd,nd->n", g, c))) < 1e-12  # tangent
        errs.append(np.max(np.linalg.norm(g - exact, axis=1)))
    errs = np.array(errs)  # measured: 2.8e-2, 1.6e-2, 8.1e-3, 4.1e-3, 2.0e-3
    rates = np.log2(errs[:-1] / errs[1:])
    assert np.all(np.diff(errs) < 0) and errs[-1] < 3e-3
    assert np.all(rates[1:] > 0.9), (errs, rates)


# -- user meshes -------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".vtk", ".stl", ".ply", ".obj", ".vtp", ".vtu"])
def test_load_user_mesh_formats(tmp_path, uv_sphere, suffix):
    poly = _polydata(*uv_sphere)
    path = tmp_path / f"sphere{suffix}"
    (poly.cast_to_unstructured_grid() if suffix == ".vtu" else poly).save(path)
    mesh = load_mesh(path)
    assert mesh.n_cells == 720 and mesh.n_vertices == 362
    assert abs(mesh.areas.sum() - FOUR_PI) <= 1e-12 * FOUR_PI
    assert np.all(mesh.areas > 0)


def test_load_inward_mesh_is_flipped(tmp_path, uv_sphere):
    pts, faces = uv_sphere
    _polydata(3.0 * pts, faces[:, ::-1]).save(tmp_path / "inward.vtk")
    mesh = load_mesh(tmp_path / "inward.vtk")
    assert np.all(mesh.areas > 0) and abs(mesh.areas.sum() - FOUR_PI) <= 1e-12 * FOUR_PI


def test_load_quad_meshes(tmp_path):
    pv = pytest.importorskip("pyvista")
    pv.Cube().save(tmp_path / "cube.vtk")
    cube = load_mesh(tmp_path / "cube.vtk")
    assert cube.n_cells == 12 and cube.n_vertices == 8
    # a quad-faced cubed sphere (points on the cube, projected)
    pv.Box(level=4, quads=True).save(tmp_path / "box.ply")
    box = load_mesh(tmp_path / "box.ply")
    assert box.n_cells == 2 * 6 * 25 and box.n_vertices - box.n_edges + box.n_cells == 2
    for mesh in (cube, box):
        assert abs(mesh.areas.sum() - FOUR_PI) <= 1e-12 * FOUR_PI
        mesh.validate()


def _expect(tmp_path, name, points, faces, pattern):
    path = tmp_path / name
    _polydata(points, faces).save(path)
    with pytest.raises(MeshError, match=pattern) as info:
        load_mesh(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_broken_meshes_are_rejected(tmp_path, uv_sphere):
    pts, faces = uv_sphere
    # open: one triangle removed
    msg = _expect(tmp_path, "open.vtk", pts, np.delete(faces, 100, axis=0), r"not closed: edge \(\d+, \d+\)")
    assert "only one triangle" in msg
    # inconsistent: one triangle flipped
    f = faces.copy()
    f[100] = f[100, ::-1]
    msg = _expect(tmp_path, "flipped.vtk", pts, f, r"inconsistently oriented: edge \(\d+, \d+\)")
    assert "triangles 100 and" in msg or "and 100" in msg
    # degenerate: a repeated vertex
    f = faces.copy()
    f[7, 1] = f[7, 0]
    _expect(tmp_path, "repeat.vtk", pts, f, r"degenerate triangle 7 \(vertices \[\d+, \d+, \d+\]\) repeats a vertex")
    # non-manifold: a duplicated triangle
    _expect(tmp_path, "dup.vtk", pts, np.vstack([faces, faces[5:6]]), r"not a manifold: triangles 5 and 720 are duplicates")


def test_degenerate_sliver_is_rejected(tmp_path, levels):
    base = levels[1]
    v, t = base.vertices.copy(), base.triangles.copy()
    a, b = base.edge_vertices[0]
    left = base.edge_cells[0, 0]  # traverses a -> b
    tl = list(t[left])
    c = tl[(tl.index(a) + 2) % 3]
    m = len(v)
    v = np.vstack([v, (v[a] + v[b]) / np.linalg.norm(v[a] + v[b])])  # the arc midpoint
    # split the left triangle at m and close the hole with the flat sliver (a, b, m):
    # closed, consistently oriented, but the sliver has zero area
    t = np.vstack([np.delete(t, left, axis=0), [[a, m, c], [m, b, c], [a, b, m]]])
    with pytest.raises(MeshError, match=r"degenerate triangle 81 .*\(collinear or coincident"):
        SphereMesh(v, t)
    _polydata(v, t).save(tmp_path / "sliver.vtk")
    with pytest.raises(MeshError, match="sliver.vtk: degenerate"):
        load_mesh(tmp_path / "sliver.vtk")


def test_topology_errors_from_arrays(levels):
    v, t = levels[1].vertices, levels[1].triangles
    tv = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1.0]])
    tt = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    tetra = SphereMesh(tv, tt)  # a tetrahedron is a valid (coarse) sphere mesh
    assert np.allclose(tetra.areas, math.pi, rtol=1e-14)
    # an edge shared by four triangles: a second tetrahedron glued along edge (0, 1)
    tv2 = np.vstack([tv, [[2, 0.5, 1], [0.5, 2, 1.0]]])
    tt2 = np.vstack([tt, [[1, 0, 4], [0, 1, 5], [1, 4, 5], [0, 5, 4]]])
    with pytest.raises(MeshError, match=r"not a manifold: edge \(0, 1\).* shared by 4 triangles"):
        SphereMesh(tv2, tt2)
    # two separate spheres: closed and consistent, but V - E + F = 4
    rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    with pytest.raises(MeshError, match="Euler characteristic"):
        SphereMesh(np.vstack([tv, tv @ rot.T]), np.vstack([tt, tt + 4]))
    # duplicate vertices (only the full validation looks for them)
    with pytest.raises(MeshError, match="duplicate vertices: vertices 0 and 4"):
        SphereMesh(np.vstack([tv, tv]), np.vstack([tt, tt + 4]), check=True)
    # inverted: all triangles clockwise
    with pytest.raises(MeshError, match="all triangles are inverted"):
        SphereMesh(v, t[:, ::-1])
    # a vertex at the origin
    v0 = v.copy()
    v0[3] = 0.0
    with pytest.raises(MeshError, match=r"vertices 3 lie at the origin"):
        SphereMesh(v0, t)
    # indices out of range
    with pytest.raises(MeshError, match="outside"):
        SphereMesh(v, np.where(t == 0, 99, t))


def test_unreadable_files(tmp_path):
    (tmp_path / "garbage.vtk").write_text("hello\n")
    with pytest.raises(MeshError, match="garbage.vtk: cannot read"):
        load_mesh(tmp_path / "garbage.vtk")
    with pytest.raises(MeshError, match="no such mesh file"):
        load_mesh(tmp_path / "nothing.stl")
    (tmp_path / "x.dat").write_text("1 2 3\n")
    with pytest.raises(MeshError, match="unsupported mesh format"):
        load_mesh(tmp_path / "x.dat")


def test_file_without_triangles(tmp_path):
    pv = pytest.importorskip("pyvista")
    pv.Line().save(tmp_path / "line.vtk")
    with pytest.raises(MeshError, match="line.vtk: .*no triangles"):
        load_mesh(tmp_path / "line.vtk")


def test_spherical_area_formula_is_accurate_for_tiny_triangles():
    """Right isosceles triangle with legs h (exact area 2 atan(tan^2(h/2))), rotated to a
    generic position: the error stays at the conditioning of the rounded vertices
    (~eps/h), where a naive a.(b x c) loses ~eps/h^2 (4e-6 at h = 1e-6)."""
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
    for h in (1e-2, 1e-4, 1e-6):
        pts = np.array([[0.0, 0.0, 1.0], [math.sin(h), 0.0, math.cos(h)], [0.0, math.sin(h), math.cos(h)]]) @ rot.T
        area = float(spherical_areas(*pts))
        exact = 2.0 * math.atan(math.tan(h / 2) ** 2)
        assert abs(area / exact - 1.0) < 1e-15 / h + 1e-15, h

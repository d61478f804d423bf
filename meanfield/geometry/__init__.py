"""Meshes of the circle and the sphere: the Mesh interface and CircleMesh (mesh), triangulated
spheres (sphere)."""

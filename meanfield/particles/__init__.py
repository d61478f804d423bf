"""Particles: the particle system and its integrators (system), exact initial samples
(sampling), distances to the PDE (distances), the particles and compare commands (run)."""

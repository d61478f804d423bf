"""The finite-volume PDE: fluxes and limiters (finite_volume), time stepping (timestepping), the
Simulation (solver), the circle's spectral scheme (spectral_scheme), run-health checks (health)."""

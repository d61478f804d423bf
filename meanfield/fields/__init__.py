"""The attention kernel and its backends: the model and the direct sums (attention), the energy
(energy), the spectral skeleton (spectral) and the spectral backends on S^1 and S^2."""

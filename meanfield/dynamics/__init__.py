"""Velocity models: sums of attention heads and a perceptron, fixed or changing in time."""

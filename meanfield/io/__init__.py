"""Input and output: case files (case), run directories (output), VTK (vtk_output), plots and
sphere renderings (plots, render)."""

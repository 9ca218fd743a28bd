"""boltzgen: Boltzmann-generator sampling of molecular systems.

Diffusion energy-based models trained with denoising score matching plus the Diffusive
Classification loss (DiffCLF), corrected exactly toward the Boltzmann distribution of an OpenMM
force field by Sequential Monte Carlo. See ``DESIGN.md`` for the method and layout.
"""
__version__ = "0.1.0"

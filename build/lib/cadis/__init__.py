"""cadis: certified robustness for off-the-shelf classifiers with denoised smoothing and FT-CADIS."""

__version__ = "0.1.0"

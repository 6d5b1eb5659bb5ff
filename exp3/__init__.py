"""exp3: occlusion-robustness experiments with training-only internal masking."""
__version__ = "0.1.0"

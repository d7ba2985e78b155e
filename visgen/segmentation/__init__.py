"""Segmentation from a diffusion model's attention (DiffSeg) and its baselines."""

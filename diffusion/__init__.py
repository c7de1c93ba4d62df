"""Shallow diffusion (Unit2Mel). Filled by the diffusion issue; nothing here yet."""

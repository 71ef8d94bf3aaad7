"""Leaner modules for training: fused RMSNorm and SwiGLU (`fused`) and matrix-product causal attention for short rows
(`attention`). Same maths as the reference modules, fewer saved activations; each swap is opt-in and measured."""

"""The world-model core: configs, camera math, RoPE, attention, the DiT, the VAE,
the streaming generator and checkpoints."""

__version__ = "0.1.0"

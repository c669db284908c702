"""textloc: localize and use the attention layers that decide rendered text in diffusion models."""

__version__ = "0.1.0"

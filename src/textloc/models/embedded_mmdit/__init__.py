"""textloc's second embedded model: an SD3-style MMDiT (diffusers ``SD3Transformer2DModel``) in pixel space."""

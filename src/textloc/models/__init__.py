"""textloc.models."""

"""textloc.core."""

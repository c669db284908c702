"""textloc.data."""

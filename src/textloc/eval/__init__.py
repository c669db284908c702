"""textloc.eval."""

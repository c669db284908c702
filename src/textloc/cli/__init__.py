"""textloc.cli."""

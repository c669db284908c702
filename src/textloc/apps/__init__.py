"""textloc.apps."""

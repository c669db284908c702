"""textloc.runs."""

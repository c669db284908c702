"""textloc.apps.localize."""

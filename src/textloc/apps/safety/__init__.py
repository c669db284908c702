"""textloc.apps.safety."""

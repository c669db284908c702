"""textloc.apps.edit."""

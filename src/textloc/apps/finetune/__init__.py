"""textloc.apps.finetune."""

"""``python -m textloc`` (and ``accelerate launch -m textloc localize …``) runs the CLI."""

from textloc.cli.app import main

main()

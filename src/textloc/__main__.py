"""``python -m textloc`` (and ``accelerate launch -m textloc localize …``) runs the CLI."""

from .cli import main

main()

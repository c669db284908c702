"""``python -m textloc`` (and ``accelerate launch -m textloc localize …``) runs the CLI."""

from textloc.cli.app import main

if __name__ == "__main__":
    main()

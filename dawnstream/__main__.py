"""``python -m dawnstream`` runs the CLI."""

from dawnstream.cli import main

main()

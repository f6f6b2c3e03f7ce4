"""`python -m xenvlan` runs the CLI."""

from xenvlan.cli import main

main()

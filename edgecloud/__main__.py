"""`python -m edgecloud` runs the CLI."""

from edgecloud.cli import main

main()

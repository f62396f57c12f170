"""`python -m openvertex` is the `openvertex` command."""

from openvertex.cli import main

main()

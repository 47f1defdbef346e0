"""`python -m metavmm` is the `metavmm` command."""

from metavmm.cli.main import main

main()

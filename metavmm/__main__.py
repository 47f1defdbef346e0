"""`python -m metavmm` is the `metavmm` command."""

from metavmm.broker.cli import main

main()

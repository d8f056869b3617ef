"""`python -m innereye_batch` runs the command-line interface."""

from innereye_batch.cli import main

main()

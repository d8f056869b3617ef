"""`python -m innereye_batch` runs the command-line interface."""

from innereye_batch.cli import main

if __name__ == "__main__":
    main()

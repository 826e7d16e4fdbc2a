"""`python -m instructkit` (what torchrun launches) runs the command line."""

from instructkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

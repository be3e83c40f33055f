"""``python -m advtrain.featspace``: the command line lives in ``advtrain/cli/featspace.py``."""
from ..cli import run_with_clean_errors
from ..cli.featspace import main

if __name__ == "__main__":
    run_with_clean_errors(main, "python -m advtrain.featspace")

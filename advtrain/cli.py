"""Shared command-line plumbing: one-line errors instead of tracebacks for user mistakes."""
from __future__ import annotations

import sys
from typing import Callable

from .data import MissingDatasetError

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, MissingDatasetError, TypeError)


def run_with_clean_errors(main: Callable[[], object], prog: str) -> None:
    """Run ``main``; user errors print ``prog: error: ...`` on one line and exit 2.

    Set ``ADVTRAIN_TRACEBACK=1`` to see the full traceback.
    """
    import os

    try:
        main()
    except USER_ERRORS as e:
        if os.environ.get("ADVTRAIN_TRACEBACK"):
            raise
        lines = str(e).strip().splitlines()
        if "Original Traceback" in str(e):  # re-raised from a DataLoader worker: the original's last line
            lines = [lines[-1].partition(": ")[2] or lines[-1]]
        msg = lines[0] if lines else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        sys.exit(2)

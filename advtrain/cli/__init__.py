"""Shared command-line plumbing: one-line errors instead of tracebacks for user mistakes."""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import Callable

from ..data import MissingDatasetError
from ..registry import check_kwargs

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, MissingDatasetError, TypeError, argparse.ArgumentError)

_UNION = "Does not validate against any of the Union subtypes"
_NOT_ACCEPTED = re.compile(r"Problem with given class_path '([\w.]+)':\s*Option '(\w+)' is not accepted")


def user_message(e: BaseException) -> str:
    """The one line that says what is wrong. jsonargparse's errors for a config's class (a callback,
    a logger) are a list of every type it tried: the first entry is the class's own error, and an
    option it does not take that was renamed (``RENAMED_OPTIONS``) names the new one."""
    text = str(e).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the original's last line
        last = text.splitlines()[-1]
        return last.partition(": ")[2] or last
    key = re.match(r'Parser key "([^"]+)":\s*', text)
    prefix = f"{key.group(1)}: " if key else ""
    text = text[key.end():] if key else text
    given = re.search(r"\n\s*Given value: (.*)", text)
    if _UNION in text and "Errors:" in text:
        entries = re.split(r"\n\s*- ", text.partition("Errors:")[2])
        if len(entries) > 1:
            text = " ".join(entries[1].split())
            if given and text.startswith("Expected"):  # a wrong type: say what was given
                text += f". Got value: {given.group(1)}"
    found = _NOT_ACCEPTED.search(" ".join(text.split()))
    if found:
        return _renamed_hint(*found.groups()) or f"{found.group(1)}: option {found.group(2)!r} is not accepted"
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(e).__name__]
    # a first line that ends in ':' announces the problem on the next one
    return prefix + (f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0])


def _renamed_hint(class_path: str, option: str) -> str | None:
    module, _, name = class_path.rpartition(".")
    try:
        check_kwargs(getattr(importlib.import_module(module), name), {option: None}, name)
    except ValueError as err:
        return str(err) if "renamed" in str(err) else None
    except (ImportError, AttributeError):
        return None
    return None


def run_with_clean_errors(main: Callable[[], object], prog: str) -> None:
    """Run ``main``; user errors print ``prog: error: ...`` on one line and exit 2.

    Set ``ADVTRAIN_TRACEBACK=1`` to see the full traceback.
    """
    import os

    try:
        main()
    except Exception as e:
        if os.environ.get("ADVTRAIN_TRACEBACK"):
            raise
        # Lightning's option errors (``--trainer.max_epochs -5``) are user errors too
        if isinstance(e, USER_ERRORS) or type(e).__name__ == "MisconfigurationException":
            print(f"{prog}: error: {user_message(e)}", file=sys.stderr)
            sys.exit(2)
        if isinstance(e, OSError):  # the machine's: a full disk, a folder made read-only midway, a lost mount
            print(f"{prog}: error: {environment_message(e)}", file=sys.stderr)
            sys.exit(1)
        raise
    except KeyboardInterrupt:  # Ctrl-C: one line (files are written atomically, so none is half-written)
        if os.environ.get("ADVTRAIN_TRACEBACK"):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def environment_message(e: OSError) -> str:
    """``cannot access runs/x/.results.json.123.tmp: No space left on device (files written before are kept; ...)``."""
    where = f" {e.filename}" if e.filename else ""
    return (f"cannot access{where}: {e.strerror or type(e).__name__} (files written before are kept; "
            "free space or fix permissions, then rerun to continue)")

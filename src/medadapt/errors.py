"""User-facing errors.

Every problem a user can fix (a bad file, a wrong option, a missing package) is raised as
:class:`MedadaptError`. The CLI turns it into one readable paragraph and exit code 2, never a
traceback. Library code raises it with the file concerned and the fix, so callers of the Python
API get the same message.
"""

from __future__ import annotations

from pathlib import Path


class MedadaptError(Exception):
    """An error the user can fix. ``str(err)`` is the full message shown to the user."""

    exit_code = 2

    def __init__(self, what: str, *, path: str | Path | None = None, fix: str | None = None):
        self.what = what
        self.path = None if path is None else str(path)
        self.fix = fix
        parts = []
        if self.path:
            parts.append(f"{self.path}: {what}")
        else:
            parts.append(what)
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))

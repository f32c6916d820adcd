"""The errors the command line reports in one line: bad input files (always with file, line and field), and a
serving backend that refused or failed."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    def __init__(self, path: str | Path, line: int | None, field: str, message: str) -> None:
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {field}: {message}")


class BackendError(RuntimeError):
    """A serving backend (a remote server) refused or failed a request, or answered something unreadable."""

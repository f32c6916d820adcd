"""One error type for bad input files: it always says which file, line and field."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    def __init__(self, path: str | Path, line: int | None, field: str, message: str) -> None:
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {field}: {message}")

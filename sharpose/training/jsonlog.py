"""The run's JSON-lines log: one record per logging interval and per evaluation (main process)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class JsonLinesLog:
    """Appends records to `path` (resumed runs continue the same file); a no-op when not `enabled`."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines log."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]

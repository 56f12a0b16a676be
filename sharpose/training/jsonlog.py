"""The run's JSON-lines log: one record per logging interval and per evaluation (main process)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sharpose.data.io import strict_json


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
                f.write(json.dumps(strict_json(record), allow_nan=False) + "\n")

    def drop_after(self, iteration: int) -> None:
        """Remove the records of iterations after `iteration` (those a resumed run trains again)."""
        if not (self.enabled and self.path.is_file()):
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not line.strip() or json.loads(line).get("iter", 0) <= iteration]
        if len(kept) != len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, self.path)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines log."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]

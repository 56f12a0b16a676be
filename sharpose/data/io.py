"""Reading annotation files and images, with errors that name the file and the problem."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np


class DataError(ValueError):
    """Bad input data: a missing/unreadable file or an invalid annotation.

    The message names the file (and annotation id or value) so the cause is clear even when the
    error is re-raised by a DataLoader worker.
    """


def load_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; `what` ("annotation file", ...) goes into the error message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read {what} {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{what} {path} is not UTF-8 text: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{what} {path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from err


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file as an (H, W, 3) uint8 BGR array (cv2.IMREAD_COLOR honours EXIF orientation).

    cv2.imread returns None rather than raising for a missing or undecodable file; this turns that
    into a DataError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    if is_truncated_jpeg(path):  # cv2 decodes the missing part as grey and only warns
        raise DataError(f"cannot decode image file {path}: the JPEG is truncated (no end-of-image marker); "
                        "an interrupted download or copy? replace the file")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot decode image file {path} (corrupt or not an image)")
    return image


def is_truncated_jpeg(path: Path) -> bool:
    """A JPEG (starts with the SOI marker FF D8) must end with the EOI marker FF D9 (trailing padding
    bytes allowed)."""
    with path.open("rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(max(0, path.stat().st_size - 4096))
        tail = f.read()
    return b"\xff\xd9" not in tail


def strict_json(value: Any) -> Any:
    """`value` with NaN and +-inf replaced by None (null): strict JSON readers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value

"""Strict JSON files written atomically: what the research commands and their resume state leave on disk."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json(path: Path, document: Any, *, private: bool = False) -> None:
    """Write `document` so a reader sees the old file or the new one, never half of one.

    RFC 8259 JSON has no NaN or Infinity, so non-finite numbers are written as
    null (an area is NaN when the slide's pixel size is unknown). `private`
    files (they may hold an upload session URL) stay readable by their owner
    only; the others get the permissions the umask gives a new file.
    """
    text = json.dumps(_finite(document), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        if not private:  # mkstemp creates 0600
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value

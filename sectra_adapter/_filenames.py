"""Turning a filename a server sent into one that is safe to create in the output directory.

The name comes from a `Content-Disposition` header, i.e. from the network: it
may hold path separators, `..`, an absolute path, control characters, or repeat
another part's name. Whatever it holds, the result is a single plain path
component that cannot escape the directory, and no two files of one download
(nor their `.part` siblings) share a name.
"""

from __future__ import annotations

import unicodedata
from email.message import Message
from email.utils import collapse_rfc2231_value

from sectra_adapter._errors import DownloadError

PART_SUFFIX = ".part"
_MAX_NAME_BYTES = 200  # leaves room for a de-duplication counter and `.part` under NAME_MAX (255)
_FORBIDDEN = set('<>:"|?*')


def filename_from_disposition(value: str | None) -> str | None:
    """The filename in a `Content-Disposition` header, or None.

    RFC 6266: an RFC 5987 `filename*` wins over a plain `filename`. The standard
    library's MIME parser does the quoting and charset work; nothing is hand-parsed.
    """
    if not value:
        return None
    message = Message()
    message["content-disposition"] = value
    candidates = [
        v for k, v in message.get_params([], header="content-disposition") if k.lower() == "filename"
    ]
    candidates.sort(key=lambda v: not isinstance(v, tuple))  # encoded (filename*) values first
    name = collapse_rfc2231_value(candidates[0]) if candidates else ""
    return name or None


def sanitise(name: str) -> str:
    """A single safe path component derived from `name`; '' when nothing usable remains."""
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(
        "_" if ch in _FORBIDDEN else ch for ch in name if not unicodedata.category(ch).startswith("C")
    )
    # Leading dots would make hidden files or `..`; trailing dots and spaces confuse other tools.
    name = name.strip().lstrip(".").rstrip(". ")
    return _truncate(name)


def _truncate(name: str) -> str:
    """Shorten an over-long name, keeping its (short) extension so tools still recognise the format."""
    if len(name.encode("utf-8")) <= _MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.partition(".")
    tail = dot + ext if len((dot + ext).encode("utf-8")) <= 40 else ""
    room = _MAX_NAME_BYTES - len(tail.encode("utf-8"))
    return stem.encode("utf-8")[:room].decode("utf-8", "ignore") + tail


class NameAllocator:
    """Hands out distinct names for one download, so no part overwrites another or its `.part` file."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def allocate(self, raw: str | None, index: int) -> str:
        """A safe, unused name for part `index` (1-based) whose header said `raw`.

        Raises `DownloadError` when the part has no usable filename; the message
        never repeats the raw name, which may contain patient data.
        """
        if raw is None:
            raise DownloadError(f"part {index} of the slide response has no filename in Content-Disposition")
        base = sanitise(raw)
        if not base:
            raise DownloadError(f"part {index} of the slide response has no usable filename")
        stem, dot, ext = base.partition(".")
        candidate, counter = base, 1
        while self._clashes(candidate):
            counter += 1
            candidate = f"{stem}-{counter}{dot}{ext}"
        self._taken.update({candidate.casefold(), (candidate + PART_SUFFIX).casefold()})
        return candidate

    def _clashes(self, name: str) -> bool:
        # Case-folded: the staging directory may live on a case-insensitive filesystem.
        return name.casefold() in self._taken or (name + PART_SUFFIX).casefold() in self._taken

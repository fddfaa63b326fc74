"""Slidedat.ini as a list of lines: read it, change values, drop keys and sections, write it back.

`configparser` would reorder nothing but lowercases keys, trips on duplicate keys and
drops the UTF-8 BOM and CRLF line ends that 3DHISTECH software writes; OpenSlide reads
the file with GLib's key-file parser, so what is not edited must come back byte for
byte. Bytes that are not UTF-8 survive through `surrogateescape`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]*)\]\s*$")
_ENTRY = re.compile(r"^(?P<key>[^=;#\[\s][^=]*?)(?P<sep>\s*=\s*)(?P<value>.*?)\s*$")

# What an edit says about one key: keep it, give it a new key and/or value, or drop the line.
Edit = tuple[str, str] | None


@dataclass(frozen=True)
class Line:
    text: str
    section: str  # "" before the first section header
    key: str | None = None
    value: str | None = None
    sep: str = " = "


class Slidedat:
    def __init__(self, lines: list[Line], *, bom: bool, newline: str) -> None:
        self.lines = lines
        self.bom = bom
        self.newline = newline

    @classmethod
    def parse(cls, raw: bytes) -> Slidedat:
        bom = raw.startswith(BOM)
        text = (
            raw[len(BOM) :].decode("utf-8", "surrogateescape")
            if bom
            else raw.decode("utf-8", "surrogateescape")
        )
        newline = "\r\n" if "\r\n" in text else "\n"
        lines: list[Line] = []
        section = ""
        for row in text.splitlines():
            if header := _SECTION.match(row):
                section = header["name"].strip()
                lines.append(Line(row, section))
            elif entry := _ENTRY.match(row):
                lines.append(Line(row, section, entry["key"].strip(), entry["value"], entry["sep"]))
            else:
                lines.append(Line(row, section))
        return cls(lines, bom=bom, newline=newline)

    def render(self) -> bytes:
        body = (self.newline.join(line.text for line in self.lines) + self.newline).encode(
            "utf-8", "surrogateescape"
        )
        return BOM + body if self.bom else body

    def entries(self) -> Iterator[Line]:
        return (line for line in self.lines if line.key is not None)

    def get(self, section: str, key: str) -> str | None:
        """The last value, as GLib's key-file parser reads a repeated key."""
        found = None
        for line in self.entries():
            if line.section == section and line.key == key:
                found = line.value
        return found

    def require(self, section: str, key: str) -> str:
        value = self.get(section, key)
        if value is None:
            raise KeyError(f"{section}.{key}")
        return value

    def sections(self) -> list[str]:
        return [line.section for line in self.lines if line.key is None and _SECTION.match(line.text)]

    def free_text(self) -> list[Line]:
        """Lines that are neither entries, section headers nor blank: comments, stray text."""
        return [line for line in self.lines if line.key is None and not _is_structure(line)]

    def edited(self, edit: Callable[[Line], Edit], drop_sections: set[str]) -> Slidedat:
        """A copy where `edit` decides every entry's fate, `drop_sections` vanish whole and free
        text (comments) is dropped: nothing is kept that no rule has looked at."""
        lines = []
        for line in self.lines:
            if line.section in drop_sections:
                continue
            if line.key is None:
                if _is_structure(line):
                    lines.append(line)
                continue
            decision = edit(line)
            if decision is None:
                continue
            key, value = decision
            if (key, value) == (line.key, line.value):
                lines.append(line)
            else:
                lines.append(Line(f"{key}{line.sep}{value}", line.section, key, value, line.sep))
        return Slidedat(lines, bom=self.bom, newline=self.newline)


def _is_structure(line: Line) -> bool:
    return not line.text.strip() or _SECTION.match(line.text) is not None

"""What of a MIRAX Slidedat.ini may leave the hospital: an allow-list, per kind of section.

Kept are the keys OpenSlide's MIRAX reader needs to decode and place the pyramid
(`openslide-vendor-mirax.c`: GENERAL's SLIDE_ID, IMAGENUMBER_X/Y,
CameraImageDivisionsPerSide, OBJECTIVE_MAGNIFICATION; HIERARCHICAL's tree; DATAFILE;
each zoom level's geometry, format and fill colour) and a few that describe the
instrument's optics, not a person. Every other key keeps its name with an empty
value, so that readers which look a key up still find it. The keys known to carry
PHI, all blanked by the allow-list (and checked again, independently, by
`mrxs_verify`), are those wsi-anon and anonymize-slide scrub and their relatives:

- SLIDE_NAME, PROJECT_NAME: typed by the operator, usually the accession or case number;
- SLIDE_CREATIONDATETIME, SLIDE_UTC_CREATIONDATETIME: the scan date dates the exam;
- SCANNER_HARDWARE_ID: the scanner's serial number identifies the site;
- any other *_NAME, *_ID, *DATE*, *TIME*, BARCODE*, USER*, OPERATOR* key, and keys no one documents.

SLIDE_ID (a GUID that links the file to the scanner's database) cannot be emptied:
OpenSlide requires it, equal to the copy at the head of Index.dat, whose length
fixes every pointer after it. It is replaced by a value of the same length
derived from the run id (the same on a re-run, different for every run).

Non-hierarchical records are kept only for the layers the reader places tiles
with (VIMSLIDE_POSITION_BUFFER, StitchingIntensityLayer); the rest (the "Scan data
layer" photographs of the glass: label/barcode, macro, preview, whole slide, and
any layer we do not know) are removed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from workers.deidentify.mrxs_ini import Edit, Line, Slidedat

GENERAL, HIERARCHICAL, DATAFILE = "GENERAL", "HIERARCHICAL", "DATAFILE"
POSITION_LAYERS = frozenset({"VIMSLIDE_POSITION_BUFFER", "StitchingIntensityLayer"})
INDEX_NAME = "Index.dat"
# What a removed "Scan data layer" record was, in the audit trail's words (OpenSlide's names).
GLASS_RECORDS = {
    "ScanDataLayer_SlideBarcode": "label",
    "ScanDataLayer_SlideThumbnail": "macro",
    "ScanDataLayer_SlidePreview": "thumbnail",
    "ScanDataLayer_WholeSlide": "whole-slide photograph",
}

_GENERAL_KEPT = frozenset(
    {
        "SLIDE_VERSION",
        "IMAGENUMBER_X",
        "IMAGENUMBER_Y",
        "CameraImageDivisionsPerSide",
        "OBJECTIVE_MAGNIFICATION",
        "CURRENT_SLIDE_VERSION",
        "SLIDE_TYPE",
    }
)
_LEVEL_KEPT = frozenset(
    {
        "IMAGE_FILL_COLOR_BGR",
        "MICROMETER_PER_PIXEL_X",
        "MICROMETER_PER_PIXEL_Y",
        "DIGITIZER_WIDTH",
        "DIGITIZER_HEIGHT",
        "OVERLAP_X",
        "OVERLAP_Y",
        "IMAGE_CONCAT_FACTOR",
        "IMAGE_FORMAT",
        "IMAGE_COMPRESSION_FACTOR",
    }
)
_POSITION_KEPT = frozenset({"VIMSLIDE_POSITION_DATA_FORMAT_VERSION", "COMPRESSSED_STITCHING_VERSION"})
_HIER_KEY = re.compile(r"^(HIER_COUNT|HIER_\d+_(NAME|COUNT|SECTION)|HIER_\d+_VAL_\d+(_SECTION)?)$")
_NONHIER_KEY = re.compile(r"^NONHIER_(?P<layer>\d+)(?P<rest>_.+)$")
_FILE_KEY = re.compile(r"^FILE_(?P<number>\d+)$")


def neutral_slide_id(run_id: str, length: int) -> str:
    digest = hashlib.sha256(f"mrxs SLIDE_ID for run {run_id}".encode()).hexdigest().upper()
    return (digest * (length // len(digest) + 1))[:length]


def data_file_name(number: int) -> str:
    return f"Data{number:04d}.dat"


@dataclass
class Layer:
    number: int
    name: str
    vals: list[str]
    first_record: int  # the layer's first val's place in Index.dat's non-hierarchical table
    sections: set[str] = field(default_factory=set)

    @property
    def kept(self) -> bool:
        return self.name in POSITION_LAYERS


@dataclass
class Tree:
    """Slidedat's HIERARCHICAL section: the pyramid's records and the non-hierarchical layers."""

    hier_records: int
    level_sections: set[str]
    layers: list[Layer]
    datafiles: list[str]
    index_name: str

    @property
    def nonhier_records(self) -> int:
        return sum(len(layer.vals) for layer in self.layers)

    def kept_records(self) -> list[int]:
        return [layer.first_record + j for layer in self.layers if layer.kept for j in range(len(layer.vals))]

    def removed(self) -> list[tuple[int, str]]:
        """(record, audit name) of every record that goes."""
        return [
            (layer.first_record + j, GLASS_RECORDS.get(val, "other non-hierarchical record"))
            for layer in self.layers
            if not layer.kept
            for j, val in enumerate(layer.vals)
        ]

    @classmethod
    def read(cls, ini: Slidedat) -> Tree:
        """KeyError or ValueError when a key the reader needs is missing or not a number."""
        hier_records, level_sections = 0, set[str]()
        for i in range(int(ini.require(HIERARCHICAL, "HIER_COUNT"))):
            count = int(ini.require(HIERARCHICAL, f"HIER_{i}_COUNT"))
            hier_records += count
            keys = [f"HIER_{i}_VAL_{j}_SECTION" for j in range(count)] + [f"HIER_{i}_SECTION"]
            for key in keys[:count] if i == 0 else ():
                ini.require(HIERARCHICAL, key)  # the reader needs the zoom levels' sections, not others'
            level_sections |= {value for key in keys if (value := ini.get(HIERARCHICAL, key)) is not None}
        layers, record = [], 0
        for i in range(int(ini.require(HIERARCHICAL, "NONHIER_COUNT"))):
            count = int(ini.require(HIERARCHICAL, f"NONHIER_{i}_COUNT"))
            vals = [ini.require(HIERARCHICAL, f"NONHIER_{i}_VAL_{j}") for j in range(count)]
            layer = Layer(i, ini.require(HIERARCHICAL, f"NONHIER_{i}_NAME"), vals, record)
            for key in [f"NONHIER_{i}_SECTION"] + [f"NONHIER_{i}_VAL_{j}_SECTION" for j in range(count)]:
                if (section := ini.get(HIERARCHICAL, key)) is not None:
                    layer.sections.add(section)
            layers.append(layer)
            record += count
        datafiles = [
            ini.require(DATAFILE, f"FILE_{n}") for n in range(int(ini.require(DATAFILE, "FILE_COUNT")))
        ]
        if hier_records < 1 or not datafiles:
            raise ValueError("a MIRAX slide needs a pyramid and a data file")
        return cls(hier_records, level_sections, layers, datafiles, ini.require(HIERARCHICAL, "INDEXFILE"))


class Scrubber:
    """Rewrites Slidedat.ini by the allow-list; `blanked` collects the names of keys that had a value."""

    def __init__(self, tree: Tree, new_slide_id: str) -> None:
        self.tree = tree
        self.new_slide_id = new_slide_id
        self.blanked: list[str] = []
        kept = [layer for layer in tree.layers if layer.kept]
        self._renumber = {layer.number: new for new, layer in enumerate(kept)}
        self._position_sections = set().union(*(layer.sections for layer in kept))
        removed = set().union(*(layer.sections for layer in tree.layers if not layer.kept))
        self.dropped_sections = (
            removed - self._position_sections - tree.level_sections - {GENERAL, HIERARCHICAL, DATAFILE}
        )

    def apply(self, ini: Slidedat) -> Slidedat:
        if ini.free_text():
            self.blanked.append("Slidedat.ini comments")
        return ini.edited(self._edit, self.dropped_sections)

    def _edit(self, line: Line) -> Edit:
        key, value, section = line.key or "", line.value or "", line.section
        if section == GENERAL:
            if key == "SLIDE_ID":
                if value != self.new_slide_id:
                    self.blanked.append("Slidedat.GENERAL.SLIDE_ID (replaced)")
                return key, self.new_slide_id
            return (key, value) if key in _GENERAL_KEPT else self._blank(line)
        if section == HIERARCHICAL:
            return self._hierarchical(line)
        if section == DATAFILE:
            if key == "FILE_COUNT":
                return key, value
            if match := _FILE_KEY.match(key):
                return key, data_file_name(int(match["number"]))
            return self._blank(line)
        if section in self.tree.level_sections:
            return (key, value) if key in _LEVEL_KEPT else self._blank(line)
        if section in self._position_sections:
            return (key, value) if key in _POSITION_KEPT else self._blank(line)
        return self._blank(line)

    def _hierarchical(self, line: Line) -> Edit:
        key, value = line.key or "", line.value or ""
        if key == "INDEXFILE":
            return key, INDEX_NAME
        if key == "NONHIER_COUNT":
            return key, str(len(self._renumber))
        if match := _NONHIER_KEY.match(key):
            new = self._renumber.get(int(match["layer"]))
            return None if new is None else (f"NONHIER_{new}{match['rest']}", value)
        return (key, value) if _HIER_KEY.match(key) else self._blank(line)

    def _blank(self, line: Line) -> Edit:
        if (line.value or "").strip():
            self.blanked.append(f"Slidedat.{line.section or 'preamble'}.{line.key}")
        return line.key or "", ""

"""Read the outgoing files back and prove nothing identifying is left; any doubt refuses the upload.

This is deliberately independent of how the files were de-identified: TIFF-family
slides are re-read by openslide and tiffslide and their tags checked against the
vendor's allow-list (`verify_tiff`); DICOM instances are re-read with pydicom and
checked against PS3.15 Table E.1-1 and the slide's identifiers from Sectra (`verify_dicom`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from workers.deidentify.detect import DICOM, MRXS, detect
from workers.deidentify.errors import DeidentificationFailed, UnsupportedSlideFormat
from workers.deidentify.matching import IdentifierMatcher
from workers.deidentify.mrxs_verify import verify_mrxs
from workers.deidentify.verify_dicom import verify_dicom
from workers.deidentify.verify_tiff import verify_tiff


def verify_deidentified(files: Sequence[Path], *, identifiers: Mapping[str, str]) -> None:
    matcher = IdentifierMatcher(identifiers)
    paths = [Path(path) for path in files]
    for path in paths:
        if field := matcher.find(path.name.encode("utf-8")):
            raise DeidentificationFailed(field, "a file name")
    kind = detect(paths)
    if kind.is_tiff:
        for path in paths:
            verify_tiff(path, kind.name, matcher)
    elif kind.name == DICOM:
        for path in paths:
            verify_dicom(path, matcher)
    elif kind.name == MRXS:
        verify_mrxs(paths, matcher)
    else:
        raise UnsupportedSlideFormat(kind.name)

"""Sectra's slide quality control decides whether a run may go on, before any byte is downloaded.

Sectra's image info carries the lab's QC verdict (`qualityControl.status`: `NotSet`, `QualityOk`
or `Rejected`; IA-API 1.10+, `sectra_client.schemas.ImageMetadata.qualityControl`, absent on
older versions). A rejected slide costs nothing: an automatic run (`newImageFiles`, a case's
sibling slide) is never started or is refused, and a manual `create` is refused in plain words
unless the app sets `ignore_qc: true`.
"""

from __future__ import annotations

from sectra_client.schemas import ImageMetadata
from sectra_client.schemas.quality_control import QualityControlStatus

from workers import messages

# Runs a person asked for in Sectra (or an operator on their behalf): `ignore_qc` applies to these.
_MANUAL_SOURCES = frozenset({"create", "operator"})


def is_rejected(metadata: ImageMetadata) -> bool:
    qc = metadata.qualityControl
    return qc is not None and qc.status is QualityControlStatus.REJECTED


def qc_refusal(metadata: ImageMetadata, *, source: str, ignore_qc: bool) -> str | None:
    """None when the run may go on, else the plain-words result the pathologist reads."""
    if not is_rejected(metadata):
        return None
    if ignore_qc and source in _MANUAL_SOURCES:
        return None
    return messages.qc_rejected()

"""What the de-identification stage tells the audit trail: kinds and names, never values."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeidReport:
    format: str  # "aperio-svs" | "generic-tiff" | "ndpi" | "philips-tiff" | "ventana-bif" | "dicom" | ...
    removed_images: list[str] = field(default_factory=list)  # e.g. ["label", "macro"]
    # fields blanked and TIFF tags removed, by name, e.g. ["ImageDescription.Filename", "tag 65000"]
    blanked_fields: list[str] = field(default_factory=list)
    output_files: list[str] = field(default_factory=list)  # neutral names, e.g. ["<run_id>.svs"]
    skipped: bool = False  # True when the app's configuration says deidentify: false

"""De-identify a staged slide before it leaves the hospital, and prove it (fail closed).

Lives in `workers` because DESIGN.md gives the pipeline's stages, de-identifying
staged slides among them, to that package; it imports nothing of `service`.
"""

from workers.deidentify.errors import DeidentificationError, DeidentificationFailed, UnsupportedSlideFormat
from workers.deidentify.identifiers import identifiers_from_metadata
from workers.deidentify.report import DeidReport
from workers.deidentify.stage import deidentify_slide
from workers.deidentify.verify import verify_deidentified

__all__ = [
    "DeidReport",
    "DeidentificationError",
    "DeidentificationFailed",
    "UnsupportedSlideFormat",
    "deidentify_slide",
    "identifiers_from_metadata",
    "verify_deidentified",
]

"""Failures of the de-identification stage, worded for the pathologist who reads them in Sectra.

`str(exc)` is what reaches Sectra and the audit trail, so it names formats and
field *names* only: an identifying value must never end up in a message.
"""

from __future__ import annotations


class DeidentificationError(Exception):
    """Base class: the slide was not sent to Strand because it could not be made anonymous."""


class UnsupportedSlideFormat(DeidentificationError):
    """The slide's format has no de-identifier here, so sending it could leak a label or PHI."""

    def __init__(self, format_name: str) -> None:
        self.format_name = format_name
        super().__init__(
            f"This slide's format ({format_name}) cannot be de-identified; it was not sent to Strand"
        )


class DeidentificationFailed(DeidentificationError):
    """The outgoing copy still carries something identifying: the run fails closed.

    `field` is the name of the identifying item (e.g. "accessionNumber" or "label image")
    and `location` where it was found (e.g. "ImageDescription of page 0", "file name").
    """

    def __init__(self, field: str, location: str = "the slide file") -> None:
        self.field = field
        self.location = location
        super().__init__(
            f"De-identification could not be confirmed: the slide's {field} was still found in "
            f"{location}; it was not sent to Strand"
        )

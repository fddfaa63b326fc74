"""The Sectra apps this bridge offers, each a Strand marker panel with its guardrails.

Loaded from `BRIDGE_APPS_FILE` (YAML or JSON) so a hospital can add a panel
without a new image; the built-in `strand-default` keeps the demo and a first
deployment working with no file at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sectra_adapter import UnsafePattern, check_pattern

DEFAULT_APP_ID = "strand-default"


class SlideGateOptions(BaseModel):
    """Which slides an app accepts; a refusal is explained to the pathologist."""

    model_config = ConfigDict(extra="forbid")

    # Searched in stain names sent by callers, so each must have a linear-time shape (checked below).
    stain_patterns: list[str] = Field(default_factory=lambda: [r"^h\s*(?:&\s*)?e$", r"hematoxylin", r"^he$"])
    min_width_px: int = 256
    min_height_px: int = 256
    max_pixels: int = 200_000 * 200_000
    max_microns_per_pixel: float = 2.0

    @field_validator("stain_patterns")
    @classmethod
    def _linear_time_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                check_pattern(pattern)
            except UnsafePattern as exc:
                raise ValueError(f"stain pattern {pattern!r} is refused: {exc}") from None
        return value


class AppConfig(BaseModel):
    """One Sectra application: what it asks Strand for and what it may spend."""

    model_config = ConfigDict(extra="forbid")

    id: str
    display_name: str
    markers: list[str]
    positivity_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    credit_ceiling: int | None = Field(default=None, ge=0)
    start_on_new_images: bool = False
    slide_gate: SlideGateOptions = Field(default_factory=SlideGateOptions)
    model: str | None = None
    deidentify: bool = True
    version: str = "1.0.0"
    manufacturer: str = "Strand AI via sectra-strand-bridge"
    # A manual `create` on a slide whose Sectra QC status is Rejected runs anyway (`workers.quality`);
    # automatic runs (`newImageFiles`) never analyse a rejected slide.
    ignore_qc: bool = False
    # Strand credits this app may reserve per UTC day (`workers.quotas`); None = no daily limit.
    daily_credit_limit: int | None = Field(default=None, ge=0)
    # `case`: a run on one slide analyses every H&E slide of its case (IA-API 1.9+), see `workers.case`.
    scope: Literal["slide", "case"] = "slide"
    # What the pathologist gives the app in Sectra: the whole slide, one tagged polygon, or several
    # areas (`workers.regions`); the registration's `inputTemplate` follows it.
    input: Literal["wholeSlide", "taggedPolygon", "multiArea"] = "wholeSlide"
    # The tags Sectra offers for a `taggedPolygon` region ("Tumour", "Stroma", ...).
    tags: list[str] = Field(default_factory=list)
    # What the final result draws per marker: hotspot rectangles, density bands, or both.
    overlay: Literal["hotspots", "bands", "both"] = "both"
    # Whole-slide runs read an earlier job's results of the same slide, markers and model when one
    # is within `BRIDGE_RESULTS_REUSE_DAYS` (region runs always do); no new job, no credits.
    reuse_results: bool = False

    @field_validator("markers")
    @classmethod
    def _markers_not_empty(cls, value: list[str]) -> list[str]:
        cleaned = [m.strip() for m in value if m.strip()]
        if not cleaned:
            raise ValueError("an app needs at least one marker")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("markers must not repeat")
        return cleaned

    @model_validator(mode="after")
    def _tags_for_tagged_polygons(self) -> AppConfig:
        if self.tags and self.input != "taggedPolygon":
            raise ValueError("tags are offered only with input: taggedPolygon")
        if self.input == "taggedPolygon" and not self.tags:
            raise ValueError("input: taggedPolygon needs at least one tag (tags: [...])")
        if len({t.strip() for t in self.tags}) != len(self.tags) or any(not t.strip() for t in self.tags):
            raise ValueError("tags must be non-empty and must not repeat")
        return self


class AppsConfigError(ValueError):
    """The apps file cannot be used; the message names the file and the problem."""


def default_apps() -> dict[str, AppConfig]:
    app = AppConfig(
        id=DEFAULT_APP_ID,
        display_name="Strand marker panel: CD8, PanCK, Ki67",
        markers=["CD8", "PanCK", "Ki67"],
    )
    return {app.id: app}


def load_apps(path: Path | None) -> dict[str, AppConfig]:
    """Read the apps file, or fall back to the built-in default when none is configured.

    Accepts either a list of apps or a mapping of id -> app (the id key may then be omitted).
    """
    if path is None:
        return default_apps()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AppsConfigError(f"cannot read apps file {path}: {exc.strerror}") from exc
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise AppsConfigError(f"apps file {path} is not valid {path.suffix or 'YAML'}: {exc}") from exc
    if isinstance(raw, dict) and "apps" in raw:
        raw = raw["apps"]
    entries: list[object]
    if isinstance(raw, dict):
        entries = [{"id": key, **value} if isinstance(value, dict) else value for key, value in raw.items()]
    elif isinstance(raw, list):
        entries = list(raw)
    else:
        raise AppsConfigError(f"apps file {path} must hold a list or a mapping of apps")
    apps: dict[str, AppConfig] = {}
    for index, entry in enumerate(entries):
        try:
            app = AppConfig.model_validate(entry)
        except ValidationError as exc:
            raise AppsConfigError(f"apps file {path}, app #{index + 1}: {exc}") from exc
        if app.id in apps:
            raise AppsConfigError(f"apps file {path}: app id {app.id!r} appears twice")
        apps[app.id] = app
    if not apps:
        raise AppsConfigError(f"apps file {path} defines no apps")
    return apps

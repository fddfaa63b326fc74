"""What Sectra is told about each app: its registration and its `/info` answer."""

from __future__ import annotations

from sectra_client.schemas import (
    ApplicationInfo,
    InputTemplate,
    InputType,
    Registration,
    TaggedPolygonInputContent,
)

from workers.apps import AppConfig

# The IA-API version this bridge implements (results with primitives, image notifications, QC).
IA_API_VERSION = "1.10"


def build_registration(app: AppConfig, url: str) -> Registration:
    """Registration JSON for one app; `url` is where Sectra will POST its invocations (this route)."""
    return Registration(
        applicationId=app.id,
        displayName=app.display_name,
        manufacturer=app.manufacturer,
        url=url,
        inputTemplate=input_template(app),
    )


def input_template(app: AppConfig) -> InputTemplate:
    """What Sectra asks the pathologist for before invoking the app (`AppConfig.input`).

    A `taggedPolygon` app offers its tags, so the pathologist names the drawn area ("Tumour") and the
    result can say which tissue its figures are over; the other inputs carry no content.
    """
    kind = InputType(app.input)
    if kind is InputType.TAGGED_POLYGON:
        return InputTemplate(type=kind, content=TaggedPolygonInputContent(tags=list(app.tags)))
    return InputTemplate(type=kind)


def app_info(app: AppConfig) -> ApplicationInfo:
    return ApplicationInfo(apiVersion=IA_API_VERSION, softwareVersion=app.version)

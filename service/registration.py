"""What Sectra is told about each app: its registration and its `/info` answer."""

from __future__ import annotations

from sectra_client.schemas import ApplicationInfo, InputTemplate, InputType, Registration

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
        inputTemplate=InputTemplate(type=InputType.WHOLE_SLIDE),
    )


def app_info(app: AppConfig) -> ApplicationInfo:
    return ApplicationInfo(apiVersion=IA_API_VERSION, softwareVersion=app.version)

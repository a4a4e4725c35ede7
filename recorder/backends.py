"""The recording store the settings name: local files (default) or S3-compatible."""

from __future__ import annotations

from policy.config import Settings
from policy.errors import ConfigError
from recorder.storage import LocalStorage, Storage


def open_storage(settings: Settings) -> Storage:
    """``[recordings] backend = "local"`` (``dir``) or ``"s3"`` (``s3_bucket``,
    ``s3_endpoint``, ``s3_region``, ``s3_prefix``; credentials from the standard AWS
    environment variables or files, never from the sallyport config). Close it after use.
    """
    if settings.recordings_backend == "local":
        return LocalStorage(settings.recordings_dir)
    if settings.recordings_backend == "s3":
        from recorder.s3 import S3Storage

        if not settings.s3_bucket:
            raise ConfigError("config-invalid", "recordings.backend is s3 but s3_bucket is empty")
        return S3Storage(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint or None,
            region=settings.s3_region,
            prefix=settings.s3_prefix,
        )
    raise ConfigError(
        "config-invalid", f"recordings.backend {settings.recordings_backend!r}: use local or s3"
    )

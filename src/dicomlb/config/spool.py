"""`spool:` of the config file: directory, limits and retry timing, built into a
`SpoolConfig`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, StrictInt

from dicomlb.config.tools import (
    Duration,
    Fail,
    Model,
    Size,
    format_duration,
    parse_duration,
    written,
)
from dicomlb.snapshot import RetryConfig, SpoolConfig

__all__ = ["RetryModel", "SpoolModel", "build_spool"]


class RetryModel(Model):
    base: Duration | None = None
    cap: Duration | None = None
    max_attempts: Annotated[StrictInt, Field(ge=0)] | None = None
    max_age: Annotated[float, BeforeValidator(parse_duration)] | None = None


class SpoolModel(Model):
    directory: Annotated[str, Field(strict=True, min_length=1)]
    max_bytes: Size | None = None
    max_items: Annotated[StrictInt, Field(ge=0)] | None = None
    min_free_disk: Size | None = None
    retry: RetryModel | None = None
    failover_after: Duration | None = None
    keep_delivered: Annotated[float, BeforeValidator(parse_duration)] | None = None


def build_spool(spec: SpoolModel | None, fail: Fail) -> SpoolConfig | None:
    """The spool (None when not configured); retry.cap must be at least retry.base."""
    if spec is None:
        return None
    retry = RetryConfig(**written(spec.retry)) if spec.retry else RetryConfig()
    if retry.cap < retry.base:
        fail(
            "spool.retry.cap",
            f"cap ({format_duration(retry.cap)}) is shorter than base "
            f"({format_duration(retry.base)}); make cap at least base",
        )
    return SpoolConfig(directory=spec.directory, retry=retry, **written(spec, "directory", "retry"))

"""`spool:` of the config file: directory, limits and retry timing, built into a
`SpoolConfig`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictInt

from dicomlb.config.tools import (
    Duration,
    Fail,
    Interval,
    Model,
    Size,
    defaults,
    format_duration,
    unset,
    written,
)
from dicomlb.snapshot import RetryConfig, SpoolConfig

__all__ = ["RetryModel", "SpoolModel", "build_spool"]


_RETRY = defaults(RetryConfig)
_SPOOL = defaults(SpoolConfig)


class RetryModel(Model):
    """`spool.retry`: delivery retries, exponential backoff with jitter."""

    base: Duration | None = unset(
        "Backoff after the n-th failed attempt is `min(cap, base·2ⁿ⁻¹)`, half fixed and half "
        "random.",
        format_duration(_RETRY["base"]),
    )
    cap: Duration | None = unset(
        "The longest delay between attempts (at least `base`).", format_duration(_RETRY["cap"])
    )
    max_attempts: Annotated[StrictInt, Field(ge=0)] | None = unset(
        "Failed attempts before an item is dead (0: no limit).", _RETRY["max_attempts"]
    )
    max_age: Interval | None = unset(
        "An undelivered item older than this is dead (0: no limit).",
        format_duration(_RETRY["max_age"]),
    )


class SpoolModel(Model):
    """`spool`: the durable store-and-forward queue behind `ack: spool` routes."""

    directory: Annotated[str, Field(strict=True, min_length=1)] = Field(
        description="Where files (`data/`, `tmp/`) and the index (`index.sqlite3`) live; "
        "relative paths are from the working directory."
    )
    max_bytes: Size | None = unset(
        "Bytes of spooled files (`500MB`, `20GB`, `1.5GiB`; 0: no limit); beyond, new "
        "instances are refused.",
        _SPOOL["max_bytes"],
    )
    max_items: Annotated[StrictInt, Field(ge=0)] | None = unset(
        "Items not yet delivered (queued, sending, dead; 0: no limit).", _SPOOL["max_items"]
    )
    min_free_disk: Size | None = unset(
        "Free space on the spool's file system below which new instances are refused.",
        f"{_SPOOL['min_free_disk'] >> 30}GiB",
    )
    retry: RetryModel | None = Field(default=None, description="Delivery retries.")
    failover_after: Duration | None = Field(
        default=None,
        description="A backend down this long gives its queued studies to the next available "
        "backend of their pool; unset: they wait for it, however long.",
    )
    keep_delivered: Interval | None = unset(
        "How long a delivered item's file is kept (0: removed at once; its index row stays "
        "until purged).",
        _SPOOL["keep_delivered"],
    )


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

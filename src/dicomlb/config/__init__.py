"""The config file: YAML → validated models (pydantic) → `Snapshot`; every error names the field."""

from dicomlb.config.build import (
    MAX_ALIAS_NODES,
    MAX_CONFIG_BYTES,
    MAX_YAML_DEPTH,
    ConfigError,
    ConfigIssue,
    build_backend,
    build_snapshot,
    describe,
    format_duration,
    hash_secret,
    load_snapshot,
    parse_duration,
    parse_size,
)

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_CONFIG_BYTES",
    "MAX_YAML_DEPTH",
    "ConfigError",
    "ConfigIssue",
    "build_backend",
    "build_snapshot",
    "describe",
    "format_duration",
    "hash_secret",
    "load_snapshot",
    "parse_duration",
    "parse_size",
]

"""The config file: YAML → validated models (pydantic) → `Snapshot`; every error names the field.

The package, bottom up: `tools` (errors, value parsers, the YAML loader) ← `tls` ←
`http`, `bridge`, `admin`, `spool` ← `dicom` (listener, pools, backends, routes) ← `build`
(the whole file, cross-field checks), `describe` (`dicomlb check`) and `schema` (`dicomlb
schema`: the JSON Schema and the reference). Callers import from here.
"""

from dicomlb.config.admin import hash_secret
from dicomlb.config.build import build_backend, build_snapshot, load_snapshot
from dicomlb.config.describe import describe
from dicomlb.config.schema import config_schema, markdown_reference
from dicomlb.config.tools import (
    MAX_ALIAS_NODES,
    MAX_CONFIG_BYTES,
    MAX_YAML_DEPTH,
    ConfigError,
    ConfigIssue,
    format_duration,
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
    "config_schema",
    "describe",
    "format_duration",
    "hash_secret",
    "load_snapshot",
    "markdown_reference",
    "parse_duration",
    "parse_size",
]

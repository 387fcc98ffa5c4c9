"""`dicomlb schema`: every key described, the defaults shown the ones in force, the
committed reference current, and the YAML examples of README.md and docs/ valid for both
`dicomlb check` and the JSON Schema."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import ssl
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dicomlb import cli
from dicomlb.config import build_snapshot
from dicomlb.config.build import ConfigModel
from dicomlb.config.schema import config_schema, markdown_reference, sections
from dicomlb.snapshot import HttpKey, HttpPoolConfig, KeyKind, PoolConfig, Snapshot

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference" / "configuration.md"
README = ROOT / "README.md"


def test_every_key_of_every_model_has_a_description() -> None:
    walked = sections()
    assert walked[0] == ("", ConfigModel)
    assert len(walked) > 30  # the walk went down into pools, backends, middlewares, …
    missing = [
        f"{path or '<top>'}.{name} ({model.__name__})"
        for path, model in walked
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, "keys without Field(description=...): " + ", ".join(missing)


def test_the_schema_shows_effective_defaults() -> None:
    schema = config_schema()
    defs = schema["$defs"]
    listener = defs["DicomListenerModel"]["properties"]
    assert listener["bind"]["default"] == "0.0.0.0:11112"
    assert listener["idle_timeout"]["default"] == "5m"
    assert defs["PoolModel"]["properties"]["strategy"]["default"] == "round_robin"
    assert defs["RetryModel"]["properties"]["max_age"]["default"] == "168h"
    assert defs["SpoolModel"]["properties"]["min_free_disk"]["default"] == "1GiB"
    assert defs["HttpPoolModel"]["properties"]["retries"]["default"] == 2
    assert schema["properties"]["graceful_timeout"]["default"] == "30s"


def test_the_schema_is_valid_and_reads_values_as_the_yaml_writes_them() -> None:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = {
        "listeners": {"dicom": {"bind": "0.0.0.0:11112", "idle_timeout": "1m30s"}},
        "pools": {"p": {"backends": [{"name": "a", "dicom": "A@h:104"}]}},
        "spool": {"directory": "/s", "max_bytes": "20GB", "retry": {"max_age": 0}},
        "middlewares": {"m": {"strip_prefix": {"prefixes": ["/a"]}}},
    }
    assert list(validator.iter_errors(good)) == []
    for broken in (
        {"spool": {"directory": "/s", "retry": {"max_age": "7d"}}},
        {"listeners": {"dicom": {"idle_timeout": 0}}},  # durations are more than zero
        {"listeners": {"dicom": {"bindd": "0.0.0.0:11112"}}},
        {"pools": {"p": {"backends": [{"name": "-a", "dicom": "A@h:104"}]}}},
        {"middlewares": {"m": {"strip_prefix": {"prefixes": ["/a"]}, "add_prefix": {}}}},
        {"middlewares": {"m": {"no_such_kind": {}}}},
    ):
        merged = {**good, **broken}
        assert list(validator.iter_errors(merged)), broken


def test_the_committed_reference_is_what_dicomlb_schema_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["schema", "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert printed == markdown_reference()
    assert REFERENCE.read_text(encoding="utf-8") == printed, (
        f"{REFERENCE.relative_to(ROOT)} is out of date; regenerate it with "
        f"`dicomlb schema --markdown > {REFERENCE.relative_to(ROOT)}`"
    )


def test_dicomlb_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config_schema()


# --- the examples in README.md and docs/ ------------------------------------------------
#
# Rule: a ```yaml block marked `<!-- config -->` (see test_docs.py) or with a top-level
# `pools` key is a whole configuration: `dicomlb check` must accept it, without warnings, and
# it must validate against the schema. Any other block whose keys are all keys of one part of
# the file (the top level, a pool, a listener, …) is a fragment: it must validate against
# that part's schema, its required keys waived. Blocks of other programs (Prometheus) are
# left alone. Placeholders a reader replaces are filled in here: the environment variables
# the examples name, and PEM files under /etc/dicomlb (the system's CA bundle stands in).

_BLOCK = re.compile(r"^(<!-- config -->\n)?```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ENVIRONMENT = {"ORTHANC_PASSWORD": "secret", "ARCHIVE_TOKEN": "token"}


def _examples() -> list[Any]:
    found = []
    for page in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1 + bool(match.group(1))
            place = f"{page.relative_to(ROOT)}:{line}"
            found.append(pytest.param(match.group(2), bool(match.group(1)), id=place))
    return found


def _part_schema(keys: set[str]) -> dict[str, Any] | None:
    """The schema of the first part of the file that has all of `keys`, required keys
    waived; None when no part has them."""
    schema = config_schema()
    for _, model in sections():
        if keys <= set(model.model_fields):
            part = schema if model is ConfigModel else schema["$defs"][model.__name__]
            part = {**copy.deepcopy(part), "$defs": schema["$defs"]}
            part.pop("required", None)
            return part
    return None


def test_the_examples_are_found() -> None:
    assert len(_examples()) >= 12


@pytest.mark.parametrize(("block", "marked"), _examples())
def test_yaml_examples_are_valid(
    block: str,
    marked: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = yaml.safe_load(block)
    if not isinstance(data, dict) or not data:
        pytest.skip("not a dicomlb configuration")
    whole = marked or "pools" in data
    schema = config_schema() if whole else _part_schema(set(data))
    if schema is None:
        pytest.skip("not a dicomlb configuration")
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft202012Validator(schema).iter_errors(data)
    ]
    assert not errors, errors
    if not whole:
        return
    for name, value in _ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    ca = ssl.get_default_verify_paths().cafile
    assert ca is not None
    config = tmp_path / "lb.yaml"
    config.write_text(re.sub(r"/etc/dicomlb/[\w.-]+\.pem", ca, block), encoding="utf-8")
    assert cli.main(["check", "-c", str(config)]) == 0
    assert "warning:" not in capsys.readouterr().err


# --- the defaults the schema shows are the ones in force ----------------------------------

# Every section written once, with nothing that its defaults would change.
_BASE: dict[str, Any] = {
    "listeners": {
        "dicom": {"tls": None, "allow": None},
        "admin": {"auth": None},
        "http": {},
    },
    "pools": {
        "p": {
            "strategy": "affinity",  # `key` and `http.key` are read only with affinity
            "health": {"http": {}},
            "http": {},
            "backends": [
                {
                    "name": "a",
                    "dicom": "A@10.0.0.5:104",
                    "http": "http://10.0.0.5:8042",
                    "store_via": "stow_rs",  # `stow_path` and `stow_batch` need it
                }
            ],
        }
    },
    "routes": [{"name": "r", "pool": "p"}],
    "http_routes": [{"name": "h", "pool": "p"}],
    "spool": {"directory": "/var/spool/dicomlb", "retry": {}},
    "providers": {"docker": {}},
}


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    node: Any = data
    keys = [k for part in path.split(".") for k in re.split(r"(\[\])", part) if k]
    for key in keys[:-1]:
        node = node[0] if key == "[]" else node["p" if key == "<name>" else key]
    node[keys[-1]] = value


def _comparable(snapshot: Snapshot) -> Snapshot:
    """The snapshot without its compiled predicates (new functions on every build), and with
    what the proxy reads for a pool without `http` options (the defaults; affinity on the
    client IP) written out."""
    pools = {name: _pool(pool) for name, pool in snapshot.pools.items()}
    return dataclasses.replace(
        snapshot,
        pools=pools,
        routes=tuple(
            dataclasses.replace(r, match=_never, partial=_never, pool=pools[r.pool.name])
            for r in snapshot.routes
        ),
        http_routes=tuple(
            dataclasses.replace(r, match=_never, pool=pools[r.pool.name])
            for r in snapshot.http_routes
        ),
    )


def _pool(pool: PoolConfig) -> PoolConfig:
    http = pool.http or HttpPoolConfig()
    if http.key is None:
        http = dataclasses.replace(http, key=HttpKey(kind=KeyKind.CLIENT_IP))
    return dataclasses.replace(pool, http=http)


def _never(facts: Any) -> bool:
    return False


def _shown_defaults() -> list[Any]:
    schema = config_schema()
    found = []
    for path, model in sections():
        props = (schema if model is ConfigModel else schema["$defs"][model.__name__])["properties"]
        for name, field in model.model_fields.items():
            shown = props[name].get("default")
            if field.default is None and shown is not None and not path.startswith("middlewares"):
                key = f"{path}.{name}" if path else name
                found.append(pytest.param(key, shown, id=key))
    return found


@pytest.mark.parametrize(("key", "shown"), _shown_defaults())
def test_writing_the_default_the_schema_shows_changes_nothing(key: str, shown: Any) -> None:
    base = _without_none(_BASE)
    written = copy.deepcopy(base)
    _set(written, key, shown)
    assert written != base
    assert _comparable(build_snapshot(written)) == _comparable(build_snapshot(base))

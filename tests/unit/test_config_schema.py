"""`dicomlb schema`: every key described, the committed reference current, and README's
YAML examples valid for both `dicomlb check` and the JSON Schema."""

from __future__ import annotations

import copy
import json
import re
import ssl
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dicomlb import cli
from dicomlb.config.build import ConfigModel
from dicomlb.config.schema import config_schema, markdown_reference, sections

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


# --- README's examples --------------------------------------------------------------------
#
# Rule: a ```yaml block with a top-level `pools` key is a whole configuration: `dicomlb
# check` must accept it and it must validate against the schema. Any other block is a
# fragment (a few top-level sections out of a file): it must validate against the schema
# with the top level's required keys waived. Placeholders a reader replaces are filled in
# here: environment variables the examples name, and PEM files under /etc/dicomlb (the
# system's CA bundle stands in).

_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ENVIRONMENT = {"ORTHANC_PASSWORD": "secret", "ARCHIVE_TOKEN": "token"}


def _examples() -> list[Any]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append(pytest.param(match.group(1), id=f"README.md:{line}"))
    return found


@pytest.mark.parametrize("block", _examples())
def test_readme_yaml_examples_are_valid(
    block: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    schema = config_schema()
    if "pools" not in data:
        schema = copy.deepcopy(schema)
        schema.pop("required", None)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft202012Validator(schema).iter_errors(data)
    ]
    assert not errors, errors
    if "pools" not in data:
        return
    for name, value in _ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    ca = ssl.get_default_verify_paths().cafile
    assert ca is not None
    config = tmp_path / "lb.yaml"
    config.write_text(re.sub(r"/etc/dicomlb/[\w.-]+\.pem", ca, block), encoding="utf-8")
    assert cli.main(["check", "-c", str(config)]) == 0
    assert "warning:" not in capsys.readouterr().err

"""The configuration's JSON Schema and its reference in Markdown (`dicomlb schema`), both
made from the models' descriptions and defaults. Pure: no I/O.

`middlewares` is validated kind by kind in `dicomlb.config.http` (so that its errors name
the kind); its schema is added here from `MIDDLEWARE_MODELS`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import BaseModel

from dicomlb.config.build import ConfigModel
from dicomlb.config.http import MIDDLEWARE_MODELS
from dicomlb.config.tools import DURATION_TEXT, SIZE_TEXT

__all__ = ["MIDDLEWARES_PATH", "config_schema", "markdown_reference", "sections"]

MIDDLEWARES_PATH = "middlewares.<name>"


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the configuration file."""
    schema = ConfigModel.model_json_schema()
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    kinds: dict[str, Any] = {}
    for kind, model in MIDDLEWARE_MODELS.items():
        sub = model.model_json_schema()
        defs.update(sub.pop("$defs", {}))
        defs[model.__name__] = sub
        kinds[kind] = {"$ref": f"#/$defs/{model.__name__}"}
    schema["properties"]["middlewares"]["additionalProperties"] = {
        "type": "object",
        "description": "One middleware kind with its options.",
        "properties": kinds,
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# --- the models, walked -------------------------------------------------------------------


def _models_in(annotation: Any, path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """The models an annotation holds, with the key path each one is written at."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        yield from _models_in(typing.get_args(annotation)[0], path)
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg, path)
    elif origin is list:
        yield from _models_in(typing.get_args(annotation)[0], f"{path}[]")
    elif origin is dict:
        yield from _models_in(typing.get_args(annotation)[1], f"{path}.<name>")
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield path, annotation


def sections() -> list[tuple[str, type[BaseModel]]]:
    """Every model of the file with the key path it is written at, depth first in the
    order of the keys: `("", ConfigModel)`, `("listeners", ListenersModel)`, …, then the
    middleware kinds."""
    found: list[tuple[str, type[BaseModel]]] = []

    def walk(path: str, model: type[BaseModel]) -> None:
        found.append((path, model))
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            for child_path, child in _models_in(field.annotation, key):
                walk(child_path, child)

    walk("", ConfigModel)
    for kind, model in MIDDLEWARE_MODELS.items():
        walk(f"{MIDDLEWARES_PATH}.{kind}", model)
    return found


# --- Markdown -----------------------------------------------------------------------------


def _type_text(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        target = defs.get(prop["$ref"].rpartition("/")[2], {})
        return "mapping" if target.get("type") == "object" else _type_text(target, defs)
    if "enum" in prop:
        return " | ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    if "anyOf" in prop:
        patterns = {p.get("pattern") for p in prop["anyOf"]}
        if DURATION_TEXT in patterns:
            return "duration"
        if SIZE_TEXT in patterns:
            return "size"
        parts = [_type_text(p, defs) for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(dict.fromkeys(parts))
    kind = prop.get("type")
    if isinstance(kind, list):
        named = [_type_text({**prop, "type": k}, defs) for k in kind if k != "null"]
        return " or ".join(named)
    if kind == "array":
        return f"list of {_type_text(prop.get('items', {}), defs)}"
    if kind == "object":
        values = prop.get("additionalProperties")
        if isinstance(values, dict) and values:
            return f"mapping of {_type_text(values, defs)}"
        return "mapping"
    if kind == "string":
        return "text"
    if kind == "boolean":
        return "true | false"
    if isinstance(kind, str):
        return kind
    return "any"


def _default_text(prop: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in prop or prop["default"] is None:
        return "—"
    value = prop["default"]
    if value in ({}, []):
        return "none"
    if isinstance(value, bool):
        return f"`{'true' if value else 'false'}`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown_reference() -> str:
    """The configuration reference: one section per model, a row per key (type, default,
    description)."""
    schema = config_schema()
    defs = schema["$defs"]
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `dicomlb schema --markdown`; do not edit. -->",
        "",
        "Every key of the configuration file, section by section. Durations are seconds "
        "(`5`, `0.5`) or text (`500ms`, `5s`, `2m`, `1h`, `1m30s`); sizes are bytes or text "
        "(`500MB`, `20GB`, `1.5GiB`). Unknown keys are errors. `<name>` stands for a name you "
        "choose, `[]` for an entry of a list.",
        "",
        "## Editor completion",
        "",
        "`dicomlb schema` prints the same as a JSON Schema. Editors that use "
        "yaml-language-server (VS Code's YAML extension, Neovim's and Helix's YAML language "
        "server) then complete keys, show each one's description and default, and flag "
        "unknown keys and malformed values as you type. Save the schema beside the file, "
        "name it on the file's first line, and save it again after upgrading dicomlb:",
        "",
        "```sh",
        "dicomlb schema > dicomlb.schema.json",
        "```",
        "",
        "```yaml",
        "# yaml-language-server: $schema=./dicomlb.schema.json",
        "pools:",
        "  pacs:",
        '    backends: [{name: pacs-a, dicom: "PACSA@10.0.0.5:4242"}]',
        "routes: [{name: default, pool: pacs}]",
        "```",
    ]
    for path, model in sections():
        model_schema = schema if model is ConfigModel else defs[model.__name__]
        title = f"`{path}`" if path else "Top level"
        lines += ["", f"## {title}", ""]
        doc = (model.__doc__ or "").strip()
        if doc:
            lines += [" ".join(doc.split()), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        required = set(model_schema.get("required", ()))
        for name, field in model.model_fields.items():
            prop = model_schema["properties"][name]
            lines.append(
                f"| `{name}` | {_cell(_type_text(prop, defs))} | "
                f"{_cell(_default_text(prop, name in required))} | "
                f"{_cell(field.description or '')} |"
            )
    return "\n".join(lines) + "\n"

"""How a value someone wrote (a config key's value, a match operand) is quoted in an error
message: strings in double quotes, YAML's words for null and booleans, long mappings and
lists shortened."""

from __future__ import annotations

from typing import Any


def show(value: Any) -> str:
    """A value as an error message quotes it (shortened when long)."""
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)

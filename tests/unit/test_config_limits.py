"""config.py's loader against broken and hostile files: size, aliases, nesting, file kinds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dicomlb.config import (
    MAX_ALIAS_NODES,
    MAX_CONFIG_BYTES,
    MAX_YAML_DEPTH,
    ConfigError,
    load_snapshot,
)
from tests.unit.test_config import EXAMPLE


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: 9 aliases per level, 9**levels strings once expanded."""
    text = 'x0: &x0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels):
        text += f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]\n"
    return text + f"pools:\n  p:\n    backends: *x{levels - 1}\nroutes: []\n"


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_snapshot(path)
    return str(caught.value)


def test_an_alias_bomb_is_refused_at_once_naming_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(billion_laughs())
    started = time.perf_counter()
    text = refusal(path)
    assert time.perf_counter() - started < 1.0
    assert text.startswith(f"{path}:")
    assert f"aliases repeat more than {MAX_ALIAS_NODES} nodes" in text
    assert "\n" not in text


def test_aliases_a_configuration_uses_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(
        "x-health: &health {interval: 5s, fall: 2}\n"
        "pools:\n"
        "  a: {health: *health, backends: [{name: a1, dicom: 'A@127.0.0.1:104'}]}\n"
        "  b: {health: *health, backends: [{name: b1, dicom: 'B@127.0.0.1:104'}]}\n"
        "routes: [{name: r, pool: a}]\n"
    )
    with pytest.raises(ConfigError) as caught:  # the x- key is unknown; the aliases were read
        load_snapshot(path)
    assert 'x-health: unknown key "x-health"' in str(caught.value)


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text("pools: &a {p: *a}\n")
    assert refusal(path) == (
        f"{path}:1: alias *a refers to a node that contains it; write the value out"
    )


@pytest.mark.parametrize("depth", [MAX_YAML_DEPTH + 1, 100_000])
def test_deep_nesting_is_refused_without_a_recursion_error(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text("pools: " + "[" * depth + "]" * depth + "\n")
    assert refusal(path) == (
        f"{path}:1: nested deeper than {MAX_YAML_DEPTH} levels of mappings and lists; "
        "a configuration needs far fewer"
    )


def test_nesting_up_to_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    depth = MAX_YAML_DEPTH - 1  # the top-level mapping is one level
    path.write_text("x: " + "[" * depth + "]" * depth + "\n")
    assert 'unknown key "x"' in refusal(path)


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(EXAMPLE + "#" * MAX_CONFIG_BYTES + "\n")
    assert refusal(path) == (
        f"{path}: is larger than 1 MiB, the most a configuration file may be; check that this "
        "is the right file"
    )


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    os.mkfifo(path)
    assert refusal(path) == (
        f"{path}: is a FIFO, not a regular file; point at the YAML file itself"
    )


@pytest.mark.parametrize(
    ("target", "kind"), [("/dev/zero", "a character device"), (".", "a directory")]
)
def test_other_kinds_of_file_are_refused(tmp_path: Path, target: str, kind: str) -> None:
    path = tmp_path / "lb.yaml"
    path.symlink_to(tmp_path if target == "." else target)
    assert refusal(path) == f"{path}: is {kind}, not a regular file; point at the YAML file itself"


def test_a_symlink_chain_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    """As Kubernetes mounts a ConfigMap: lb.yaml -> ..data/lb.yaml, ..data -> ..2024_01_01."""
    version = tmp_path / "..2024_01_01"
    version.mkdir()
    (version / "lb.yaml").write_text(EXAMPLE)
    (tmp_path / "..data").symlink_to(version.name)
    path = tmp_path / "lb.yaml"
    path.symlink_to("..data/lb.yaml")
    assert load_snapshot(path).source == str(path)


def test_text_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_bytes(b"pools: \xff\n")
    assert (
        refusal(path)
        == f"{path}: is not UTF-8 text (invalid start byte at byte 7); save it as UTF-8"
    )

"""Every shell example of README.md and docs/ runs here, as written, against a real dicomlb.

The examples are read from the ```sh blocks; each line is either run (with the addresses,
pid and secrets of this test put in for the documented ones) or listed in NOT_RUN with the
reason it cannot run inside a test. A new example that is neither fails the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.dicomdata import make_small, write_series
from tests.peers import DicomlbProcess, free_port, storescu

ROOT = Path(__file__).parents[2]
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|console|shell)\n(.*?)^```[ \t]*$", re.M | re.S)
BIN = Path(sys.executable).parent

NOT_RUN = {
    "bash scripts/demo.sh": "runs the demo until stopped; tests/integration/test_cli.py runs it",
    "bash scripts/test.sh": "is this test suite",
    "python3 -m venv .venv && pip install .": "how this suite's own .venv is made",
    "python -m dicomlb.reference": "rewrites the committed pages; test_reference_pages runs it",
    "DICOMLB_COMPILE=1 pip install --no-build-isolation .": (
        "builds and installs; scripts/test_compiled.sh does, into .venv-compiled"
    ),
}
RUNNING = "dicomlb run -c lb.yaml"  # the instance the other examples talk to


def shell_examples() -> list[tuple[str, str]]:
    """(file, command) of every command line in a shell block, continuation lines joined,
    comments and the output shown after a `$ ` prompt left out."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in SHELL_BLOCK.findall(path.read_text()):
            lines = block.replace("\\\n", " ").splitlines()
            prompted = any(line.startswith("$ ") for line in lines)
            for line in lines:
                if prompted and not line.startswith("$ "):
                    continue
                command = re.sub(r"\s+#.*$", "", line.removeprefix("$ ")).strip()
                command = re.sub(r"\s+", " ", command)
                if command:
                    found.append((str(path.relative_to(ROOT)), command))
    return found


def normalised(command: str) -> str:
    return command.replace(".venv/bin/", "")


def config(dicom: int, http: int, admin: int, digest: str, spool: Path, down: int) -> str:
    return json.dumps(
        {
            "listeners": {
                "dicom": {"bind": f"127.0.0.1:{dicom}", "ae_title": "DICOMLB"},
                "http": {"bind": f"127.0.0.1:{http}"},
                "admin": {"bind": f"127.0.0.1:{admin}", "auth": {"bearer_tokens_sha256": [digest]}},
            },
            "pools": {
                "pacs": {
                    "health": {"enabled": False},
                    "connect_timeout": "1s",
                    "backends": [{"name": "pacs-a", "dicom": f"PACSA@127.0.0.1:{down}"}],
                },
                "web": {
                    "health": {"enabled": False},
                    "backends": [{"name": "web-1", "http": f"http://127.0.0.1:{down}"}],
                },
            },
            "routes": [
                {
                    "name": "modalities",
                    "match": {"calling_aet": {"regex": "^CT_"}},
                    "pool": "pacs",
                    "ack": "spool",
                },
                {"name": "default", "pool": "pacs"},
            ],
            "http_routes": [{"name": "app", "match": {"host": "pacs.example.org"}, "pool": "web"}],
            "spool": {
                "directory": str(spool),
                "min_free_disk": 0,
                "retry": {
                    "base": "0.1s",
                    "cap": "0.2s",
                    "max_age": "2s",
                },  # pacs-a is down: they die
            },
        }
    )


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        input="a-secret\n",  # what `dicomlb hash-password` reads when stdin is no terminal
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dead_items(cwd: Path, env: dict[str, str]) -> int:
    listed = run("dicomlb spool ls -c lb.yaml --state dead --limit 1000", cwd, env)
    return sum(1 for line in listed.stdout.splitlines() if " dead " in line)


def test_every_shell_example_runs_or_says_why_not(tmp_path: Path) -> None:
    examples = shell_examples()
    assert len(examples) > 20  # the reader found the blocks
    commands = list(dict.fromkeys(normalised(command) for _, command in examples))
    unknown = [c for c in commands if c not in NOT_RUN and c != RUNNING and "dicomlb" not in c]
    unknown = [c for c in unknown if not c.startswith(("curl ", "kill ", "openssl "))]
    assert not unknown, f"shell examples neither run nor listed in NOT_RUN: {unknown}"

    token = "test-token-0123456789"
    admin = free_port()
    (tmp_path / "etc").mkdir()
    instances = make_small(45, pixels=False)
    write_series(instances, tmp_path / "study")
    write_series(instances, tmp_path / "CT")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "TOKEN": token,
        "T": token,
    }
    dicom = free_port()
    text = config(
        dicom, free_port(), admin, hashlib.sha256(token.encode()).hexdigest(),
        tmp_path / "spool", free_port(),
    )  # fmt: skip
    (tmp_path / "lb.yaml").write_text(text)

    def concrete(command: str, pid: int) -> str:
        return (
            command.replace("127.0.0.1:8404", f"127.0.0.1:{admin}")
            .replace("/etc/dicomlb/", f"{tmp_path}/etc/")
            .replace("<pid>", str(pid))
        )

    spool_lines = [c for c in commands if c.startswith("dicomlb spool ")]
    live_lines = [c for c in commands if c not in NOT_RUN and c != RUNNING and c not in spool_lines]
    with DicomlbProcess(text, dicom, tmp_path / "instance") as balancer:
        sent = storescu("127.0.0.1", dicom, tmp_path / "study", aet="CT_1", aec="DICOMLB")
        assert sent.returncode == 0, sent.stderr
        for command in live_lines:
            done = run(concrete(command, balancer.pid), tmp_path, env)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            if "hash-password" in command:
                assert re.fullmatch(r"[0-9a-f]{64}\n", done.stdout), done.stdout
            if command.startswith("curl "):
                assert json.loads(done.stdout)["name"] == "pacs-a", done.stdout
        assert (tmp_path / "dicomlb.schema.json").stat().st_size > 1000
        deadline = time.monotonic() + 30
        while dead_items(tmp_path, env) < 45 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert balancer.process is not None and balancer.process.poll() is None  # took the HUP
    assert dead_items(tmp_path, env) == 45
    for command in spool_lines:  # in the order the page gives them
        done = run(concrete(command, 0), tmp_path, env)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        if command.startswith("dicomlb spool show 42"):
            assert "id: 42" in done.stdout
    assert "dicomlb.reloaded" in (tmp_path / "instance" / "dicomlb.log").read_text()

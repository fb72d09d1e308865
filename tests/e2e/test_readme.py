"""Issue 10, point 9: the README's quick starts, run word for word.

The Django and Flask blocks of README.md are read from the file and run by bash
in an empty directory holding the virtual environment as ``.venv`` (the one the
README's set-up command makes), with nothing of the test suite on the path.
Only the port differs: ``WSGIPOOL_PORT`` in the environment, as a user would set
it, so that the commands themselves stay as written.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.cli import kill_tree
from tests.conftest import ROOT, free_port
from tests.conftest import http_get as get
from tests.polling import wait_for

README = (ROOT / "README.md").read_text()


def block(title: str, language: str = "sh", index: int = 0) -> str:
    section = README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)
    return blocks[index]


def clean_env(port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "DJANGO", "WSGIPOOL_", "VIRTUAL_ENV"))
        and key not in ("PORT", "WEB_CONCURRENCY")
    }
    env["WSGIPOOL_PORT"] = str(port)
    return env


@contextlib.contextmanager
def run_script(script: str, cwd: Path, port: int):
    """Run a README block with bash; its last command is the server, stopped at the end."""
    (cwd / ".venv").symlink_to(Path(sys.prefix))
    log = cwd / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-euc", script],
            cwd=cwd,
            env=clean_env(port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    known: set[int] = {proc.pid}

    def serving() -> bool:
        with contextlib.suppress(psutil.Error):
            known.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        return proc.poll() is not None or "serving with" in log.read_text(errors="replace")

    try:
        wait_for(serving, timeout=120)
        assert proc.poll() is None, log.read_text(errors="replace")
        assert "serving with" in log.read_text(errors="replace")
        yield log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        kill_tree(proc, known)


def test_django_quick_start_word_for_word(tmp_path):
    pytest.importorskip("django")
    script = block("Quick start: Django")
    assert "collectstatic" in script and "STATIC_ROOT" in script
    port = free_port()
    with run_script(script, tmp_path, port) as log:
        status, body = get(port, "/")
        assert status == 200 and b"Django" in body, log.read_text()
        status, body = get(port, "/static/admin/css/base.css")
        assert status == 200 and body, log.read_text()
        assert f"listening on http://127.0.0.1:{port}" in log.read_text()
    assert (tmp_path / "myproject" / "staticfiles" / "admin").is_dir()


def test_flask_quick_start_word_for_word(tmp_path):
    pytest.importorskip("flask")
    (tmp_path / "app.py").write_text(block("Quick start: Flask", "python"))
    port = free_port()
    with run_script(block("Quick start: Flask"), tmp_path, port) as log:
        assert get(port, "/") == (200, b"hello")
        assert f"listening on http://127.0.0.1:{port}" in log.read_text()


def test_readme_keeps_two_set_up_commands():
    section = README.split("## Set up\n", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(commands) == 2
    assert all(len(c.strip().splitlines()) == 1 for c in commands)

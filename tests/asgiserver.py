"""An ASGI server subprocess (uvicorn, Hypercorn); shared by test_asgi and test_response_rules."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from tests.conftest import ServerProcess, free_port, server_env


class AsgiServer(ServerProcess):
    """An ASGI server subprocess serving `module:app`; stop() kills its whole tree."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str], log: Path) -> None:
        super().__init__(argv[1:], port, log, env, log.parent, module=argv[0])

    def wait_until_serving(self, timeout: float = 45.0) -> None:
        """Until the port accepts (ASGI servers print no "serving with" line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                self.descendants()
                return
            time.sleep(0.05)
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log}")


def start_asgi(
    directory: Path,
    server: str,
    target: str,
    env: dict[str, str],
    *,
    wait: bool = True,
    extra_path: Path | None = None,
    lifespan: str = "on",
    log_level: str = "warning",
) -> AsgiServer:
    port = free_port()
    if server == "uvicorn":
        argv = ["uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--lifespan", lifespan, "--log-level", log_level]
    else:
        argv = ["hypercorn", target, "--bind", f"127.0.0.1:{port}"]
    full_env = server_env(env)
    if extra_path is not None:
        full_env["PYTHONPATH"] = f"{extra_path}{os.pathsep}{full_env['PYTHONPATH']}"
    log = directory / f"{server}-{port}.log"
    process = AsgiServer(argv, port, full_env, log)
    if wait:
        try:
            process.wait_until_serving()
        except BaseException:
            process.stop()
            raise
    return process

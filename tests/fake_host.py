"""A fake sockrace host for the driver tests: speaks docs/driver.md to the Python driver over its
stdin/stdout, one JSON line at a time."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from sockrace.check.driver_commands import python_driver_path


class FakeHost:
    """The Python driver started with `arguments` under `python`, and its end of the protocol."""

    def __init__(self, *arguments: str, python: tuple[str, ...] = (sys.executable,)) -> None:
        self.process = subprocess.Popen([*python, str(python_driver_path()), *arguments],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the driver closed its stdout"
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    def until_ran(self) -> list[dict[str, Any]]:
        messages = []
        while (message := self.receive())["op"] != "ran":
            messages.append(message)
        return messages

    def setup(self, scenario: str, total: int, backend: str | None = None) -> dict[str, Any]:
        """hello, then set `scenario` up (against an address nothing listens on); the answer."""
        self.send({"op": "hello", "protocol": 1})
        hello = self.receive()
        assert hello["op"] == "hello", hello
        request: dict[str, Any] = {"op": "setup", "scenario": scenario, "address": ["127.0.0.1", 9],
                                   "total": total}
        if backend is not None:
            request["backend"] = backend
        self.send(request)
        return self.receive()

    def close(self) -> tuple[int, str]:
        """Close its stdin; its exit code and stderr."""
        _, stderr = self.process.communicate(timeout=10)
        return self.process.returncode, stderr.decode()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)  # closes its pipes

"""The processes of a benchmark run: servers (`benchmarks.serve`) and client workers (`benchmarks.worker`).

Each imports sockrace from one source tree, chosen by PYTHONPATH, so that two trees can be measured
in the same run. Also here: what the kernel says a process spent (CPU) and holds (memory), Linux only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Final

from benchmarks.variants import REPO_ROOT, Tree

# glibc's malloc serves blocks above its mmap threshold (128 KiB at start) with mmap, and raises the
# threshold the first time such a block is freed whole. asyncio's transports allocate a 256 KiB buffer
# per recv() (the reference code keeps that default), so whether each read costs an mmap, an mremap
# and a munmap depends on what the process happened to allocate before: in one client process it did,
# in the next, with other imports, it did not, and the same reference client spent twice the CPU.
# Fixed at glibc's own default, which also turns the adjustment off: every benchmark process behaves
# like a fresh one, whatever it imported. (Other allocators ignore the variable.)
MALLOC_ENVIRONMENT: Final = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def environment(tree: Tree) -> dict[str, str]:
    """This process's environment, with `tree`'s sockrace and this checkout's benchmarks importable,
    and malloc's mmap threshold fixed (see MALLOC_ENVIRONMENT).

    PYTHONPATH comes before site-packages, so it wins over an installed (or editable) sockrace.
    """
    env = dict(os.environ) | MALLOC_ENVIRONMENT
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree.src), str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def start_server_process(kind: str, loop: str, tree: Tree) -> tuple[subprocess.Popen[str], int]:
    """Start `python -m benchmarks.serve kind` and wait for its port. Raises RuntimeError."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.serve", kind, "--loop", loop],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO_ROOT, env=environment(tree),
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    if not first.startswith("PORT "):
        stop_server_process(process)
        assert process.stderr is not None
        detail = process.stderr.read().strip().splitlines()
        raise RuntimeError(f"{kind} server did not start: {detail[-1] if detail else first!r}")
    return process, int(first.split()[1])


def stop_server_process(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None:
        process.stdin.close()  # EOF on its stdin: the server shuts down
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


class Worker:
    """A client process: takes one job (a JSON line) at a time and answers with one JSON line."""

    def __init__(self, tree: Tree) -> None:
        # A file, not a pipe, so that a chatty worker cannot block on a full stderr pipe.
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            cwd=REPO_ROOT, env=environment(tree),
        )

    def ask(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run `job` in the worker and return its answer. Raises RuntimeError when the worker died."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # reported below, with the worker's last words
        answer = self.process.stdout.readline()
        if not answer:
            self.stderr.seek(0)
            lines = self.stderr.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"the client process ended: {lines[-1] if lines else 'no message'}")
        result: dict[str, Any] = json.loads(answer)
        return result

    def close(self) -> None:
        stop_server_process(self.process)  # same protocol: EOF on stdin ends it
        self.stderr.close()


class ProcessPool:
    """One server process per (tree, kind, loop) and one worker per tree, started on first use."""

    def __init__(self, trees: tuple[Tree, ...]) -> None:
        self.trees = {tree.name: tree for tree in trees}
        self.servers: dict[tuple[str, str, str], tuple[subprocess.Popen[str], int]] = {}
        self.workers: dict[str, Worker] = {}

    def server(self, tree: str, kind: str, loop: str) -> tuple[int, tuple[str, int]]:
        """The pid and address of the server."""
        if (tree, kind, loop) not in self.servers:
            self.servers[tree, kind, loop] = start_server_process(kind, loop, self.trees[tree])
        process, port = self.servers[tree, kind, loop]
        return process.pid, ("127.0.0.1", port)

    def worker(self, tree: str) -> Worker:
        if tree not in self.workers:
            self.workers[tree] = Worker(self.trees[tree])
        return self.workers[tree]

    def close(self) -> None:
        for process, _ in self.servers.values():
            stop_server_process(process)
        for worker in self.workers.values():
            worker.close()
        self.servers.clear()
        self.workers.clear()


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time used so far by process `pid`, to the nanosecond (Linux /proc); None when unknown."""
    if pid is None:
        return None
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid`, from /proc (Linux). Raises OSError elsewhere."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmRSS line")

"""The redis-py versions the examples run against, each installed into a directory of its own.

    python examples/redis_versions.py install [--root DIR]

Each `requirements-redis-LABEL.txt` beside this file pins one version (LABEL: 4.5.3, 4.5.4, newest).
`install` puts each into ROOT/LABEL with `pip install --target --no-deps`, so that one set serves
every Python from 3.11 (redis-py is pure Python) and a child process chooses its version with
PYTHONPATH=ROOT/LABEL. ROOT is $SOCKRACE_REDIS_PY_DIR, else ~/.cache/sockrace/redis-py. A directory
is reused while it holds a copy of the same requirements. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
ROOT_VARIABLE: Final = "SOCKRACE_REDIS_PY_DIR"
STAMP: Final = "requirements.txt"
# Fetching three small wheels takes seconds; minutes means the index is unreachable.
INSTALL_TIMEOUT_S: Final = 300


def labels() -> list[str]:
    """The labels of the pinned versions, oldest first (newest last)."""
    found = [path.name.removeprefix("requirements-redis-").removesuffix(".txt")
             for path in HERE.glob("requirements-redis-*.txt")]
    return sorted(found, key=lambda label: (label == "newest", label))


def requirements(label: str) -> Path:
    return HERE / f"requirements-redis-{label}.txt"


def pinned(label: str) -> str:
    """The redis-py version requirements-redis-LABEL.txt pins, such as "4.5.4"."""
    for line in requirements(label).read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == "redis":
            return version.strip()
    raise ValueError(f"{requirements(label).name} pins no redis version")


def default_root() -> Path:
    configured = os.environ.get(ROOT_VARIABLE)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sockrace" / "redis-py"


def site_dir(label: str, root: Path | None = None) -> Path:
    return (root or default_root()) / label


def installed(label: str, root: Path | None = None) -> bool:
    """Whether ROOT/LABEL holds exactly what requirements-redis-LABEL.txt pins."""
    stamp = site_dir(label, root) / STAMP
    return stamp.is_file() and stamp.read_text() == requirements(label).read_text()


def install(label: str, root: Path | None = None, python: str = sys.executable) -> Path:
    """Install the pinned version into ROOT/LABEL unless it is there already; returns the directory.

    Raises subprocess.CalledProcessError (pip's output in .stdout) when pip fails.
    """
    target = site_dir(label, root)
    if installed(label, root):
        return target
    target.mkdir(parents=True, exist_ok=True)
    (target / STAMP).unlink(missing_ok=True)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--upgrade", "--target", str(target), "-r", str(requirements(label))],
        check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    (target / STAMP).write_text(requirements(label).read_text())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the redis-py versions the examples use.")
    parser.add_argument("command", choices=["install", "list"])
    parser.add_argument("--root", type=Path, default=None, help=f"default: ${ROOT_VARIABLE} or ~/.cache")
    args = parser.parse_args(argv)
    for label in labels():
        if args.command == "install":
            try:
                install(label, args.root)
            except subprocess.CalledProcessError as exc:
                print(exc.stdout + exc.stderr, file=sys.stderr)
                print(f"redis_versions: could not install redis-py {label}", file=sys.stderr)
                return 1
        state = "installed" if installed(label, args.root) else "missing"
        print(f"redis-py {label}: {site_dir(label, args.root)} ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

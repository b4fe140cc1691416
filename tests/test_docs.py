"""The documents as a test: what README.md and docs/*.md show runs, and says what the code does.

- Every ```python block runs as a user runs it, in a process of its own, with a timeout, from the
  repository root: a program (the default) with `python -W error FILE`; a test (a `def test_...`) with
  `python -m pytest FILE`; a scenario (an `async def scenario(address)` that nothing runs) with
  `sockrace check FILE:scenario`. The docs' addresses are placeholders, replaced by servers this test
  starts: 127.0.0.1:7777 is `sockrace server --port 7777` (here the in-repo server on a free port),
  127.0.0.1:6379 a redis-server (here one on a free port, with the newest pinned redis-py; without them
  those snippets skip, and fail under CI=true, as in tests/test_examples.py). One size is cut: a sweep of
  `range(1, 501)` runs `range(1, 21)` here.
- docs/json.md's tables list the keys of every `--json` document: each command is run and the keys it
  prints must be exactly those, both ways.
- The counts are defined in json.md as check_report.py's docstring defines them.
- Every option of every command is named where the command is described, and an option a command does not
  know is reported by that command, as the README says.
- docs/layout.md names every module.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from examples.redis_server import RedisServer, RedisServerError, find_redis_server
from examples.redis_versions import installed, site_dir
from helpers import ThreadedServer
from sockrace import check_report
from sockrace.cli import EXIT_USAGE, build_parser, main

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
JSON_DOC = ROOT / "docs" / "json.md"

SNIPPET_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 30.0
# The placeholders of the docs' snippets (see the module's docstring), and the one size cut here.
SOCKRACE_ADDRESS = re.compile(r'(127\.0\.0\.1"?(?:, |:))7777\b')
REDIS_ADDRESS = re.compile(r'(127\.0\.0\.1"?(?:, |:))6379\b')
SIZES = {"range(1, 501)": "range(1, 21)"}
REDIS_PY = "newest"  # the pinned redis-py the snippets run with (examples/requirements-redis-newest.txt)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: .ci/run should have provided it")
    pytest.skip(reason)


# ------------------------------------------------------------------ the Python snippets


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int  # of the ```python fence
    code: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if re.search(r"^(async )?def test_", self.code, re.MULTILINE):
            return "test"
        if re.search(r"^async def scenario\(", self.code, re.MULTILINE) and "asyncio.run(" not in self.code:
            return "scenario"
        return "program"

    @property
    def needs_sockrace(self) -> bool:
        return SOCKRACE_ADDRESS.search(self.code) is not None

    @property
    def needs_redis(self) -> bool:
        return re.search(r"^(import|from) redis\b", self.code, re.MULTILINE) is not None


def python_snippets(page: Path) -> list[Snippet]:
    snippets, lines = [], page.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            snippets.append(Snippet(page, start, "\n".join(lines[start:number - 1]) + "\n"))
            start = None
    assert start is None, f"{page.name}:{start}: a ```python block is never closed"
    return snippets


SNIPPETS = [snippet for page in PAGES for snippet in python_snippets(page)]


def localized(code: str, sockrace_port: int | None, redis_port: int | None) -> str:
    if sockrace_port is not None:
        code = SOCKRACE_ADDRESS.sub(rf"\g<1>{sockrace_port}", code)
    if redis_port is not None:
        code = REDIS_ADDRESS.sub(rf"\g<1>{redis_port}", code)
    for size, smaller in SIZES.items():
        code = code.replace(size, smaller)
    return code


def _command(snippet: Snippet, path: Path, redis_port: int | None) -> list[str]:
    if snippet.kind == "test":
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
    if snippet.kind == "scenario":
        assert redis_port is not None, "a scenario snippet runs against a redis-server"
        return [sys.executable, "-W", "error", "-m", "sockrace", "check", f"{path}:scenario",
                "--upstream", f"127.0.0.1:{redis_port}"]
    return [sys.executable, "-W", "error", str(path)]


def test_the_docs_have_python_snippets_of_every_kind() -> None:
    assert {snippet.kind for snippet in SNIPPETS} == {"program", "test", "scenario"}
    assert len(SNIPPETS) >= 6


@pytest.mark.timeout(SNIPPET_TIMEOUT_S + 30)
@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda snippet: snippet.name)
def test_every_python_snippet_runs_as_it_stands(snippet: Snippet, tmp_path: Path) -> None:
    # Top-level await is a SyntaxError in a file: a snippet a user copies must run as it stands.
    ast.parse(snippet.code, snippet.name)
    environment = dict(os.environ)
    with contextlib.ExitStack() as stack:
        sockrace_port = redis_port = None
        if snippet.needs_sockrace:
            sockrace_port = stack.enter_context(ThreadedServer()).address[1]
        if snippet.needs_redis:
            environment["PYTHONPATH"] = os.pathsep.join(
                [str(_redis_py()), *filter(None, [environment.get("PYTHONPATH")])])
            redis_port = stack.enter_context(_redis_server()).port
        path = tmp_path / ("test_snippet.py" if snippet.kind == "test" else "snippet.py")
        path.write_text(localized(snippet.code, sockrace_port, redis_port), encoding="utf-8")
        completed = subprocess.run(
            _command(snippet, path, redis_port), cwd=tmp_path if snippet.kind == "test" else ROOT,
            env=environment, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT_S, check=False)
    output = f"{snippet.name} ({snippet.kind}):\n{completed.stdout}\n{completed.stderr}"
    assert completed.returncode == 0, output
    if snippet.kind != "test":  # pytest's own plugins may warn about their configuration
        assert completed.stderr == "", output


def _redis_server() -> RedisServer:
    if find_redis_server() is None:
        _unavailable("redis-server is not installed (apt-get install redis-server)")
    try:
        return RedisServer.start()
    except RedisServerError as exc:
        _unavailable(str(exc))
        raise


def _redis_py() -> Path:
    if not installed(REDIS_PY):
        _unavailable(f"redis-py {REDIS_PY} is not installed in {site_dir(REDIS_PY)} "
                     "(python examples/redis_versions.py install)")
    return site_dir(REDIS_PY)


def test_the_placeholders_are_replaced_and_nothing_else() -> None:
    code = ('a = ("127.0.0.1", 7777)\nb = "127.0.0.1:7777"\nc = ("127.0.0.1", 6379)\nd = 77770\n'
            'range(1, 501)\n')
    assert localized(code, 4001, 4002) == ('a = ("127.0.0.1", 4001)\nb = "127.0.0.1:4001"\n'
                                           'c = ("127.0.0.1", 4002)\nd = 77770\nrange(1, 21)\n')


# ------------------------------------------------------------------ the keys of docs/json.md


@dataclass
class KeyTable:
    """One table of docs/json.md: the keys it lists (their meanings), and the keys it takes from other
    tables: `where.*` (or `*`) holds every key of the table it links to."""

    heading: str
    meanings: dict[str, str] = field(default_factory=dict)
    includes: dict[str, str] = field(default_factory=dict)  # where -> the anchor of the table


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def key_tables(text: str) -> dict[str, KeyTable]:
    """Every table whose first column is `key`, by the anchor of the heading above it."""
    tables: dict[str, KeyTable] = {}
    heading, fenced = "", False
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif fenced:
            continue
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and _cells(line)[0] == "key" and lines[number + 1].startswith("|---"):
            assert anchor(heading) not in tables, f"two key tables under {heading!r}"
            table = tables[anchor(heading)] = KeyTable(heading)
            for row in lines[number + 2:]:
                if not row.startswith("|"):
                    break
                first, *rest = _cells(row)
                keys = re.findall(r"`([^`]+)`", first)
                assert keys, f"{heading}: a row without a key: {row}"
                for key in keys:
                    if key == "*" or key.endswith(".*"):
                        link = re.search(r"\]\(#([^)]+)\)", row)
                        assert link, f"{heading}: {key} links to no table: {row}"
                        table.includes[key.removesuffix("*").removesuffix(".")] = link.group(1)
                    else:
                        assert key not in table.meanings, f"{heading}: {key} twice"
                        table.meanings[key] = rest[-1]
    for table in tables.values():
        for where, target in table.includes.items():
            assert target in tables, f"{table.heading}: {where or '*'} links to #{target}, no key table"
    return tables


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def observe(tables: dict[str, KeyTable], name: str, document: object, seen: dict[str, set[str]]) -> None:
    """Add the keys of `document`, an instance of table `name`, to seen[name]: dotted, `[]` for the
    items of a list, a data key as the table's `<...>`. The keys a `where.*` row takes from another
    table are that table's (observed there), but those this table lists itself."""
    table = tables[name]
    documented, found = table.meanings, seen.setdefault(name, set())

    def walk(value: object, path: str) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item, path + "[]")
            return
        if not isinstance(value, dict):
            return
        data_key = next((key for key in documented if key.rpartition(".")[0] == path
                         and key.rpartition(".")[2].startswith("<")), None)
        if data_key is not None:
            for item in value.values():
                found.add(data_key)
                walk(item, data_key)
            return
        own: dict[str, Any] = value
        if path in table.includes:
            own = {key: item for key, item in value.items() if _join(path, key) in documented}
            rest = {key: item for key, item in value.items() if key not in own}
            observe(tables, table.includes[path], rest, seen)
        for key, item in own.items():
            found.add(_join(path, key))
            walk(item, _join(path, key))

    walk(document, "")


def differences(tables: dict[str, KeyTable], seen: dict[str, set[str]]) -> dict[str, tuple[set[str], ...]]:
    """By table: (keys printed but not documented, keys documented but never printed)."""
    found = {name: seen.get(name, set()) for name in tables}
    return {name: (found[name] - set(table.meanings), set(table.meanings) - found[name])
            for name, table in tables.items() if found[name] != set(table.meanings)}


TABLES = key_tables(JSON_DOC.read_text(encoding="utf-8"))

# A scenario that needs no server: some calls raise, some return a value no call expects, so that a
# judged run has error types and wrong values to show.
JUDGED = '''
import asyncio

async def errors_and_wrong_values(address):
    async def call(i):
        await asyncio.sleep(0)
        if i % 3 == 0:
            raise ValueError(f"no k{i}")
        return f"v{i}" if i % 3 == 1 else f"w{i}"

    return call, (lambda i: f"v{i}")
'''


def documents(port: int, judged: Path, record: Path | None = None) -> dict[str, list[list[str]]]:
    """The commands whose `--json` documents json.md describes, by the heading of each document's table.
    `check` runs the naive client small and without deadlines: two tasks, two calls, one crossed; the
    judged scenario's run is saved to `record` (on the seeded loop: its schedule is in the record),
    which `replay` then brings back."""
    record = record or judged.with_suffix(".record.json")
    naive = ["check", "examples/sockrace_clients.py:naive", "--upstream", f"127.0.0.1:{port}",
             "--tasks", "2", "--calls", "2", "--timeout", "none", "--deadline", "10", "--json"]
    never_fails = ["check", "examples/sockrace_clients.py:reconnecting", *naive[2:]]
    return {
        "`compare --json`": [["compare", "--json", "-c", "4", "-n", "3"]],
        "`client --json`": [["client", "--json", "--port", str(port), "-c", "4", "-n", "2"]],
        "`counter --json`": [["counter", "--json", "-n", "100", "--clients", "5", "--increments", "3"]],
        "`check --json`": [naive, ["check", f"{judged}:errors_and_wrong_values", *naive[2:], "--shuffle",
                                   "--save", str(record)]],
        "`check --seeds LO-HI --json`": [[*naive, "--seeds", "1-2", "--all"]],
        "`check --replay SEED --json`": [[*naive, "--replay", "1", "--repeat", "2"]],
        "`check --shrink --json`": [[*naive, "--seeds", "1-2", "--shrink"], [*never_fails, "--shrink"]],
        "`replay FILE --json`": [["replay", str(record), "--json", "--repeat", "2"]],
    }


def printed(arguments: list[str]) -> object:
    completed = subprocess.run([sys.executable, "-W", "error", "-m", "sockrace", *arguments], cwd=ROOT,
                               capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    assert completed.returncode in (0, 1), f"sockrace {' '.join(arguments)}:\n{completed.stderr}"
    return json.loads(completed.stdout)


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The keys every command printed, by the table of json.md they belong to."""
    judged = tmp_path_factory.mktemp("scenarios") / "judged.py"
    judged.write_text(JUDGED, encoding="utf-8")
    record = judged.with_suffix(".record.json")
    keys: dict[str, set[str]] = {}
    with ThreadedServer() as server:
        for heading, runs in documents(server.address[1], judged, record).items():
            for arguments in runs:
                observe(TABLES, anchor(heading), printed(arguments), keys)
    observe(TABLES, anchor("The run record"), json.loads(record.read_text(encoding="utf-8")), keys)
    return keys


def test_json_md_has_a_table_for_every_document() -> None:
    assert {anchor(heading) for heading in documents(1, Path("judged.py"))} <= set(TABLES)
    assert {"the-run-object", "the-judged-run", "the-counts", anchor("The run record")} <= set(TABLES)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(TABLES))
def test_the_keys_json_md_lists_are_the_keys_printed(name: str, seen: dict[str, set[str]]) -> None:
    assert name in seen, f"no command printed the object of json.md's table {TABLES[name].heading!r}"
    undocumented = sorted(seen[name] - set(TABLES[name].meanings))
    never_printed = sorted(set(TABLES[name].meanings) - seen[name])
    assert (undocumented, never_printed) == ([], []), (
        f"json.md, table {TABLES[name].heading!r}: printed but not listed {undocumented}; "
        f"listed but never printed {never_printed}")


MINIATURE = """
## `thing --json`

| key | type | meaning |
|---|---|---|
| `name` | string | a name |
| `old` | int | a key the code no longer prints |
| `errors` | object | by type |
| `errors.<type>` | int | one key per type |
| `items` | list | |
| `items[].*` | [an item](#an-item) | |

## An item

| key | type | meaning |
|---|---|---|
| `size` | int | its size |
"""


def test_the_key_check_fails_both_ways() -> None:
    tables = key_tables(MINIATURE)
    keys: dict[str, set[str]] = {}
    document = {"name": "n", "new": 1, "errors": {"OSError": 2, "ValueError": 1},
                "items": [{"size": 1}, {"size": 2, "colour": "red"}]}
    observe(tables, "thing---json", document, keys)
    assert differences(tables, keys) == {"thing---json": ({"new"}, {"old"}), "an-item": ({"colour"}, set())}
    observe(tables, "thing---json", {"name": "n", "old": 0, "errors": {"X": 1}, "items": [{"size": 0}]},
            keys := {})
    assert differences(tables, keys) == {}


def test_the_counts_are_defined_as_check_report_defines_them() -> None:
    definitions: dict[str, str] = {}
    name = ""
    for line in (check_report.__doc__ or "").splitlines():
        if match := re.match(r"^    (\w+)\s{2,}(\S.*)$", line):
            name = match.group(1)
            definitions[name] = match.group(2)
        elif name and line.startswith(" " * 16) and line.strip():  # a definition's next line
            definitions[name] += " " + line.strip()
        else:
            name = ""
    assert tuple(definitions) == check_report.COUNTS

    def words(text: str) -> str:
        return " ".join(text.replace("`", "").split())

    counts = TABLES["the-counts"].meanings
    assert tuple(counts) == check_report.COUNTS
    for name, definition in definitions.items():
        assert words(counts[name]).startswith(words(definition)), name


# ------------------------------------------------------------------ the options, and a bad one


def _commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _readme_part(first: str) -> str:
    """From the README line that starts with `first` to the next command or section."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next((i for i, line in enumerate(lines[start + 1:], start + 1)
                if line.startswith(("**`sockrace ", "## "))), len(lines))
    return "\n".join(lines[start:end])


def described(command: str) -> str:
    """Where the README and docs/ describe a command (the README's Commands section opens with what every
    command takes)."""
    parts = [_readme_part("## Commands"), _readme_part(f"**`sockrace {command}")]
    if command == "server":
        parts.append(_readme_part("## Limits"))
    if command in ("check", "replay"):
        parts += [(ROOT / "docs" / page).read_text(encoding="utf-8")
                  for page in ("check.md", "when-a-check-fails.md")]
    return "\n".join(parts)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_is_named_where_its_command_is_described(command: str) -> None:
    text = described(command)
    missing = [action.option_strings for action in _commands()[command]._actions
               if action.option_strings and "--help" not in action.option_strings
               and not any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text)
                           for option in action.option_strings)]
    assert missing == [], f"sockrace {command}: options named nowhere it is described: {missing}"


@pytest.mark.parametrize("command", sorted(_commands()))
def test_an_option_a_command_does_not_know_is_reported_by_that_command(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    required = {"check": ["x.py:f", "--upstream", "127.0.0.1:1"], "proxy": ["--upstream", "127.0.0.1:1",
                                                                           "--seed", "1"],
                "replay": ["failure.json"]}
    assert main([command, *required.get(command, []), "--bogus", "-x"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"usage: sockrace {command} ")
    assert captured.err.splitlines()[-1] == f"sockrace {command}: error: unrecognized arguments: --bogus -x"
    assert "a bad command line gets the usage and `sockrace compare: error: ...`" in " ".join(
        README.read_text(encoding="utf-8").split())


def test_an_option_before_the_command_is_the_top_level_parsers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bogus", "compare"]) == EXIT_USAGE
    assert capsys.readouterr().err.splitlines()[-1] == "sockrace: error: unrecognized arguments: --bogus"



def test_the_layout_names_every_module() -> None:
    layout = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    package = ROOT / "src" / "sockrace"
    modules = [path for folder in ("", "check/", "cli/") for path in package.glob(f"{folder}*.py")
               if path.stem != "__init__"]
    assert len(modules) > 40

    def name(path: Path) -> str:  # a command's module by its path (cli/check), its stem names others too
        return f"cli/{path.stem}" if path.parent.name == "cli" else path.stem

    missing = [str(path.relative_to(package)) for path in modules
               if not re.search(rf"(?<!\w){re.escape(name(path))}\b", layout)]
    assert missing == [], f"docs/layout.md does not name {missing}"


def test_the_examples_import_sockrace_from_sockrace_check_alone() -> None:
    # One import line gives an example everything it uses of sockrace (the pytest plugin's own
    # helper aside): the package's public face, not its modules.
    imports = [(snippet.name, line) for snippet in SNIPPETS for line in snippet.code.splitlines()
               if re.match(r"\s*(from|import) sockrace\b", line)]
    assert imports
    stray = [(where, line) for where, line in imports
             if not re.match(r"\s*from sockrace\.(check|pytest_plugin) import ", line)]
    assert stray == []

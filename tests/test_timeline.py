from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest

from helpers import race_in_memory
from sockrace.cli import main
from sockrace.events import Recorder
from sockrace.outcome import RunResult
from sockrace.timeline import MAX_ROWS, colour_wanted, format_timeline, legend
from sockrace.workload import Verdict, WorkloadConfig

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SMALL = WorkloadConfig(concurrency=4, requests=3, seed=1)


async def recorded(mode: str, config: WorkloadConfig = SMALL) -> RunResult:
    return await race_in_memory(mode, config, recorder=Recorder())


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_plain_timeline_shows_every_event_within_80_columns() -> None:
    result = await recorded("unsafe")
    lines = format_timeline(result)

    assert all(len(line) <= 80 for line in lines)
    assert not any("\x1b" in line for line in lines)
    assert lines[0].startswith("unsafe (shared connection): 4 coroutines x 3 requests, 48 events")
    header = lines[1]
    assert header.split() == ["t", "(us)", "c0", "c1", "c2", "c3"]
    body = lines[3:]
    assert len(body) == len(result.events)
    starts = [header.index(f"c{c}") for c in range(4)]
    for line, event in zip(body, result.events, strict=True):
        name = f"c{event.step.coroutine}.{event.step.index}"
        # The event is printed in its coroutine's column: the name starts where the header does.
        # (An arrow pointing left may also name the owner in an earlier column.)
        assert line[starts[event.coroutine]:].startswith(name), line


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_crossed_replies_name_their_owner_and_point_at_its_column() -> None:
    result = await recorded("unsafe")
    lines = format_timeline(result)
    header = lines[1]
    crossed_lines = [line for line in lines[3:] if " got c" in line]

    assert len(crossed_lines) == result.count(Verdict.CROSSED) > 0
    for outcome in (o for o in result.outcomes if o.verdict is Verdict.CROSSED):
        assert outcome.owner is not None
        me = f"c{outcome.step.coroutine}.{outcome.step.index}"
        owner = f"c{outcome.owner.coroutine}.{outcome.owner.index}"
        (line,) = [line for line in crossed_lines if f"{me} got {owner}" in line]
        if outcome.owner.coroutine == outcome.step.coroutine:
            continue  # same column: the note alone names the owner
        owner_column = header.index(f"c{outcome.owner.coroutine}")
        if outcome.owner.coroutine > outcome.step.coroutine:
            assert line[owner_column:].startswith(f"> {owner}"), line
            assert "--" in line
        else:
            assert line[owner_column:].startswith(f"{owner} <--"), line


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_colour_only_paints_and_never_moves_anything() -> None:
    result = await recorded("unsafe")
    plain = format_timeline(result)
    coloured = format_timeline(result, colour=True)

    assert any("\x1b[1;31m" in line for line in coloured)  # crossed replies in bold red
    assert any("\x1b[32m" in line for line in coloured)  # a correct reply in green
    assert [ANSI.sub("", line) for line in coloured] == plain


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_correct_run_has_no_arrows() -> None:
    result = await recorded("locked")
    lines = format_timeline(result)

    assert sum(" ok" in line for line in lines) == 12
    assert not any("<-" in line or "->" in line or " got " in line for line in lines)


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("tty", "environ", "expected"),
    [
        (True, {}, True),
        (False, {}, False),
        (True, {"NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": ""}, True),  # no-color.org: only a non-empty value disables colour
        (False, {"NO_COLOR": "1"}, False),
    ],
)
def test_colour_only_on_a_terminal_without_no_color(
    tty: bool, environ: dict[str, str], expected: bool
) -> None:
    assert colour_wanted(FakeStream(tty), environ) is expected


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_large_run_is_summarised_not_dumped() -> None:
    result = await recorded("unsafe", WorkloadConfig(concurrency=30, requests=5, seed=2))
    lines = format_timeline(result)

    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert "summarised: showing coroutines c0-c3 of 30" in text
    assert len(lines) < MAX_ROWS + 10
    assert re.search(r"\.\.\. \d+ more rows not shown", text)
    shown = {int(c) for c in re.findall(r"\bc(\d+)\.\d+ (?:start|wrote|reading|ok|got|garbled)", text)}
    assert shown == {0, 1, 2, 3}


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_lost_requests_end_the_timeline() -> None:
    # A request that raised leaves its reply unread, another reader takes it, and the last reader
    # waits for a reply that never comes: lost at the stall. (This seed does exactly that.)
    config = WorkloadConfig(concurrency=4, requests=3, seed=5, max_yields=1)
    result = await recorded("unsafe", config)
    lost = [o.step for o in result.outcomes if o.verdict is Verdict.LOST]
    lines = format_timeline(result)

    assert lost
    ends = [line for line in lines if line.lstrip().startswith("end ")]
    assert [line.split()[1] for line in ends] == [f"c{s.coroutine}.{s.index}" for s in lost]
    assert all(line.rstrip().endswith("lost") for line in ends)
    assert any("RuntimeError" in line for line in lines)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_narrow_widths() -> None:
    result = await recorded("unsafe")
    narrow = format_timeline(result, width=50)
    assert all(len(line) <= 50 for line in narrow)
    (header,) = [line for line in narrow if line.startswith("  t (us)")]
    assert header.split() == ["t", "(us)", "c0", "c1"]
    assert "summarised: showing coroutines c0-c1 of 4" in " ".join(narrow)
    with pytest.raises(ValueError, match="a timeline needs at least 23 columns"):
        format_timeline(result, width=20)


def test_legend_fits_in_80_columns() -> None:
    assert all(len(line) <= 80 for line in legend())
    assert "crossed" in " ".join(legend())


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_an_unrecorded_run_says_so() -> None:
    result = await race_in_memory("locked", SMALL)
    assert format_timeline(result)[1] == "no events were recorded for this run"


def test_timeline_module_does_not_import_asyncio() -> None:
    code = "import sys, sockrace.timeline; sys.exit('asyncio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


TITLE = re.compile(r"^([\w-]+) \((.+)\): 4 coroutines x 3 requests, \d+ events$", re.MULTILINE)


@pytest.mark.timeout(60)
def test_compare_timeline_prints_one_timeline_per_run(capsys: pytest.CaptureFixture[str]) -> None:
    # With --json the timelines go to stderr, and the JSON says which runs there were.
    assert main(["compare", "-c", "4", "-n", "3", "--timeline", "--json"]) == 0
    out, err = capsys.readouterr()

    runs = [(m["mode"], s["name"]) for s in json.loads(out)["scenarios"] for m in s["modes"]]
    assert TITLE.findall(err) == runs
    assert len(runs) >= 2 * len(("unsafe", "locked"))
    assert "\x1b" not in err  # captured, so not a terminal: no colour
    assert all(len(line) <= 80 for line in err.splitlines())
    assert err.startswith(legend()[0])


@pytest.mark.timeout(60)
def test_compare_timeline_comes_between_the_header_and_the_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert main(["compare", "-c", "4", "-n", "3", "--timeline", "--modes", "unsafe,locked"]) == 0
    out = capsys.readouterr().out

    assert "\x1b" not in out
    assert out.startswith("sockrace compare: 4 coroutines x 3 requests")
    timelines = out[out.index(legend()[0]) : out.index("\nscenario ")]  # the table follows them
    titles = TITLE.findall(timelines)
    assert ("unsafe", "shared connection") in titles
    assert ("locked", "shared connection") in titles
    assert all(len(line) <= 80 for line in timelines.splitlines())


@pytest.mark.timeout(30)
def test_client_timeline_against_a_real_server(capsys: pytest.CaptureFixture[str]) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "sockrace", "server", "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        announced = server.stdout.readline()
        port = re.search(r"listening on [\d.]+:(\d+)", announced)
        assert port, announced
        argv = ["client", "--port", port.group(1), "-c", "3", "-n", "2", "--mode", "locked", "--timeline"]
        code = main(argv)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
    out = capsys.readouterr().out

    assert code == 0
    assert "locked (shared connection): 3 coroutines x 2 requests, 24 events" in out
    assert sum(line.rstrip().endswith(" ok") for line in out.splitlines()) == 6
    assert out.index("24 events") < out.index("\nscenario ")  # timeline first, then the table

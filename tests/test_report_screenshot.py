"""Render the HTML reports (compare's and a check's) in headless Chromium and check that the
screenshots show something.

Skipped when Chromium is absent, except under CI (CI=true), where `.ci/run` installs it: there a
missing browser fails the test instead of hiding it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import race_in_memory, value
from sockrace.check import HammerResult
from sockrace.check.decisions import CallDecision, Decisions, Interrupt
from sockrace.check.oracle import CallRecord, End, judge
from sockrace.check_html import render_check
from sockrace.client import STRATEGIES
from sockrace.events import Recorder
from sockrace.html_report import render
from sockrace.outcome import RunResult
from sockrace.workload import Verdict, WorkloadConfig

WINDOW = (1000, 700)
# Chromium's own startup is the slow part (a few seconds on a cold CI machine).
CHROMIUM_TIMEOUT_S = 60


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    pixels: list[tuple[int, int, int]]  # row by row, alpha dropped


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> Image:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes) with the stdlib only."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    offset, idat = 8, bytearray()
    width = height = channels = 0
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or colour not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG: depth {depth}, colour {colour}, interlace {interlace}")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        start = y * (stride + 1)
        method, row = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if method == 1:
            for i in range(channels, stride):
                row[i] = (row[i] + row[i - channels]) & 0xFF
        elif method == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, previous, strict=True))
        elif method == 3:
            for i in range(stride):
                left = row[i - channels] if i >= channels else 0
                row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif method == 4:
            for i in range(stride):
                left = row[i - channels] if i >= channels else 0
                up_left = previous[i - channels] if i >= channels else 0
                row[i] = (row[i] + _paeth(left, previous[i], up_left)) & 0xFF
        elif method != 0:
            raise ValueError(f"bad PNG filter {method}")
        pixels.extend(
            (row[i], row[i + 1], row[i + 2]) for i in range(0, stride, channels)
        )
        previous = row
    return Image(width, height, pixels)


def test_decode_png_reads_what_it_should() -> None:
    # A 2x4 RGB image whose rows use the Sub, Up, Paeth and Average filters (worked out by hand).
    rows = bytes([
        1, 255, 0, 0, 1, 255, 0,  # Sub: red, green
        2, 1, 0, 255, 255, 0, 255,  # Up: blue, white
        4, 10, 20, 31, 41, 51, 30,  # Paeth: (10, 20, 30), (40, 50, 60)
        3, 252, 248, 244, 240, 235, 231,  # Average: (1, 2, 3), (4, 5, 6)
    ])
    ihdr = struct.pack(">IIBBBBB", 2, 4, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"".join([
        b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", ihdr), chunk(b"IDAT", zlib.compress(rows)), chunk(b"IEND", b""),
    ])
    image = decode_png(png)
    assert (image.width, image.height) == (2, 4)
    assert image.pixels == [
        (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255),
        (10, 20, 30), (40, 50, 60), (1, 2, 3), (4, 5, 6),
    ]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI: .ci/run should have installed Debian's chromium")
        pytest.skip("chromium is not installed")
    return path


async def small_runs() -> list[RunResult]:
    config = WorkloadConfig(concurrency=4, requests=3, seed=1)
    return [await race_in_memory(mode, config, recorder=Recorder()) for mode in STRATEGIES]


def screenshot(browser: str, document: str, tmp_path: Path) -> Image:
    """`document` as headless Chromium shows it in a WINDOW-sized window."""
    page = tmp_path / "report.html"
    page.write_text(document, encoding="utf-8")
    shot = tmp_path / "shot.png"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    assert shot.exists(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return decode_png(shot.read_bytes())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = chromium()
    results = asyncio.run(small_runs())
    assert any(r.count(Verdict.CROSSED) for r in results)  # so that red arrows must be on the page
    image = screenshot(browser, render(results), tmp_path)
    assert (image.width, image.height) == WINDOW
    white = sum(1 for p in image.pixels if min(p) >= 245)
    # A blank page is all white; the report's lanes, bars and text cover far more than this.
    assert white < 0.97 * len(image.pixels)
    assert len(set(image.pixels)) > 50  # text antialiasing, lanes, bars: many distinct colours
    red = sum(1 for r, g, b in image.pixels if r > 180 and g < 80 and b < 80)
    assert red > 100  # the crossed-reply arrows and dots are drawn in red


def check_run() -> HammerResult:
    """Two tasks of a check, built from records: call 0 gives up on its deadline and call 1 gets its
    reply, call 2 is cancelled by task.cancel() and call 3 gets that reply, call 4 hangs until the run
    gives up on it."""
    ms = 1_000_000
    lanes = (
        (CallDecision(0, 0, 0, 0, Interrupt.DEADLINE, 0.0, 2.0),
         CallDecision(1, 0, 1, 0, Interrupt.NONE, 0.0), CallDecision(4, 0, 2, 0, Interrupt.NONE, 0.0)),
        (CallDecision(2, 1, 0, 0, Interrupt.CANCEL, 0.0, 1.5), CallDecision(3, 1, 1, 0, Interrupt.NONE, 0.0)),
    )
    records = [
        CallRecord(0, End.DEADLINE, 0, 3 * ms),
        CallRecord(1, End.RETURNED, 3 * ms, 9 * ms, value(0)),
        CallRecord(2, End.CANCELLED, 1 * ms, 3 * ms),
        CallRecord(3, End.RETURNED, 3 * ms, 8 * ms, value(2)),
        CallRecord(4, End.STUCK, 9 * ms, 20 * ms),
    ]
    decisions = Decisions(seed=0, lanes=lanes, calibrate=False)
    outcomes = tuple(judge(decisions, records, [value(i) for i in range(len(records))]))
    return HammerResult("check", outcomes, decisions, elapsed_s=0.02)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_check_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = chromium()
    result = check_run()
    assert (result.crossed, result.stuck) == (2, 1)  # so that red arrows must be on the page
    document = render_check(result, heading="sockrace check x.py:client: 2 tasks", faults="delay 1-5 ms",
                            story=result.explain(), replay="sockrace check x.py:client --seed 0")
    image = screenshot(browser, document, tmp_path)
    assert (image.width, image.height) == WINDOW
    white = sum(1 for p in image.pixels if min(p) >= 245)
    assert white < 0.97 * len(image.pixels)  # a blank page is all white
    assert len(set(image.pixels)) > 50  # text antialiasing, lanes, bars: many distinct colours
    red = sum(1 for r, g, b in image.pixels if r > 180 and g < 80 and b < 80)
    assert red > 100  # the crossed calls' arrows and dots, the leaked calls' rings, "failed"

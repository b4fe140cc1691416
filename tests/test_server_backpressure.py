"""Backpressure: a client that pipelines a million requests and reads nothing cannot grow the server.

The server runs in its own process so that its memory can be read honestly from /proc: VmHWM is the
peak resident set over the whole life of the process, so no spike between two samples goes unseen.
"""

from __future__ import annotations

import sys

import anyio
import pytest

from helpers import LineClient, ServerProcess

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status"),
]

REQUESTS = 1_000_000
KEY = b"k" * 32  # 37-byte requests: 37 MB in all, far more than the kernel's socket buffers hold
VALUE = b"v" * 1000  # every reply is 1 KB: answering everything at once would take a gigabyte
REPLY = b"OK " + VALUE + b"\n"
# What the server may grow by: its socket-side buffers are a few hundred KB (one read, one reply
# batch, the transport's high-water mark); the rest is headroom for the allocator. An unbounded
# server grows by the replies it owes, up to a gigabyte here.
MAX_GROWTH = 32 * 1024 * 1024


async def requests_answered(monitor: LineClient) -> int:
    reply = await monitor.request(b"STATS\n")
    fields = dict(word.split("=") for word in reply.decode().split()[1:])
    return int(fields["requests"])


async def wait_until_server_stops_reading(monitor: LineClient, sent_all: anyio.Event) -> int:
    """Poll STATS until the greedy connection makes no progress three polls in a row (or sent it all)."""
    polls, previous, unchanged = 0, -1, 0
    while unchanged < 3 and not sent_all.is_set():
        answered = await requests_answered(monitor) - polls  # not counting this STATS itself
        polls += 1
        unchanged = unchanged + 1 if answered == previous else 0
        previous = answered
        await anyio.sleep(0.1)
    return previous


async def read_every_reply(conn: LineClient) -> int:
    """Read REQUESTS replies, checking every byte; return how many arrived."""
    expected_bytes = REQUESTS * len(REPLY)
    tiled = REPLY * (1 + (1 << 20) // len(REPLY) + 1)  # any window of up to 1 MiB of the reply stream
    received = 0
    while received < expected_bytes:
        chunk = await conn.stream.receive(1 << 20)
        offset = received % len(REPLY)
        assert chunk == tiled[offset : offset + len(chunk)], f"wrong bytes at offset {received}"
        received += len(chunk)
    assert received == expected_bytes
    return received // len(REPLY)


async def test_one_client_pipelining_a_million_requests_without_reading_cannot_grow_the_server() -> None:
    async with ServerProcess() as server:
        monitor = await LineClient.connect(server.address)
        assert await monitor.request(b"SET " + KEY + b" " + VALUE + b"\n") == b"OK\n"
        baseline = server.status("VmHWM")

        greedy = await LineClient.connect(server.address)
        sent_all = anyio.Event()

        async def send_everything() -> None:
            batch = b"GET " + KEY + b"\n"
            for _ in range(REQUESTS // 10_000):
                await greedy.send(batch * 10_000)
            sent_all.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send_everything)
            stalled_at = await wait_until_server_stops_reading(monitor, sent_all)
            # The server stopped reading the greedy connection: the client cannot push everything.
            assert not sent_all.is_set()
            assert 0 < stalled_at < REQUESTS // 10

            # Meanwhile everybody else is served normally.
            async def bystander(number: int) -> None:
                async with await anyio.connect_tcp(*server.address) as stream:
                    conn = LineClient(stream)
                    for i in range(50):
                        text = b"%d.%d" % (number, i)
                        assert await conn.request(b"ECHO " + text + b"\n") == b"OK " + text + b"\n"

            async with anyio.create_task_group() as bystanders:
                for number in range(20):
                    bystanders.start_soon(bystander, number)
            growth_while_stalled = server.status("VmHWM") - baseline

            # Now the greedy client reads: every one of its million requests gets its reply.
            assert await read_every_reply(greedy) == REQUESTS
        growth = server.status("VmHWM") - baseline
        await greedy.aclose()
        await monitor.aclose()
    print(f"\nstalled after {stalled_at} requests; peak RSS growth {growth_while_stalled / 2**20:.1f} MiB "
          f"while stalled, {growth / 2**20:.1f} MiB over {REQUESTS} requests")
    assert growth_while_stalled < MAX_GROWTH
    assert growth < MAX_GROWTH
    assert server.returncode == 0


async def test_one_read_of_many_small_requests_does_not_build_a_huge_reply_batch() -> None:
    """Amplification: 6-byte requests, 4 KB replies. One 64 KiB read holds 10,922 requests, whose
    replies (45 MB) must leave in bounded batches, each drained, not as one joined buffer."""
    value = b"v" * 4096
    requests = 20_000
    async with ServerProcess() as server:
        conn = await LineClient.connect(server.address)
        assert await conn.request(b"SET k " + value + b"\n") == b"OK\n"
        baseline = server.status("VmHWM")
        await conn.send(b"GET k\n" * requests)  # 120 KB: the server takes it in one or two reads
        expected = (b"OK " + value + b"\n") * requests
        received = bytearray()
        while len(received) < len(expected):
            received += await conn.stream.receive(1 << 20)
        assert received == expected
        growth = server.status("VmHWM") - baseline
        await conn.aclose()
    print(f"\npeak RSS growth {growth / 2**20:.1f} MiB for {len(expected) / 2**20:.0f} MiB of replies")
    assert growth < MAX_GROWTH

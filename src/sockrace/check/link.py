"""One proxied connection: the client's socket, its own upstream connection, and a pump per direction.

A pump reads what its source socket received, hands it to the direction's `Forwarder` (forwarding.py,
the plan's one executor) and does what the unit says: waits, writes its pieces, or resets. A
direction without faults is relayed in the socket callbacks instead (Endpoint.relay_to): no task runs
per read, and its pump only waits for the end. A pump holds at most one unit (MAX_UNIT_BYTES) and
waits for the other socket to drain below WRITE_HIGH_WATER after every write.

Ends: an EOF from the client is passed on (the upstream may still answer, as after `shutdown(SHUT_WR)`);
an EOF from the upstream ends the connection once what it sent has been forwarded; an error on
either socket, a reset fault or closing the proxy abort both sockets. Every end is in the fault log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sockrace.check.endpoint import READ_CAPACITY, WRITE_HIGH_WATER, End, Endpoint
from sockrace.check.faultlog import FaultLog
from sockrace.check.faults import COALESCE_LIMIT_BYTES, Direction, DirectionPlan, Faults
from sockrace.check.forwarding import Forwarder, Unit
from sockrace.check.pacing import Pacer, follow

MAX_UNIT_BYTES: Final = COALESCE_LIMIT_BYTES + READ_CAPACITY  # the last read may push a unit over the limit
# A direction's bytes in the proxy: its receive buffer, the unit in hand, and the sending transport's
# buffer (which may exceed the high-water mark by the one write that crossed it).
MAX_BUFFERED_PER_DIRECTION: Final = READ_CAPACITY + 2 * MAX_UNIT_BYTES + WRITE_HIGH_WATER
MAX_BUFFERED_PER_CONNECTION: Final = 2 * MAX_BUFFERED_PER_DIRECTION
CLOSE_GRACE_S: Final = 2.0  # how long a graceful close may flush to a slow reader before it is aborted


@dataclass(frozen=True, slots=True)
class FlowStatistics:
    received: int  # bytes read from the source socket
    delivered: int  # bytes handed to the destination socket
    buffered: int  # bytes in the proxy now: receive buffer + unit in hand + destination's send buffer
    reading_paused: bool  # the proxy reads no more from the source until the destination drains


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    connection: int
    to_server: FlowStatistics
    to_client: FlowStatistics


class Flow:
    """One direction of one connection: its plan and executor, its source and destination, its counters."""

    def __init__(self, plan: DirectionPlan, source: Endpoint, destination: Endpoint,
                 pacer: Pacer | None) -> None:
        self.plan = plan
        self.forwarder = Forwarder(plan)
        self.pacer = pacer
        self.direction = plan.direction
        self.source = source
        self.destination = destination
        self.received = 0
        self.delivered = 0
        self.in_hand = 0

    def relayed(self, data: bytes) -> None:
        self.received += len(data)
        self.delivered += len(data)
        if self.pacer is not None:
            self.pacer.wrote(self.plan.connection, self.direction, data)

    def statistics(self) -> FlowStatistics:
        buffered = self.source.receiving + self.in_hand + self.destination.sending
        return FlowStatistics(self.received, self.delivered, buffered, self.source.reading_paused)


class Link:
    """One proxied connection: the client's socket, the upstream socket once connected, the flows."""

    def __init__(self, number: int, client: Endpoint) -> None:
        self.number = number
        self.client = client
        self.upstream: Endpoint | None = None
        self.flows: tuple[Flow, Flow] | None = None

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return (self.client,) if self.upstream is None else (self.client, self.upstream)

    def start_flows(self, upstream: Endpoint, faults: Faults, seed: int,
                    pacer: Pacer | None) -> tuple[Flow, Flow]:
        self.upstream = upstream
        self.flows = (
            Flow(DirectionPlan(faults, seed, self.number, Direction.TO_SERVER), self.client, upstream, pacer),
            Flow(DirectionPlan(faults, seed, self.number, Direction.TO_CLIENT), upstream, self.client, pacer),
        )
        return self.flows

    def server_owes(self) -> bool:
        """Whether this connection waits on the server, not on the client: the upstream connect is
        under way; bytes are in the proxy on their way (a delay, a coalescing window) or wait for the
        server to read them; the server has not spoken yet (it may speak first); or the client spoke
        last (requests forwarded, nothing back since). Bytes waiting for the client to read them are
        the client's turn."""
        client, upstream = self.client, self.upstream
        if upstream is None:
            return not client.lost
        if client.lost or upstream.lost:
            return False
        if self.flows is not None:
            to_server, to_client = self.flows
            if (to_server.in_hand or client.receiving or upstream.sending
                    or to_client.in_hand or upstream.receiving):
                return True
        return upstream.last_in == 0 or client.last_in > upstream.last_in

    def statistics(self) -> ConnectionStatistics:
        idle = FlowStatistics(0, 0, self.client.receiving, self.client.reading_paused)
        if self.flows is None:
            return ConnectionStatistics(self.number, idle, FlowStatistics(0, 0, 0, False))
        return ConnectionStatistics(self.number, self.flows[0].statistics(), self.flows[1].statistics())


class Pumps:
    """The pumps of every link of one proxy, and what they are served with: the upstream and how long
    its connect may take, the faults and seed the flows are planned from, the pacer, the fault log,
    and whether the faults have begun (`faulting`: until then a read goes on as it came, drawing
    nothing of the plans)."""

    def __init__(self, upstream: tuple[str, int], connect_timeout_s: float, faults: Faults, seed: int,
                 pacer: Pacer | None, log: FaultLog, new_endpoint: Callable[[], Endpoint], *,
                 faulting: bool) -> None:
        self.upstream = upstream
        self.connect_timeout_s = connect_timeout_s
        self.faults = faults
        self.seed = seed
        self.pacer = pacer
        self.log = log
        self.new_endpoint = new_endpoint
        self.faulting = faulting

    async def serve(self, link: Link, ended: Callable[[Link], None]) -> None:
        """Connect the link upstream and pump both ways until it ends; `ended(link)` once both its
        sockets are closed, then the end is logged ("close")."""
        how = "cancelled"
        try:
            upstream = await self._connect(link)
            if upstream is None:
                how = "refused"
                return
            end = await self._run_flows(*link.start_flows(upstream, self.faults, self.seed, self.pacer))
            if end in (End.SOURCE_LOST, End.DESTINATION_LOST):
                self._note_losses(link)
            how = end.value
            if end is End.EOF:
                for endpoint in link.endpoints:
                    endpoint.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_GRACE_S):
                        await asyncio.wait([endpoint.closed for endpoint in link.endpoints])
        finally:
            for endpoint in link.endpoints:
                endpoint.abort()
            await asyncio.wait([endpoint.closed for endpoint in link.endpoints])
            ended(link)
            moved = {flow.direction.value: flow.delivered for flow in link.flows or ()}
            self.log.note(link.number, None, 0, "close", how=how, **moved)

    async def _connect(self, link: Link) -> Endpoint | None:
        host, port = self.upstream
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, upstream = await asyncio.get_running_loop().create_connection(
                    self.new_endpoint, host, port)
        except OSError as exc:
            reason = (f"no answer within {self.connect_timeout_s:g} s" if isinstance(exc, TimeoutError)
                      else os.strerror(exc.errno) if exc.errno else str(exc))
            self.log.note(link.number, None, 0, "refused", upstream=f"{host}:{port}", error=reason)
            link.client.close()
            return None
        return upstream

    def _note_losses(self, link: Link) -> None:
        for side, endpoint in zip(("client", "upstream"), link.endpoints, strict=False):
            if endpoint.lost:
                error = endpoint.error
                self.log.note(link.number, None, 0, "lost", side=side,
                              error=(error.strerror or repr(error)) if isinstance(error, OSError)
                              else repr(error) if error else "closed")

    async def _run_flows(self, to_server: Flow, to_client: Flow) -> End:
        """Pump both directions until the connection ends; EOF when it ended cleanly.

        An EOF from the client is passed on and the upstream's answer still forwarded; any other end
        of either direction ends the connection.
        """
        server_pump = asyncio.create_task(self.pump(to_server))
        client_pump = asyncio.create_task(self.pump(to_client))
        try:
            done, _ = await asyncio.wait((server_pump, client_pump), return_when=asyncio.FIRST_COMPLETED)
            if done == {server_pump} and server_pump.result() is End.EOF:
                to_server.destination.write_eof()
                return await client_pump
            ends = {pump.result() for pump in done}
            return next(end for end in End if end in ends)
        finally:
            for pump in (server_pump, client_pump):
                pump.cancel()
            await asyncio.gather(server_pump, client_pump, return_exceptions=True)

    async def pump(self, flow: Flow) -> End:
        source, pacer = flow.source, flow.pacer
        if pacer is not None and pacer.replaying:
            # A replay writes what the tape holds, then relays the rest as it comes, without faults.
            end = await follow(pacer, flow.plan.connection, flow.direction, source, flow.destination,
                               flow.relayed)
            if end is not None:
                if end is End.EOF:
                    self.log.note(flow.plan.connection, flow.direction, flow.received, "eof")
                return end
        if not flow.plan.active or (pacer is not None and pacer.replaying):
            relay_end = await source.relay_to(flow.destination, flow.relayed)
            if relay_end is End.EOF:
                self.log.note(flow.plan.connection, flow.direction, flow.received, "eof")
            return relay_end
        while True:
            chunk = await source.read()
            if not chunk:
                if source.lost:
                    return End.SOURCE_LOST
                self.log.note(flow.plan.connection, flow.direction, flow.received, "eof")
                return End.EOF
            flow.received += len(chunk)
            end = await self._apply(flow, chunk)
            if end is not None:
                return end

    async def _apply(self, flow: Flow, chunk: bytes) -> End | None:
        """Forward the unit this read begins (this read, or more when the plan coalesces) as the
        plan decides, or the read as it came while the faults have not begun."""
        if not self.faulting:
            return await self._forward(flow, chunk)
        source, forwarder = flow.source, flow.forwarder
        arrived_at = source.last_arrival
        unit = forwarder.take(chunk)
        deadline = arrived_at + forwarder.window_s
        while unit is None:  # gathering: until the target is reached, the window closes or the source ends
            flow.in_hand = forwarder.in_hand
            chunk = await source.read(deadline)
            if chunk:
                flow.received += len(chunk)
            unit = forwarder.take(chunk) if chunk else forwarder.flush()
        return await self._deliver(flow, unit, arrived_at)

    async def _deliver(self, flow: Flow, unit: Unit, arrived_at: float) -> End | None:
        """Write one unit's pieces when its plan says, then reset the connection if it says so."""
        delivery = unit.delivery
        flow.in_hand = len(unit.data)
        for decision in delivery.decisions:
            if decision.fault != "reset":
                self.log.decided(decision)
        if delivery.delay_ms:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, arrived_at + delivery.delay_ms / 1000 - loop.time()))
        destination, pacer = flow.destination, flow.pacer
        for pause_ms, piece in unit.pieces():
            if pause_ms is not None:
                await asyncio.sleep(pause_ms / 1000)
            if not destination.write(piece):
                return End.DESTINATION_LOST
            if pacer is not None:
                pacer.wrote(flow.plan.connection, flow.direction, piece)
            flow.delivered += len(piece)
            flow.in_hand -= len(piece)
            if not await destination.drain():
                return End.DESTINATION_LOST
        flow.in_hand = 0
        if not delivery.reset:
            return None
        for decision in delivery.decisions:
            if decision.fault == "reset":
                self.log.decided(decision)
        if pacer is not None:
            pacer.reset(flow.plan.connection, flow.direction)
        flow.source.close(rst=True)
        destination.close(rst=True)
        return End.RESET

    async def _forward(self, flow: Flow, chunk: bytes) -> End | None:
        """Write one read on unchanged, as a direction without faults would."""
        destination = flow.destination
        if not destination.write(chunk):
            return End.DESTINATION_LOST
        if flow.pacer is not None:
            flow.pacer.wrote(flow.plan.connection, flow.direction, chunk)
        flow.delivered += len(chunk)
        return None if await destination.drain() else End.DESTINATION_LOST

"""cocotb driver and monitor for Amaranth ``lib.stream`` ports, and a small testbench.

Amaranth flattens a stream port ``i`` into ``i__valid``, ``i__ready`` and
``i__payload`` (a flat vector, first struct field in the low bits; see
:mod:`sim.payload`). Both classes act at the falling edge and sample at
``ReadOnly`` of the same half-cycle, so a transfer is recorded exactly when
``valid`` and ``ready`` are both high at the following rising edge.
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


__all__ = ["StreamDriver", "StreamMonitor", "StreamTestbench", "reset_dut"]


async def reset_dut(dut, cycles=2):
    """Hold ``rst`` for ``cycles`` rising edges; release it at the next falling edge."""
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


class StreamDriver:
    """Drive payloads into the stream port ``prefix`` of ``dut``.

    ``stall`` is the probability of a cycle with ``valid`` low before each payload;
    once ``valid`` is high it stays high, with the same payload, until accepted.
    """

    def __init__(self, dut, prefix, clk, *, stall=0.0, seed=0):
        self._valid = getattr(dut, f"{prefix}__valid")
        self._ready = getattr(dut, f"{prefix}__ready")
        self._payload = getattr(dut, f"{prefix}__payload")
        self._clk = clk
        self._stall = stall
        self._rng = random.Random(seed)
        self._valid.value = 0
        self.sent = 0

    async def send(self, payloads):
        valid, ready, data, clk = self._valid, self._ready, self._payload, self._clk
        for payload in payloads:
            while self._stall and self._rng.random() < self._stall:
                await FallingEdge(clk)
                valid.value = 0
            while True:
                await FallingEdge(clk)
                valid.value = 1
                data.value = int(payload)
                await ReadOnly()
                if ready.value:
                    break
            self.sent += 1
        await FallingEdge(clk)
        valid.value = 0


class StreamMonitor:
    """Collect payloads from the stream port ``prefix`` of ``dut``, applying backpressure.

    ``backpressure`` is the probability that ``ready`` is low in a cycle. Checks
    the stream rule on the way: once ``valid`` is high, it and the payload hold
    until ``ready``.
    """

    def __init__(self, dut, prefix, clk, *, backpressure=0.0, seed=1):
        self._valid = getattr(dut, f"{prefix}__valid")
        self._ready = getattr(dut, f"{prefix}__ready")
        self._payload = getattr(dut, f"{prefix}__payload")
        self._prefix = prefix
        self._clk = clk
        self._backpressure = backpressure
        self._rng = random.Random(seed)
        self._ready.value = 0
        self.received = []

    async def receive(self, count, *, max_cycles):
        valid, ready_sig, data, clk = self._valid, self._ready, self._payload, self._clk
        held = None
        for cycle in range(max_cycles):
            if len(self.received) >= count:
                break
            await FallingEdge(clk)
            ready = not (self._backpressure and self._rng.random() < self._backpressure)
            ready_sig.value = int(ready)
            await ReadOnly()
            is_valid = bool(valid.value)
            if held is not None:
                assert is_valid and data.value.to_unsigned() == held, (
                    f"{self._prefix}: payload dropped or changed before ready "
                    f"(held {held:#x}) at cycle {cycle}")
                held = None
            if is_valid:
                payload = data.value.to_unsigned()
                if ready:
                    self.received.append(payload)
                else:
                    held = payload
        else:
            raise AssertionError(f"only {len(self.received)} of {count} outputs "
                                 f"after {max_cycles} cycles")
        await FallingEdge(clk)
        ready_sig.value = 0
        return self.received


class StreamTestbench:
    """A clock, a reset, a driver on ``i`` and a monitor on ``o``.

    Usage::

        tb = StreamTestbench(dut, stall=0.2, backpressure=0.2)
        await tb.reset()
        outputs = await tb.transfer(payloads)
    """

    def __init__(self, dut, *, stall=0.0, backpressure=0.0, seed=0,
                 input_port="i", output_port="o"):
        self.dut = dut
        self.clk = dut.clk
        Clock(self.clk, 10, unit="ns").start()
        self.driver = StreamDriver(dut, input_port, self.clk, stall=stall, seed=seed)
        self.monitor = StreamMonitor(dut, output_port, self.clk,
                                     backpressure=backpressure, seed=seed + 1)

    async def reset(self, cycles=2):
        await reset_dut(self.dut, cycles)

    async def transfer(self, payloads, count=None, *, max_cycles=None):
        """Send every payload and return ``count`` (default: as many) outputs."""
        payloads = list(payloads)
        count = len(payloads) if count is None else count
        if max_cycles is None:
            max_cycles = 100 + 20 * (len(payloads) + count)
        send = cocotb.start_soon(self.driver.send(payloads))
        outputs = await self.monitor.receive(count, max_cycles=max_cycles)
        await send
        return outputs

"""Amaranth-simulator helpers for fast unit tests (Amaranth 0.5 async testbenches).

:func:`run_stream` pushes payloads through a component with one ``i`` input
stream and one ``o`` output stream, optionally with random stalls on the input
and random backpressure on the output, and returns every output payload. The
stimulus and the checker are two separate testbenches, as in Glasgow's tests.
"""

import random

from amaranth.hdl import Value
from amaranth.sim import Simulator


__all__ = ["run_stream", "send_stream", "output_timing"]


def _bits(payload):
    """The payload as a plain value, whether it is a signal or a layout view."""
    return Value.cast(payload)


async def send_stream(ctx, port, payloads, *, stall=0.0, rng=None):
    """Send ``payloads`` (flat integers) on the stream ``port`` from a testbench.

    Before each payload, ``valid`` stays low for a random number of cycles (each
    cycle with probability ``stall``, drawn from ``rng``); once raised, ``valid``
    and the payload hold until ``ready``. ``valid`` is low again at the end.
    """
    for payload in payloads:
        while stall and rng.random() < stall:
            ctx.set(port.valid, 0)
            await ctx.tick()
        ctx.set(port.valid, 1)
        ctx.set(_bits(port.payload), int(payload))
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


def run_stream(component, payloads, *, count=None, stall=0.0, backpressure=0.0, seed=0,
               max_cycles=None, vcd=None, cycle_counter=None):
    """Send ``payloads`` (flat integers) into ``component.i``; return ``count`` outputs.

    Parameters
    ----------
    count : int, optional
        How many outputs to collect (default: one per input).
    stall : float
        Probability that the source leaves ``i.valid`` low in a cycle before a
        payload (it never drops ``valid`` once raised).
    backpressure : float
        Probability that ``o.ready`` is low in a cycle.
    max_cycles : int, optional
        Fail instead of hanging if the outputs have not all arrived by then.
    vcd : str, optional
        Write a waveform file.
    cycle_counter : list, optional
        If given, the number of clock cycles simulated is appended to it.

    Also checks the output stream's rule: once ``o.valid`` is high, it and the
    payload hold until ``o.ready``.
    """
    payloads = [int(p) for p in payloads]
    count = len(payloads) if count is None else count
    if max_cycles is None:
        max_cycles = 100 + 20 * (len(payloads) + count)
    rng_in = random.Random(seed)
    rng_out = random.Random(seed + 1)
    outputs = []
    dut = component

    async def source(ctx):
        await send_stream(ctx, dut.i, payloads, stall=stall, rng=rng_in)

    async def sink(ctx):
        held = None
        cycles = 0
        while len(outputs) < count:
            ready = not (backpressure and rng_out.random() < backpressure)
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, _bits(dut.o.payload))
            if held is not None:
                assert valid and payload == held, (
                    f"output stream dropped or changed a payload before ready: "
                    f"held {held:#x}, then valid={valid} payload={payload:#x}")
            held = None
            if valid and ready:
                outputs.append(payload)
            elif valid:
                held = payload
            cycles += 1
            assert cycles <= max_cycles, (
                f"only {len(outputs)} of {count} outputs after {max_cycles} cycles")
        if cycle_counter is not None:
            cycle_counter.append(cycles)

    sim = Simulator(component)
    sim.add_clock(1e-8)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return outputs


def output_timing(component, payloads, *, cycles=None):
    """Feed one payload per cycle with ``o.ready`` high; return ``[(cycle, payload)]`` of outputs.

    ``cycle`` counts ticks from the first input transfer (cycle 0), so a unit with
    latency L and full throughput gives outputs at cycles L, L+1, ... Fails if
    ``i.ready`` ever drops (it must not, with no backpressure).
    """
    payloads = [int(p) for p in payloads]
    cycles = len(payloads) + 16 if cycles is None else cycles
    seen = []
    dut = component

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for cycle in range(cycles):
            ctx.set(dut.i.valid, cycle < len(payloads))
            if cycle < len(payloads):
                ctx.set(_bits(dut.i.payload), payloads[cycle])
            _, _, ready, valid, payload = await ctx.tick().sample(
                dut.i.ready, dut.o.valid, _bits(dut.o.payload))
            assert ready, f"i.ready low in cycle {cycle} with no backpressure"
            if valid:
                seen.append((cycle, payload))

    sim = Simulator(component)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return seen

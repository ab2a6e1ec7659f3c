"""The life of an instruction in one execution unit: fetch, wait for tokens, run, signal."""

from amaranth.hdl import Module, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa import Instruction


__all__ = ["InstructionControl", "settled"]


def settled(m, value, name):
    """``value``, a function of a unit's current instruction, in a register that follows it
    every cycle. The instruction is stable from ``start`` on, and a unit reads these only
    after its range check is done (``count + 3`` or more cycles later), so the register
    then holds the current instruction's value; no comparator or state machine waits for
    a decoder, a multiplexer and a subtraction behind the instruction register (such
    chains were the ULX3S core's critical paths: into the compute unit's weight sequencer,
    14.2 ns at 75 MHz; into the store unit's row address, 12.0 ns at 90 MHz)."""
    reg = Signal(Value.cast(value).shape(), name=name)
    m.d.sync += reg.eq(value)
    return reg


class InstructionControl(wiring.Component):
    """Takes one instruction at a time from the unit's queue and sequences it.

    1. **fetch**: take the next instruction from ``insn`` and hold it on ``current``;
    2. **wait**: until every token it pops (``pop_prev``, ``pop_next`` in its header)
       is available, then consume them (``prev_take``/``next_take``) and pulse
       ``start``;
    3. **run**: until the unit's datapath pulses ``done`` (at least one cycle after
       ``start``), then pulse the tokens it pushes (``push_prev``, ``push_next``)
       and go back to fetch.

    ``waiting`` is high in the wait state (blocked on tokens), ``busy`` from start
    to done, ``empty`` while there is no instruction to fetch.
    """

    def __init__(self):
        super().__init__({
            "insn": In(stream.Signature(Instruction)),
            "current": Out(Instruction),
            "start": Out(1),
            "done": In(1),
            "busy": Out(1),
            "waiting": Out(1),
            "empty": Out(1),
            "prev_available": In(1),
            "prev_take": Out(1),
            "next_available": In(1),
            "next_take": Out(1),
            "push_prev": Out(1),
            "push_next": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        header = self.current.header
        with m.FSM():
            with m.State("FETCH"):
                m.d.comb += [self.insn.ready.eq(1), self.empty.eq(~self.insn.valid)]
                with m.If(self.insn.valid):
                    m.d.sync += self.current.eq(self.insn.payload)
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += self.waiting.eq(1)
                go = ((~header.pop_prev | self.prev_available)
                      & (~header.pop_next | self.next_available))
                with m.If(go):
                    m.d.comb += [
                        self.prev_take.eq(header.pop_prev),
                        self.next_take.eq(header.pop_next),
                        self.start.eq(1),
                    ]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.done):
                    m.d.comb += [
                        self.push_prev.eq(header.push_prev),
                        self.push_next.eq(header.push_next),
                    ]
                    m.next = "FETCH"
        return m

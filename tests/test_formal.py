"""Formal checks with sim.formal.prove (SymbiYosys + smtbmc, pip-only).

The design under test is a small valid/ready FIFO written here, with its own
invariants (``Assert`` inside the FIFO) and a harness that feeds it a sequence
number stream (``Assume``) and checks that the same sequence comes out in order
(``Assert``). The harness also carries the invariants that make the
properties inductive, so the same design is proven unboundedly by
k-induction. A wrong property, a real bug, a non-inductive property and an
unreachable cover must each make ``prove`` raise.
"""

import os

import pytest
from amaranth.hdl import Array, Assert, Assume, Cover, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from sim.formal import prove


pytestmark = pytest.mark.formal

WIDTH = 8
DEPTH = 4        # a power of two: pointers wrap by truncation


class Fifo(wiring.Component):
    """Register-based FIFO with valid/ready on both sides.

    ``bug=True`` accepts writes while full (w_ready stuck high): an overflow
    that overwrites the oldest entry."""

    w_data: In(WIDTH)
    w_valid: In(1)
    w_ready: Out(1)
    r_data: Out(WIDTH)
    r_valid: Out(1)
    r_ready: In(1)
    level: Out(range(DEPTH + 1))

    def __init__(self, *, bug=False):
        super().__init__()
        self.bug = bug
        self.storage = Array(Signal(WIDTH, name=f"slot{i}") for i in range(DEPTH))
        self.w_ptr = Signal(range(DEPTH))
        self.r_ptr = Signal(range(DEPTH))

    def elaborate(self, platform):
        m = Module()
        do_w = Signal()
        do_r = Signal()
        m.d.comb += [
            self.w_ready.eq(1 if self.bug else self.level != DEPTH),
            self.r_valid.eq(self.level != 0),
            self.r_data.eq(self.storage[self.r_ptr]),
            do_w.eq(self.w_valid & self.w_ready),
            do_r.eq(self.r_valid & self.r_ready),
        ]
        with m.If(do_w):
            m.d.sync += [
                self.storage[self.w_ptr].eq(self.w_data),
                self.w_ptr.eq(self.w_ptr + 1),
            ]
        with m.If(do_r):
            m.d.sync += self.r_ptr.eq(self.r_ptr + 1)
        with m.If(do_w & ~do_r):
            m.d.sync += self.level.eq(self.level + 1)
        with m.Elif(do_r & ~do_w):
            m.d.sync += self.level.eq(self.level - 1)

        # The FIFO's own invariants.
        m.d.comb += [
            Assert(self.level <= DEPTH, "level never exceeds DEPTH"),
            Assert(self.w_ptr == (self.r_ptr + self.level)[:len(self.w_ptr)],
                   "pointers agree with level"),
        ]
        return m


class FifoHarness(wiring.Component):
    """Feeds the FIFO the sequence 0, 1, 2, ... and checks it reads back in order.

    ``wrong_property=True`` adds a property that does not hold (the FIFO never
    fills up); ``bug=True`` builds the overflowing FIFO; ``covers=`` adds a
    ``Cover`` of ``fifo.level == covers``."""

    w_valid: In(1)
    w_data: In(WIDTH)
    r_ready: In(1)

    def __init__(self, *, bug=False, wrong_property=False, covers=None):
        super().__init__()
        self.bug = bug
        self.wrong_property = wrong_property
        self.covers = covers

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = Fifo(bug=self.bug)
        m.d.comb += [
            fifo.w_valid.eq(self.w_valid),
            fifo.w_data.eq(self.w_data),
            fifo.r_ready.eq(self.r_ready),
        ]
        # Ghost counters: sequence numbers of the next write and the next read.
        w_seq = Signal(WIDTH)
        r_seq = Signal(WIDTH)
        m.d.comb += Assume(self.w_data == w_seq)      # the environment writes 0, 1, 2, ...
        with m.If(fifo.w_valid & fifo.w_ready):
            m.d.sync += w_seq.eq(w_seq + 1)
        with m.If(fifo.r_valid & fifo.r_ready):
            m.d.sync += r_seq.eq(r_seq + 1)
            m.d.comb += Assert(fifo.r_data == r_seq, "FIFO returns data in order")

        # Invariants relating the ghost state to the FIFO (needed for k-induction).
        m.d.comb += Assert(fifo.level == (w_seq - r_seq)[:WIDTH], "level counts entries")
        for i in range(DEPTH):
            with m.If(i < fifo.level):
                m.d.comb += Assert(
                    fifo.storage[(fifo.r_ptr + i)[:len(fifo.r_ptr)]] == (r_seq + i)[:WIDTH],
                    f"entry {i} holds its sequence number")

        if self.wrong_property:
            m.d.comb += Assert(fifo.level < DEPTH, "FIFO is never full (wrong)")
        if self.covers is not None:
            m.d.comb += Cover(fifo.level == self.covers)
        return m


def test_fifo_bmc_passes(tmp_path):
    prove(FifoHarness(), "fifo", depth=20, workdir=tmp_path)
    assert (tmp_path / "fifo" / "PASS").exists()


def test_wrong_property_fails(tmp_path):
    with pytest.raises(AssertionError) as excinfo:
        prove(FifoHarness(wrong_property=True), "fifo_wrong", depth=20, workdir=tmp_path)
    message = str(excinfo.value)
    assert "FAIL" in message
    assert "test_formal.py" in message                    # source line of the property
    assert "FIFO is never full (wrong)" in message        # its Amaranth message
    assert "trace.vcd" in message
    assert (tmp_path / "fifo_wrong" / "engine_0" / "trace.vcd").is_file()
    # The counterexample fills the FIFO: DEPTH writes, so at least DEPTH steps.
    assert "step" in message and "w_valid" in message


def test_buggy_design_fails(tmp_path):
    with pytest.raises(AssertionError) as excinfo:
        prove(FifoHarness(bug=True), "fifo_bug", depth=20, workdir=tmp_path)
    assert "level never exceeds DEPTH" in str(excinfo.value) \
        or "in order" in str(excinfo.value) \
        or "holds its sequence number" in str(excinfo.value)


def test_fifo_k_induction(tmp_path):
    prove(FifoHarness(), "fifo_prove", depth=20, mode="prove", workdir=tmp_path)


class WrapCounter(wiring.Component):
    """Counts 0..9 and wraps; states 10 and 11 are unreachable but lead to 12."""

    en: In(1)
    count: Out(4)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            with m.If(self.count == 9):
                m.d.sync += self.count.eq(0)
            with m.Else():
                m.d.sync += self.count.eq(self.count + 1)
        m.d.comb += Assert(self.count != 12, "never 12")
        return m


def test_true_but_not_inductive(tmp_path):
    prove(WrapCounter(), "wrap_bmc", depth=20, workdir=tmp_path / "bmc")
    with pytest.raises(AssertionError, match="induction"):
        prove(WrapCounter(), "wrap_prove", depth=20, mode="prove", workdir=tmp_path / "prove")


def test_cover(tmp_path):
    prove(FifoHarness(covers=DEPTH), "fifo_cover", depth=20, mode="cover",
          workdir=tmp_path / "reach")
    with pytest.raises(AssertionError):
        prove(FifoHarness(covers=DEPTH + 1), "fifo_nocover", depth=20, mode="cover",
              workdir=tmp_path / "unreach")


class Contradiction(wiring.Component):
    """Two assumptions that cannot both hold: every Assert would pass vacuously."""

    a: In(4)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [Assume(self.a == 3), Assume(self.a == 4), Assert(self.a == 0)]
        return m


def test_vacuous_assumptions_fail(tmp_path):
    with pytest.raises(AssertionError, match="vacuous"):
        prove(Contradiction(), "vacuous", depth=20, workdir=tmp_path)


def test_default_workdir_removed_on_success(monkeypatch):
    import sim.formal
    made = []
    real_mkdtemp = sim.formal.tempfile.mkdtemp

    def mkdtemp(**kwargs):
        made.append(real_mkdtemp(**kwargs))
        return made[-1]

    monkeypatch.setattr(sim.formal.tempfile, "mkdtemp", mkdtemp)
    prove(WrapCounter(), "wrap_tmp", depth=20)
    assert len(made) == 1
    assert not os.path.exists(made[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        prove(None, "x", mode="sat")
    with pytest.raises(ValueError, match="identifier"):
        prove(None, "not a name")
    with pytest.raises(ValueError, match="solver"):
        prove(None, "x", solver="minisat")

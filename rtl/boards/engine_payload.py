"""A placeholder board payload that keeps a real matmul engine busy on random work.

It lets the FPGA flow measure fmax and resources of a real INT8 systolic array
before the host link and the core exist; the board top takes any payload with
the same ports (see :mod:`.board_top`).
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..matmul.array import check_pe_pairs, shared_pe_modules
from ..matmul.engine import MatmulEngine


__all__ = ["EnginePayload"]


#: Width of the pseudo-random generator's state.
_STATE_BITS = 64


def _xorshift64(x):
    """One step of Marsaglia's xorshift64 (13, 7, 17): a linear map over GF(2)."""
    x = x ^ (x << 13)[:_STATE_BITS]
    x = x ^ (x >> 7)
    return x ^ (x << 17)[:_STATE_BITS]


class EnginePayload(wiring.Component):
    """An INT8-only :class:`~rtl.matmul.engine.MatmulEngine` fed by an LFSR.

    Every cycle a 64-bit xorshift generator (a linear-feedback generator; the
    synchronized ``uart_rx`` is XORed into its state, so the input is live too)
    shifts 64 new bits into a pool from which the engine's ``cmd``, ``weights`` and
    ``a`` payloads are cut; all three streams are always valid. A pass asks for a
    random number of rows (0 .. ``max_rows`` - 1) in INT8 or UINT8 mode with
    random ``accumulate``/``emit``; about one pass in 256 gets a random mode,
    which may be invalid (6, 7 or FP8 on this INT8-only engine), so the error path
    is exercised too. ``c.ready`` is low in about one cycle in 8 (backpressure).

    Every result row taken from ``c`` (all ``cols`` INT32 values and the error
    flag) and the engine's three counters are XOR-folded into a 32-bit register;
    ``uart_tx`` is the parity of that register (high after reset), so no result
    bit can be optimised away. ``led_error`` is a sticky flag: some emitted row
    had ``error`` set (on this payload, one of the injected invalid passes).

    It is not a host link: nothing meaningful is sent on ``uart_tx``.

    Parameters
    ----------
    rows, cols : int
        Systolic array size.
    max_rows : int
        Accumulator depth of the engine (a power of two).
    clk_frequency : float, optional
        The ``sync`` clock in Hz (the board top passes it to every payload;
        unused here).
    pe_pairs : str, optional
        Build the array from PE pairs on dual 8 x 8 multipliers
        (:class:`~rtl.matmul.engine.MatmulEngine`); ``"sb_mac16"`` on the iCE40.

    Members
    -------
    uart_rx : In(1)
        Synchronized UART receive line (idle high).
    uart_tx : Out(1)
    led_error : Out(1)
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)
    led_error: Out(1)

    def __init__(self, *, rows=16, cols=16, max_rows=512, clk_frequency=None, seed=1,
                 pe_pairs=None):
        try:
            self._check(rows, cols, max_rows, seed)
            check_pe_pairs(cols, False, pe_pairs)
        except (TypeError, ValueError):
            self._MustUse__silence = True   # never built: no "created but never used" warning
            raise
        self._rows = rows
        self._cols = cols
        self._max_rows = max_rows
        self._seed = seed
        self._pe_pairs = pe_pairs
        self.clk_frequency = clk_frequency
        super().__init__()

    @staticmethod
    def _check(rows, cols, max_rows, seed):
        for name, value in (("Row", rows), ("Column", cols), ("Accumulator row", max_rows)):
            if not isinstance(value, int) or value < 1:
                raise TypeError(f"{name} count must be a positive integer, not {value!r}")
        if max_rows & (max_rows - 1):
            raise ValueError(f"Accumulator row count must be a power of two, not {max_rows}")
        if not isinstance(seed, int) or not 0 < seed < 2**_STATE_BITS:
            raise ValueError(f"Seed must be a nonzero {_STATE_BITS}-bit integer, not {seed!r}")

    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)

    @property
    def macs_per_cycle(self):
        return self._rows * self._cols

    def verilog_modules(self):
        """``{name: component}`` of the shared Verilog modules the engine instantiates."""
        return shared_pe_modules(self._rows, False, self._pe_pairs)

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._rows, self._cols
        m.submodules.engine = engine = MatmulEngine(
            rows=rows, cols=cols, max_rows=self._max_rows, fp8=False, shared_pe_module=True,
            pe_pairs=self._pe_pairs)

        # -- Pseudo-random pool ----------------------------------------------------------------
        row_bits = self._max_rows.bit_length() - 1
        needed = 8 * cols + 8 * rows + 8 + 3 + 1 + row_bits + 2 + 3
        words = -(-needed // _STATE_BITS)
        state = Signal(_STATE_BITS, init=self._seed)
        pool = Signal(words * _STATE_BITS, init=self._seed)
        m.d.sync += [
            state.eq(_xorshift64(state) ^ self.uart_rx),
            pool.eq(Cat(state, pool[:-_STATE_BITS])),
        ]
        fields = {}
        offset = 0
        for name, width in (("weights", 8 * cols), ("a", 8 * rows), ("rare", 8), ("mode", 3),
                            ("int_mode", 1), ("rows", row_bits), ("accumulate", 1), ("emit", 1),
                            ("stall", 3)):
            fields[name] = pool[offset:offset + width]
            offset += width

        # -- Streams into the engine: always valid ------------------------------------------
        cmd = engine.cmd.payload
        m.d.comb += [
            engine.cmd.valid.eq(1),
            cmd.mode.eq(Mux(fields["rare"] == 0, fields["mode"], fields["int_mode"])),
            cmd.rows.eq(fields["rows"]),
            cmd.accumulate.eq(fields["accumulate"]),
            cmd.emit.eq(fields["emit"]),
            engine.weights.valid.eq(1),
            engine.weights.payload.eq(fields["weights"]),
            engine.a.valid.eq(1),
            engine.a.payload.eq(fields["a"]),
            engine.c.ready.eq(fields["stall"] != 0b111),
        ]

        # -- Results folded into uart_tx and the sticky error LED ---------------------------
        fold = Signal(32)
        row_fold = engine.c.payload.error
        for value in engine.c.payload.values:
            row_fold = row_fold ^ value
        counters = engine.cycle_count ^ engine.row_count ^ engine.stall_count
        with m.If(engine.c.valid & engine.c.ready):
            m.d.sync += fold.eq(fold ^ row_fold ^ counters)
            with m.If(engine.c.payload.error):
                m.d.sync += self.led_error.eq(1)
        with m.Else():
            m.d.sync += fold.eq(fold ^ counters)
        m.d.sync += self.uart_tx.eq(fold.xor())
        return m

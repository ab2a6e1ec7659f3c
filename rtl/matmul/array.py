"""Weight-stationary systolic array of processing elements."""

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .partial_sum import column_sum_layout, empty_sum
from .pe import ActivationLane, ProcessingElement, WeightWrite
from .multiplier_pair import MultiplierPair, check_implementation
from .pe_pair import ProcessingElementPair
from .registered_multiplier import RegisteredMultiplier, check_registered_multiplier


__all__ = ["SystolicArray", "pe_module_name", "pe_pair_module_name", "check_pe_pairs",
           "shared_pe_modules", "product_latency"]


def check_pe_pairs(cols, fp8, pe_pairs, pe_multiplier=None):
    """Raise ``ValueError`` if an array cannot be built with ``pe_pairs`` and ``pe_multiplier``."""
    if pe_multiplier is not None:
        check_registered_multiplier(pe_multiplier)
        if pe_pairs is not None:
            raise ValueError("An array has either PE pairs or PEs with a registered multiplier, "
                             "not both")
    if pe_pairs is None:
        return
    if fp8:
        raise ValueError("PE pairs are integer-only: build the array with fp8=False")
    if cols % 2:
        raise ValueError(f"PE pairs need an even column count, not {cols}")
    check_implementation(pe_pairs)


def shared_pe_modules(rows, fp8, pe_pairs=None, pe_multiplier=None):
    """``{name: component}`` of the one shared PE (or PE-pair) module of such an array."""
    if pe_pairs is not None:
        return {pe_pair_module_name(rows, pe_pairs):
                ProcessingElementPair(rows=rows, multiplier=pe_pairs)}
    return {pe_module_name(rows, fp8, pe_multiplier):
            ProcessingElement(rows=rows, fp8=fp8, multiplier=pe_multiplier)}


def product_latency(pe_pairs, pe_multiplier=None):
    """Cycles from an activation reaching a PE to its product entering the column sum."""
    if pe_pairs is not None:
        return MultiplierPair.latency
    return 1 if pe_multiplier is None else RegisteredMultiplier.latency


def pe_module_name(rows, fp8, multiplier=None):
    """Verilog name of the one shared PE module of an array (see ``shared_pe_module``)."""
    return f"jalapeno_pe_{rows}{'_fp8' if fp8 else ''}{'_' + multiplier if multiplier else ''}"


def pe_pair_module_name(rows, multiplier):
    """Verilog name of the shared PE-pair module of an array built with ``pe_pairs``."""
    return f"jalapeno_pe_pair_{rows}_{multiplier}"


class SystolicArray(wiring.Component):
    """An R x C grid of :class:`~.pe.ProcessingElement`: PE (r, c) holds W[r][c].

    Activations enter row ``r`` on the left (``a[r]``) and move right one PE per
    cycle; partial sums start at the top as the empty sum and move down one PE
    per cycle; column ``c``'s sum leaves at the bottom (``sums[c]``). For the
    products of one activation row to meet in the same partial sum, the caller
    skews the input: element ``r`` of a row enters ``r`` cycles after element 0.
    Then column ``c``'s result for that row appears ``rows + c + 1`` cycles after
    element 0 entered (:meth:`column_latency`), so the caller de-skews by
    delaying column ``c`` by ``cols - 1 - c``.

    Weights are written a row at a time: ``weight_row`` (one code per column),
    ``weight_row_index``, ``weight_bank`` and ``weight_enable`` write bank
    ``weight_bank`` of every PE in that row. Each activation's ``bank`` tag
    chooses the bank it multiplies with, so a bank can be rewritten while the
    other computes.

    Parameters
    ----------
    rows, cols : int
        Array size (default 16 x 16 in the engine).
    fp8 : bool
        Build the FP8 datapath.
    shared_pe_module : bool
        Instantiate one Verilog module, :func:`pe_module_name`, R x C times
        instead of elaborating every PE into its own module. The exported Verilog
        is then about R x C times smaller and Verilator builds and runs it much
        faster; :meth:`verilog_modules` gives the PE component to export beside it
        (``sim.verilog.component_to_verilog`` does). Amaranth's simulator cannot
        run an ``Instance``, so simulate the default (``False``) there.
    pe_pairs : str, optional
        Integer arrays with an even column count only: build the array from
        :class:`~.pe_pair.ProcessingElementPair` (columns 2j and 2j + 1 of a row
        share one dual 8 x 8 multiplier, the iCE40 ``SB_MAC16``), with this
        :class:`~.multiplier_pair.MultiplierPair` implementation (``"behavioral"``
        or ``"sb_mac16"``). Same results; every column two cycles later
        (:attr:`product_latency`).
    pe_multiplier : str, optional
        Build every PE with this :class:`~.registered_multiplier.RegisteredMultiplier`
        implementation (``"behavioral"`` or ``"mult18x18d"``, the ECP5 DSP with its
        own registers). Same results; every column one cycle later. Not with
        ``pe_pairs``.

    Members
    -------
    a : In(ArrayLayout(ActivationLane, rows))
    weight_row : In(ArrayLayout(8, cols))
    weight_row_index : In(range(rows))
    weight_bank : In(1)
    weight_enable : In(1)
    sums : Out(ArrayLayout(column_sum_layout(rows, fp8), cols))
    advance : In(1)
        Global pipeline enable: every register but the weights holds when low.
    """

    def __init__(self, *, rows, cols, fp8=True, shared_pe_module=False, pe_pairs=None,
                 pe_multiplier=None):
        for name, value in (("Row", rows), ("Column", cols)):
            if not isinstance(value, int) or value < 1:
                raise TypeError(f"{name} count must be a positive integer, not {value!r}")
        check_pe_pairs(cols, fp8, pe_pairs, pe_multiplier)
        self._pe_pairs = pe_pairs
        self._pe_multiplier = pe_multiplier
        self._rows = rows
        self._cols = cols
        self._fp8 = bool(fp8)
        self._shared_pe_module = bool(shared_pe_module)
        self._sum_layout = column_sum_layout(rows, fp8)
        super().__init__({
            "a": In(data.ArrayLayout(ActivationLane, rows)),
            "weight_row": In(data.ArrayLayout(8, cols)),
            "weight_row_index": In(range(rows)),
            "weight_bank": In(1),
            "weight_enable": In(1),
            "sums": Out(data.ArrayLayout(self._sum_layout, cols)),
            "advance": In(1),
        })

    @property
    def rows(self):
        return self._rows

    @property
    def cols(self):
        return self._cols

    @property
    def sum_layout(self):
        return self._sum_layout

    @property
    def pe_pairs(self):
        return self._pe_pairs

    @property
    def pe_multiplier(self):
        return self._pe_multiplier

    @property
    def product_latency(self):
        """Cycles from an activation reaching a PE to its product entering the column sum."""
        return product_latency(self._pe_pairs, self._pe_multiplier)

    def verilog_modules(self):
        """``{name: component}`` of the Verilog modules this array instantiates."""
        if not self._shared_pe_module:
            return {}
        return shared_pe_modules(self._rows, self._fp8, self._pe_pairs, self._pe_multiplier)

    def column_latency(self, col):
        """Cycles from element 0 of a (skewed) row entering to column ``col``'s sum."""
        return self._rows + col + self.product_latency

    def elaborate(self, platform):
        m = Module()
        if self._pe_pairs is not None:
            return self._elaborate_pairs(m)
        if self._shared_pe_module:
            pes = [[_PEPorts(self._sum_layout, f"pe_{r}_{c}") for c in range(self._cols)]
                   for r in range(self._rows)]
        else:
            pes = [[ProcessingElement(rows=self._rows, fp8=self._fp8, multiplier=self._pe_multiplier)
                    for _ in range(self._cols)] for _ in range(self._rows)]
        for r, row in enumerate(pes):
            for c, pe in enumerate(row):
                if self._shared_pe_module:
                    m.submodules[f"pe_{r}_{c}"] = Instance(
                        pe_module_name(self._rows, self._fp8, self._pe_multiplier),
                        i_clk=ClockSignal("sync"), i_rst=ResetSignal("sync"),
                        i_advance=pe.advance, i_a_in=pe.a_in, o_a_out=pe.a_out,
                        i_weight=pe.weight, i_sum_in=pe.sum_in, o_sum_out=pe.sum_out)
                else:
                    m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += [
                    pe.advance.eq(self.advance),
                    pe.a_in.eq(self.a[r] if c == 0 else pes[r][c - 1].a_out),
                    pe.sum_in.eq(empty_sum(self._sum_layout) if r == 0 else pes[r - 1][c].sum_out),
                    pe.weight.code.eq(self.weight_row[c]),
                    pe.weight.bank.eq(self.weight_bank),
                    pe.weight.enable.eq(self.weight_enable & (self.weight_row_index == r)),
                ]
        for c in range(self._cols):
            m.d.comb += self.sums[c].eq(pes[self._rows - 1][c].sum_out)
        return m

    def _elaborate_pairs(self, m):
        rows, pairs = self._rows, self._cols // 2
        if self._shared_pe_module:
            cells = [[_PEPairPorts(self._sum_layout, f"pe_pair_{r}_{j}") for j in range(pairs)]
                     for r in range(rows)]
        else:
            cells = [[ProcessingElementPair(rows=rows, multiplier=self._pe_pairs)
                      for _ in range(pairs)] for _ in range(rows)]
        for r, row in enumerate(cells):
            for j, cell in enumerate(row):
                if self._shared_pe_module:
                    ports = {f"{d}_{name}": getattr(cell, name) for d, name in cell.directions()}
                    m.submodules[f"pe_pair_{r}_{j}"] = Instance(
                        pe_pair_module_name(rows, self._pe_pairs),
                        i_clk=ClockSignal("sync"), i_rst=ResetSignal("sync"), **ports)
                else:
                    m.submodules[f"pe_pair_{r}_{j}"] = cell
                m.d.comb += [
                    cell.advance.eq(self.advance),
                    cell.a_in.eq(self.a[r] if j == 0 else cells[r][j - 1].a_out),
                ]
                for i in range(2):
                    c = 2 * j + i
                    weight = getattr(cell, f"weight_{i}")
                    above = (empty_sum(self._sum_layout) if r == 0
                             else getattr(cells[r - 1][j], f"sum_out_{i}"))
                    m.d.comb += [
                        getattr(cell, f"sum_in_{i}").eq(above),
                        weight.code.eq(self.weight_row[c]),
                        weight.bank.eq(self.weight_bank),
                        weight.enable.eq(self.weight_enable & (self.weight_row_index == r)),
                    ]
        for j in range(pairs):
            for i in range(2):
                m.d.comb += self.sums[2 * j + i].eq(getattr(cells[rows - 1][j], f"sum_out_{i}"))
        return m


class _PEPorts:
    """The signals wired to one instance of the shared PE module."""

    def __init__(self, sum_layout, name):
        self.advance = Signal(name=f"{name}_advance")
        self.a_in = Signal(ActivationLane, name=f"{name}_a_in")
        self.a_out = Signal(ActivationLane, name=f"{name}_a_out")
        self.weight = Signal(WeightWrite, name=f"{name}_weight")
        self.sum_in = Signal(sum_layout, name=f"{name}_sum_in")
        self.sum_out = Signal(sum_layout, name=f"{name}_sum_out")


class _PEPairPorts:
    """The signals wired to one instance of the shared PE-pair module."""

    def __init__(self, sum_layout, name):
        self.advance = Signal(name=f"{name}_advance")
        self.a_in = Signal(ActivationLane, name=f"{name}_a_in")
        self.a_out = Signal(ActivationLane, name=f"{name}_a_out")
        for i in range(2):
            setattr(self, f"weight_{i}", Signal(WeightWrite, name=f"{name}_weight_{i}"))
            setattr(self, f"sum_in_{i}", Signal(sum_layout, name=f"{name}_sum_in_{i}"))
            setattr(self, f"sum_out_{i}", Signal(sum_layout, name=f"{name}_sum_out_{i}"))

    def directions(self):
        """(Instance port prefix, member name) of every port."""
        yield "i", "advance"
        yield "i", "a_in"
        yield "o", "a_out"
        for i in range(2):
            yield "i", f"weight_{i}"
            yield "i", f"sum_in_{i}"
            yield "o", f"sum_out_{i}"

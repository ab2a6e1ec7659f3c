"""Synthesis smoke tests for sim.synth: a registered 8x8 signed multiplier must
land in exactly one DSP block on ECP5 and iCE40 UltraPlus."""

import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from sim.synth import synthesize
from sim.verilog import component_to_verilog


pytestmark = pytest.mark.synth

DSP_CELL = {"ecp5": "MULT18X18D", "ice40": "SB_MAC16"}


class RegisteredMultiplier(wiring.Component):
    a: In(signed(8))
    b: In(signed(8))
    p: Out(signed(16))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.p.eq(self.a * self.b)
        return m


@pytest.fixture(scope="module")
def multiplier_v(tmp_path_factory):
    path = tmp_path_factory.mktemp("mult") / "mult8x8.v"
    path.write_text(component_to_verilog(RegisteredMultiplier(), "mult8x8"))
    return path


@pytest.mark.parametrize("family", ["ecp5", "ice40"])
def test_multiplier_uses_one_dsp(multiplier_v, family, tmp_path):
    cells = synthesize(multiplier_v, "mult8x8", family, workdir=tmp_path)
    assert cells[DSP_CELL[family]] == 1, cells
    assert cells["dsp"] == 1, cells
    assert cells["lut"] < 50, cells   # no multiplier built out of LUTs
    assert cells["bram"] == 0 and cells["lutram"] == 0, cells
    assert (tmp_path / "yosys.log").is_file()


def test_unknown_family(multiplier_v):
    with pytest.raises(ValueError, match="xilinx"):
        synthesize(multiplier_v, "mult8x8", "xilinx")


def test_broken_verilog_raises(tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module broken(input a, output y);\n  assign y = a &;\nendmodule\n")
    with pytest.raises(RuntimeError) as excinfo:
        synthesize(bad, "broken", "ecp5", workdir=tmp_path / "work")
    message = str(excinfo.value)
    assert "synth_ecp5" in message
    assert "ERROR" in message      # Yosys' own error line is in the log tail


@pytest.mark.parametrize("family,fp8", [("ice40", False), ("ecp5", True)],
                         ids=["ice40-int8", "ecp5-fp8"])
def test_systolic_array_multipliers_land_in_dsps(family, fp8, tmp_path):
    """One DSP per PE, for every mode the build has (issue: matmul tile): a 4 x 4 integer
    array on the iCE40, a 3 x 2 FP8 array on the ECP5 (its synthesis is the slow one)."""
    from rtl.matmul.array import SystolicArray

    rows, cols = (3, 2) if fp8 else (4, 4)
    path = tmp_path / "array.v"
    path.write_text(component_to_verilog(SystolicArray(rows=rows, cols=cols, fp8=fp8), "array"))
    cells = synthesize(path, "array", family, workdir=tmp_path)
    assert cells[DSP_CELL[family]] == rows * cols, cells
    # No multiplier was built from LUTs: an 8 x 8 LUT multiplier alone is ~100 LUTs,
    # so an integer PE (registers, muxes, adders) stays well under that.
    if not fp8:
        assert cells["lut"] < rows * cols * 80, cells


def test_registered_multiplier_pes_use_the_dsp_registers(tmp_path):
    """``pe_multiplier="mult18x18d"`` (the ULX3S core): each PE's multiplier is one
    MULT18X18D with its operand and product registers clocked, enabled by the array's
    ``advance``; the product register leaves the fabric (fewer flip-flops than the
    inferred multiplier's array, whose MULT18X18D has no registers). Integer PEs: the FP8
    PE's multiplier is the same, and its side information's delay is simulated
    (tests/test_matmul_array.py)."""
    import json

    from rtl.matmul.array import SystolicArray

    rows, cols = 2, 2
    counts, dsps = {}, {}
    for multiplier in (None, "mult18x18d"):
        workdir = tmp_path / str(multiplier)
        workdir.mkdir()
        path = workdir / "array.v"
        array = SystolicArray(rows=rows, cols=cols, fp8=False, pe_multiplier=multiplier)
        path.write_text(component_to_verilog(array, "array"))
        counts[multiplier] = synthesize(path, "array", "ecp5", workdir=workdir)
        netlist = json.loads((workdir / "netlist.json").read_text())
        dsps[multiplier] = [cell for module in netlist["modules"].values()
                            for cell in module["cells"].values() if cell["type"] == "MULT18X18D"]
    for multiplier, cells in counts.items():
        assert cells["MULT18X18D"] == cells["dsp"] == rows * cols, (multiplier, cells)
    for multiplier, instances in dsps.items():
        for dsp in instances:
            clocks = {name: dsp["parameters"].get(name, "NONE").strip()
                      for name in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_PIPELINE_CLK",
                                   "REG_OUTPUT_CLK")}
            if multiplier is None:
                assert set(clocks.values()) == {"NONE"}, clocks
            else:
                assert clocks == {"REG_INPUTA_CLK": "CLK0", "REG_INPUTB_CLK": "CLK0",
                                  "REG_PIPELINE_CLK": "NONE", "REG_OUTPUT_CLK": "CLK0"}, clocks
                connections = dsp["connections"]
                assert connections["SIGNEDA"] == connections["SIGNEDB"] == ["1"]
                assert all(bit not in ("0", "1")
                           for pin in ("CE0", "CLK0", "RST0") for bit in connections[pin])
                # No constant on the pins it does not use (each one a net to route).
                assert not {"CE1", "CLK1", "RST1", "C0"} & set(connections), connections
    # The 18-bit product register moved into the DSP; what waits for it in the fabric (the
    # valid bit) gets a flip-flop or two more per PE.
    assert counts["mult18x18d"]["ff"] <= counts[None]["ff"] - rows * cols * 10, counts


class RangeCheckTop(wiring.Component):
    """A :class:`rtl.core.range_check.RangeCheck` of two extents on ports."""

    def __init__(self, multiplier):
        self._multiplier = multiplier
        ports = {"start": In(1), "done": Out(1), "bad": Out(1)}
        for i in range(2):
            ports.update({f"base_{i}": In(32), f"rows_{i}": In(24), f"stride_{i}": In(32),
                          f"cols_{i}": In(16), f"limit_{i}": In(33)})
        super().__init__(ports)

    def elaborate(self, platform):
        from rtl.core.range_check import Extent, RangeCheck

        m = Module()
        m.submodules.check = check = RangeCheck(2, product_stage=True,
                                                multiplier=self._multiplier)
        check.connect_extents([Extent(*(getattr(self, f"{name}_{i}") for name in
                                        ("base", "rows", "stride", "cols", "limit")))
                               for i in range(2)])
        m.d.comb += [check.start.eq(self.start), self.done.eq(check.done),
                     self.bad.eq(check.bad)]
        return m


def test_range_check_partial_products_use_the_dsp_registers(tmp_path):
    """With ``product_stage`` and ``multiplier="mult18x18d"`` (the ULX3S core's range
    checks) the four partial products are four unsigned MULT18X18D with their operand and
    product registers clocked; the behavioral ones are inferred DSPs without registers."""
    import json

    for multiplier in ("behavioral", "mult18x18d"):
        workdir = tmp_path / multiplier
        workdir.mkdir()
        path = workdir / "check.v"
        path.write_text(component_to_verilog(RangeCheckTop(multiplier), "check"))
        cells = synthesize(path, "check", "ecp5", workdir=workdir)
        assert cells["MULT18X18D"] == 4, (multiplier, cells)
        netlist = json.loads((workdir / "netlist.json").read_text())
        dsps = [cell for module in netlist["modules"].values()
                for cell in module["cells"].values() if cell["type"] == "MULT18X18D"]
        for dsp in dsps:
            clocks = {name: dsp["parameters"].get(name, "NONE").strip()
                      for name in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK")}
            if multiplier == "behavioral":
                assert set(clocks.values()) == {"NONE"}, clocks
            else:
                assert set(clocks.values()) == {"CLK0"}, clocks
                assert dsp["connections"]["SIGNEDA"] == dsp["connections"]["SIGNEDB"] == ["0"]

"""Every top-level unit exports to Verilog, passes the Verilator lint and declares its latency."""

import pytest
from amaranth.lib import wiring

from rtl.units import UNITS
from sim.lint import lint_verilog
from sim.verilog import component_to_verilog


# Smaller builds of the same code where the default is slow to export (16 x 16: 35 s).
TEST_PARAMS = {"matmul_engine": dict(rows=4, cols=4, max_rows=32)}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_exports_and_lints(name, tmp_path):
    unit = UNITS[name](**TEST_PARAMS.get(name, {}))
    assert isinstance(unit, wiring.Component)
    assert isinstance(unit.latency, int) and unit.latency >= 1
    text = component_to_verilog(unit, name)
    assert f"module {name}(" in text
    path = tmp_path / f"{name}.v"
    path.write_text(text)
    ok, messages = lint_verilog(path)
    assert ok, "\n".join(messages)


def test_lint_catches_a_real_problem(tmp_path):
    """The lint is not a rubber stamp: an undriven, unwaived problem fails it."""
    path = tmp_path / "broken.v"
    path.write_text("module broken(input clk, output [3:0] y);\n  wire [3:0] x;\n"
                    "  assign y = x;\nendmodule\n")
    ok, messages = lint_verilog(path)
    assert not ok and messages


def test_export_rejects_bad_arguments():
    with pytest.raises(TypeError):
        component_to_verilog(object(), "x")
    unit = UNITS["fp8_decoder"]()
    with pytest.raises(ValueError):
        component_to_verilog(unit, "not a name")
    component_to_verilog(unit, "fp8_decoder")  # elaborate it, or Amaranth warns it was unused

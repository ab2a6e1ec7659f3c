"""The `jalapeno` command line."""

import pytest

from jalapeno.cli import main
from rtl.units import UNITS


def test_units_lists_every_unit(capsys):
    assert main(["units"]) == 0
    out = capsys.readouterr().out
    for name in UNITS:
        assert name in out


def test_verilog_writes_files(tmp_path, capsys):
    assert main(["verilog", "fp8_decoder", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "fp8_decoder.v").read_text().count("module fp8_decoder(") == 1


def test_verilog_unknown_unit_is_a_clear_error(tmp_path, capsys):
    assert main(["verilog", "no_such_unit", "--out", str(tmp_path)]) == 2
    assert "unknown unit" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_version():
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0

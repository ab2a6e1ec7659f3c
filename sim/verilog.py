"""Turn an Amaranth component into Verilog text."""

from contextlib import contextmanager

from amaranth.back import rtlil, verilog
from amaranth.lib import wiring


__all__ = ["component_to_verilog"]


@contextmanager
def _zero_memories_uninitialised():
    """Leave all-zero memory contents out of the Verilog while converting.

    Amaranth 0.5's RTLIL backend writes every bit of every memory's initial contents,
    zeros included (``ModuleEmitter.emit_memory``): for the 16 x 16 core's three
    16,384-word buffers that is 6.3 million bits, about half of the conversion time and
    49,000 lines of ``initial`` Verilog for Verilator to compile. Verilator starts every
    memory at zero anyway (``--x-initial`` and ``+verilator+rand+reset`` at their
    defaults, or ``fast``), so a simulation model loses nothing; memories with any
    non-zero word (tables) keep their contents.
    """
    emitter = rtlil.ModuleEmitter
    original = emitter.emit_memory

    def emit_memory(self, cell_idx, cell):
        if any(cell.init):
            original(self, cell_idx, cell)

    emitter.emit_memory = emit_memory
    try:
        yield
    finally:
        emitter.emit_memory = original


def component_to_verilog(component, name, *, for_simulation=False):
    """Verilog for ``component`` with top-level module ``name``.

    Ports come from the component's signature, flattened by Amaranth with ``__``
    (``i__payload``, ``o__valid``); the ``sync`` domain becomes ``clk`` and ``rst``.
    Source locations are left out so that the text (and every cache key derived
    from it) is the same in every checkout.

    A component that instantiates Verilog modules of its own (an ``Instance`` of
    a shared module, such as the systolic array's PE) lists them in a
    ``verilog_modules()`` method returning ``{module_name: component}``; they are
    converted and appended, so the text is complete.

    ``for_simulation``: Verilog for Verilator only; memories whose initial contents are
    all zero get no ``initial`` block (see :func:`_zero_memories_uninitialised`). The
    Verilog that synthesis reads (``make verilog``, the FPGA flow) keeps them.
    """
    if not isinstance(component, wiring.Component):
        raise TypeError(f"Expected an amaranth.lib.wiring.Component, not {component!r}")
    if not name.isidentifier():
        raise ValueError(f"Module name must be a Verilog identifier, not {name!r}")
    if for_simulation:
        with _zero_memories_uninitialised():
            text = verilog.convert(component, name=name, emit_src=False)
    else:
        text = verilog.convert(component, name=name, emit_src=False)
    modules = getattr(component, "verilog_modules", None)
    for module_name, module in (modules() if modules else {}).items():
        text += "\n" + component_to_verilog(module, module_name, for_simulation=for_simulation)
    return text

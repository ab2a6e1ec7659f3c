"""Turn an Amaranth component into Verilog text."""

from amaranth.back import verilog
from amaranth.lib import wiring


__all__ = ["component_to_verilog"]


def component_to_verilog(component, name):
    """Verilog for ``component`` with top-level module ``name``.

    Ports come from the component's signature, flattened by Amaranth with ``__``
    (``i__payload``, ``o__valid``); the ``sync`` domain becomes ``clk`` and ``rst``.
    Source locations are left out so that the text (and every cache key derived
    from it) is the same in every checkout.

    A component that instantiates Verilog modules of its own (an ``Instance`` of
    a shared module, such as the systolic array's PE) lists them in a
    ``verilog_modules()`` method returning ``{module_name: component}``; they are
    converted and appended, so the text is complete.
    """
    if not isinstance(component, wiring.Component):
        raise TypeError(f"Expected an amaranth.lib.wiring.Component, not {component!r}")
    if not name.isidentifier():
        raise ValueError(f"Module name must be a Verilog identifier, not {name!r}")
    text = verilog.convert(component, name=name, emit_src=False)
    modules = getattr(component, "verilog_modules", None)
    for module_name, module in (modules() if modules else {}).items():
        text += "\n" + component_to_verilog(module, module_name)
    return text

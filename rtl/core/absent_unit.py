"""A stand-in for a unit that a core configuration leaves out."""

from amaranth.hdl import Module
from amaranth.lib import wiring


__all__ = ["AbsentUnit"]


class AbsentUnit(wiring.Component):
    """The ports of ``unit`` with nothing behind them: every output keeps its initial value
    (streams are never valid and never ready). The core rejects the instructions that
    would use the unit before they start (BAD_FIELD), so nothing ever waits on it.

    ``unit`` is only a template for the ports and is never elaborated.
    """

    def __init__(self, unit):
        signature = unit.signature
        unit._MustUse__silence = True   # the template is never built
        super().__init__(signature)

    def elaborate(self, platform):
        return Module()

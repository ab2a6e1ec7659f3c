"""The external memory port: burst reads and writes of ``lanes``-byte words."""

from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["MemoryRequest", "memory_port_signature"]


#: A burst: ``len`` consecutive words from word address ``addr``.
MemoryRequest = data.StructLayout({"addr": 32, "len": 16})


def memory_port_signature(word_bits):
    """The port as the core (the initiator) sees it.

    - ``rd_req``: a read burst; the memory answers with ``len`` words on ``rd_data``,
      bursts in request order (any latency, any gaps).
    - ``wr_req`` and ``wr_data``: a write burst and its ``len`` words; the memory
      answers each burst with one ``wr_ack`` transfer once its words are written
      (visible to later reads).
    """
    return wiring.Signature({
        "rd_req": Out(stream.Signature(MemoryRequest)),
        "rd_data": In(stream.Signature(word_bits)),
        "wr_req": Out(stream.Signature(MemoryRequest)),
        "wr_data": Out(stream.Signature(word_bits)),
        "wr_ack": In(stream.Signature(1)),
    })

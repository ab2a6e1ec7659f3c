# amaranth: UnusedElaboratable=no
"""Host link: parameter checks of the UART and bridge constructors (objects that fail to
construct are never elaborated, hence the linter option above)."""

import pytest
from amaranth.hdl import Fragment
from amaranth.lib import data

from rtl.link.bridge import HostBridge, RegWrite
from rtl.link.uart import UartRx, UartTx
from rtl.link.uart_bridge import UartHostBridge


@pytest.mark.parametrize("cls", [UartRx, UartTx])
@pytest.mark.parametrize("divisor", [3, 0, -4, 4.0, "8", True])
def test_uart_rejects_divisor(cls, divisor):
    with pytest.raises(ValueError, match="Divisor"):
        cls(divisor)


@pytest.mark.parametrize("kwargs,match", [
    (dict(word_bytes=3), "power of two"),
    (dict(word_bytes=0), "Word size"),
    (dict(word_bytes=256), "Word size"),
    (dict(memory_words=0), "Memory size"),
    (dict(memory_words=(1 << 32) + 1), "Memory size"),
    (dict(register_count=0), "Register count"),
    (dict(register_count=(1 << 16) + 1), "Register count"),
    (dict(max_payload=15), "Maximum payload"),            # below one instruction
    (dict(word_bytes=64, max_payload=67), "Maximum payload"),  # below address + one word
    (dict(max_payload=1 << 16), "Maximum payload"),
    (dict(timeout_cycles=1), "Timeout"),
])
def test_bridge_rejects_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HostBridge(**kwargs)


def test_uart_bridge_rejects_parameters():
    with pytest.raises(ValueError, match="Divisor"):
        UartHostBridge(2)
    with pytest.raises(ValueError, match="2 byte times"):
        UartHostBridge(16, timeout_cycles=100)
    with pytest.raises(ValueError, match="power of two"):
        UartHostBridge(4, word_bytes=12)


def test_bridge_ports():
    dut = HostBridge(word_bytes=8, memory_words=100, register_count=5)
    assert dut.mem_write.payload.shape() == data.StructLayout({"address": 32, "data": 64})
    assert dut.mem_read_data.payload.shape().width == 64
    assert dut.insn.payload.shape().width == 128
    assert dut.reg_write.payload.shape() == data.Layout.cast(RegWrite)
    assert (dut.word_bytes, dut.memory_words, dut.register_count) == (8, 100, 5)
    Fragment.get(dut, None).prepare()
    top = UartHostBridge(4, word_bytes=8)
    assert set(top.signature.members) >= {"rx", "tx", "mem_write", "insn", "framing_errors"}
    Fragment.get(top, None).prepare()


def test_bridge_instruction_size():
    dut = HostBridge(insn_bytes=32)
    assert dut.insn.payload.shape().width == 256 and dut.insn_bytes == 32
    Fragment.get(dut, None).prepare()
    with pytest.raises(ValueError, match="Instruction size in bytes must be a power of two"):
        HostBridge(insn_bytes=24)
    with pytest.raises(ValueError, match="Maximum payload"):
        HostBridge(insn_bytes=64, max_payload=63)

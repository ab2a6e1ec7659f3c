"""The ULX3S 85F board (Lattice ECP5 LFE5U-85F, 25 MHz oscillator)."""

from amaranth_boards.ulx3s import ULX3S_85F_Platform

from .board_top import BoardSpec


__all__ = ["ULX3S"]


#: LED 0 blinks (heartbeat), LED 1 shows the payload's sticky error; UART on the
#: FTDI FT231X (USB port US1), which also configures the FPGA over JTAG.
ULX3S = BoardSpec(
    name="ulx3s",
    platform=ULX3S_85F_Platform,
    family="ecp5",
    clock="clk25",
    clock_mhz=25,
    heartbeat_led=0,
    error_led=1,
)

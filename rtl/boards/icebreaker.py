"""The iCEBreaker board (Lattice iCE40 UltraPlus UP5K, 12 MHz oscillator on the PLL pad)."""

from amaranth_boards.icebreaker import ICEBreakerPlatform

from .board_top import BoardSpec


__all__ = ["ICEBREAKER"]


#: The green LED (``led`` 1) blinks (heartbeat), the red one (``led`` 0) shows the
#: payload's sticky error; UART on channel B of the FT2232H, whose channel A
#: programs the SPI flash.
ICEBREAKER = BoardSpec(
    name="icebreaker",
    platform=ICEBreakerPlatform,
    family="ice40",
    clock="clk12",
    clock_mhz=12,
    heartbeat_led=1,
    error_led=0,
)

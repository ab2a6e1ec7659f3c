"""Board tops: a PLL, reset, UART pins, status LEDs and a pluggable payload per board."""

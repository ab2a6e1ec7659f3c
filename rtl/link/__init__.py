"""The host link: a UART and a framed request/response protocol (``docs/link.md``).

- :mod:`.uart`: 8N1 receiver and transmitter (:class:`UartRx`, :class:`UartTx`);
- :mod:`.crc16`: the CRC-16/CCITT-FALSE byte update as combinational logic;
- :mod:`.bridge`: :class:`HostBridge`, frames on a byte stream to memory, register and
  instruction streams;
- :mod:`.uart_bridge`: :class:`UartHostBridge`, the bridge behind a UART (the board top).
"""

"""Pack and unpack stream payloads by their Amaranth layout.

Amaranth exports a struct payload as one flat vector, first field in the low
bits. These helpers turn dicts of NumPy arrays (one array per field) into lists of
Python integers (one flat payload per element) and back, so golden models and
testbenches speak in fields while the simulators see bits.
"""

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data


__all__ = ["fields_of", "payload_width", "pack", "unpack"]


def _layout(layout):
    if isinstance(layout, type) and issubclass(layout, data.Struct):
        layout = data.Layout.cast(layout)
    if not isinstance(layout, data.StructLayout):
        raise TypeError(f"Expected a StructLayout or Struct class, not {layout!r}")
    return layout


def fields_of(layout):
    """``[(name, offset, width, signed)]`` for each field of a struct layout."""
    result = []
    for name, field in _layout(layout):
        shape = Shape.cast(field.shape)
        result.append((name, field.offset, shape.width, shape.signed))
    return result


def payload_width(layout):
    return _layout(layout).size


def pack(layout, fields):
    """Flat payload integers from a dict of per-field arrays (broadcast together).

    Values must fit their fields; a signed field takes negative numbers. Fields
    not given are zero.
    """
    spec = fields_of(layout)
    unknown = set(fields) - {name for name, *_ in spec}
    if unknown:
        raise KeyError(f"No field(s) {sorted(unknown)} in {layout!r}")
    arrays = {name: np.asarray(value) for name, value in fields.items()}
    size = np.broadcast(*arrays.values()).size if arrays else 0
    packed = [0] * size
    for name, offset, width, signed in spec:
        if name not in arrays:
            continue
        values = np.broadcast_to(arrays[name], (size,)).tolist()
        low, high = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
        mask = (1 << width) - 1
        for index, value in enumerate(values):
            value = int(value)
            if not low <= value <= high:
                raise ValueError(f"Field {name!r} value {value} does not fit in "
                                 f"{'signed' if signed else 'unsigned'}({width})")
            packed[index] |= (value & mask) << offset
    return packed


def unpack(layout, payloads):
    """A dict of per-field int64 arrays (object arrays past 63 bits) from payload integers."""
    spec = fields_of(layout)
    payloads = [int(p) for p in payloads]
    result = {}
    for name, offset, width, signed in spec:
        mask = (1 << width) - 1
        values = [(p >> offset) & mask for p in payloads]
        if signed:
            values = [v - (1 << width) if v >> (width - 1) else v for v in values]
        result[name] = np.array(values, dtype=np.int64 if width <= 63 else object)
    return result


def pack_lanes(lanes, width):
    """Flat integers from a 2-D array of lane values (lane 0 in the low bits).

    For ``lib.data.ArrayLayout(width, n)`` payloads such as a row of 8-bit codes.
    """
    lanes = np.asarray(lanes)
    if lanes.ndim != 2:
        raise ValueError(f"lanes must be 2-D (transfers x lanes), not shape {lanes.shape}")
    mask = (1 << width) - 1
    packed = []
    for row in lanes.tolist():
        value = 0
        for i, lane in enumerate(row):
            value |= (int(lane) & mask) << (i * width)
        packed.append(value)
    return packed


def unpack_lanes(payloads, width, count, offset=0):
    """A (transfers x count) uint64 array of ``count`` lanes of ``width`` bits each,
    starting at bit ``offset`` of each flat payload."""
    mask = (1 << width) - 1
    return np.array([[(int(p) >> (offset + i * width)) & mask for i in range(count)]
                     for p in payloads], dtype=np.uint64).reshape(len(payloads), count)

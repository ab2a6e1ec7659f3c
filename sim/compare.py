"""Compare field dicts from the RTL with the golden model's, and explain mismatches."""

import numpy as np


__all__ = ["assert_fields_equal"]


def assert_fields_equal(got, expected, *, inputs=None, what="output", show=8):
    """Fail with the first ``show`` mismatching elements if any field differs.

    ``got`` and ``expected`` are dicts of equal-length arrays (as from
    :func:`sim.payload.unpack` and a golden model); only the fields in
    ``expected`` are compared. ``inputs`` (a dict of arrays) is printed beside each
    mismatch.
    """
    lengths = {len(np.asarray(v)) for v in got.values()} | {len(np.asarray(v)) for v in expected.values()}
    if len(lengths) != 1:
        raise AssertionError(f"{what}: field lengths differ: {sorted(lengths)}")
    bad = np.zeros(lengths.pop(), dtype=bool)
    for name, value in expected.items():
        bad |= np.asarray(got[name]) != np.asarray(value)
    mismatches = np.flatnonzero(bad)
    if len(mismatches):
        lines = []
        for index in mismatches[:show]:
            row_in = {k: np.asarray(v)[index].item() for k, v in (inputs or {}).items()}
            row_got = {k: np.asarray(got[k])[index].item() for k in expected}
            row_exp = {k: np.asarray(v)[index].item() for k, v in expected.items()}
            lines.append(f"  [{index}] in {row_in}\n      got      {row_got}\n      expected {row_exp}")
        raise AssertionError(f"{what}: {len(mismatches)} of {len(bad)} mismatches\n" + "\n".join(lines))

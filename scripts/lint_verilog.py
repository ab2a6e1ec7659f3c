"""`make lint`: export every unit and run `verilator --lint-only -Wall` on it (waivers: sim/lint.py)."""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtl.units import UNITS  # noqa: E402
from sim.lint import LINT_WAIVERS, lint_verilog  # noqa: E402
from sim.verilog import component_to_verilog  # noqa: E402


def main():
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, factory in UNITS.items():
            path = Path(tmp) / f"{name}.v"
            path.write_text(component_to_verilog(factory(), name))
            ok, messages = lint_verilog(path)
            print(f"{'ok  ' if ok else 'FAIL'} {name}")
            for line in messages:
                print(f"     {line}")
            if not ok:
                failed.append(name)
    print(f"waived: {', '.join(LINT_WAIVERS)} (reasons in sim/lint.py)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

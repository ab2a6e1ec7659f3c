"""`make verilog`: write build/verilog/<unit>.v for every top-level unit in rtl/units.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jalapeno.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["verilog", *sys.argv[1:]]))

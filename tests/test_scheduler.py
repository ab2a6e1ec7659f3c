"""Dynamic-batching scheduler: randomized traffic on Verilator, checked against the
reference policy (every decision) and every invariant of the specification."""

import pytest

from rtl.scheduler import Scheduler
from sim.cocotb_runner import run_cocotb


@pytest.mark.cocotb
@pytest.mark.parametrize("seed,pattern,work_conserving", [
    (1, "steady", 1), (2, "bursty", 1), (3, "bursty", 0),
])
def test_randomized_traffic_verilator(seed, pattern, work_conserving):
    run_cocotb(Scheduler(queue_depth=16, max_inflight=4), name="scheduler_16",
               test_module="tests.benches.tb_scheduler",
               extra_env={"DEPTH": 16, "INFLIGHT": 4, "SEED": seed, "REQUESTS": 10000,
                          "PATTERN": pattern, "WORK_CONSERVING": work_conserving})

"""Peak RSS per stage (bqq_deploy.memory, the report's peak_rss_mib): a stage's peak is its
own (the kernel's high-water mark is reset when it starts), and a stage entered once per
group of layers adds its times and keeps its highest peak."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bqq_deploy.memory import Stages, peak_rss_mib, reset_peak

MIB = 2**20


@pytest.mark.skipif(not reset_peak(), reason="this system cannot reset the peak RSS "
                    "(/proc/self/clear_refs): per-stage peaks are the process's")
def test_each_stage_reports_its_own_peak_and_repeats_add_up():
    stages = Stages()
    with stages("big"):
        block = np.ones(256 * MIB // 8)  # 256 MiB, every page touched
        del block
    with stages("small"):
        time.sleep(0.01)
    with stages("small"):
        time.sleep(0.01)
    # The 256 MiB block was resident during "big" only; the margins leave room for the
    # interpreter's own allocations (a few MiB).
    assert stages.peak_rss_mib["big"] >= stages.peak_rss_mib["small"] + 200
    assert stages.peak_rss_mib["small"] <= peak_rss_mib() + 16
    assert list(stages.seconds) == ["big", "small"] and stages.seconds["small"] >= 0.02

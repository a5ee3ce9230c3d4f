"""bench/resources_measure.py: stage windows from the run's lines, peaks inside them, the process breakdown."""

from __future__ import annotations

import os

import psutil

from bench.resources_measure import STAGE_LINE, Measurement, Sample, stage_windows, tree_pss


def test_stage_lines_and_windows():
    assert STAGE_LINE.match("12:00:01 pretrain               started   (no earlier output)").groups() == \
        ("pretrain", "started")
    assert STAGE_LINE.match("12:00:09 evaluate.gqa           ran        8.0s  accuracy=0.5").groups() == \
        ("evaluate.gqa", "ran")
    m = Measurement(windows={"evaluate.gqa": (10.0, 12.0), "evaluate.pope": (11.0, 15.0), "export": (16.0, 17.0)})
    assert stage_windows(m) == {"evaluate": (10.0, 15.0), "export": (16.0, 17.0)}


def test_peaks_inside_a_window_and_the_breakdown_at_it():
    m = Measurement(samples=[Sample(1.0, 100, 5, {"a": (1, 100)}), Sample(2.0, 300, 7, {"a": (1, 200), "b": (2, 100)}),
                             Sample(3.0, 200, 9, {"a": (1, 200)})], windows={"s": (2.5, 3.5)})
    assert m.peak("memory") == 300 and m.peak("memory", "s") == 200 and m.peak("disk", "s") == 9
    assert m.breakdown() == {"a": (1, 200), "b": (2, 100)} and m.breakdown("s") == {"a": (1, 200)}


def test_tree_pss_counts_this_process():
    procs = tree_pss(psutil.Process(os.getpid()))
    assert sum(n for n, _ in procs.values()) >= 1 and sum(b for _, b in procs.values()) > 10 * 2**20

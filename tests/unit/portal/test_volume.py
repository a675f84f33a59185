"""Stored volume over time: the samples the gateway keeps and how the chart reads them."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from medmesh.portal.network import NodeView, size_text, volume_of
from medmesh.portal.plot import Series, line_chart
from medmesh.portal.volume import KEEP_SECONDS, Sample, VolumeLog, VolumeSampler, levels


def test_levels_carry_the_newest_sample_and_start_at_the_first() -> None:
    samples = [Sample(30.0, 100, 3, 3), Sample(40.0, 150, 3, 3), Sample(80.0, 90, 2, 3)]
    # intervals end at 25, 50, 75, 100: none before the first sample, then the newest so far
    assert levels(samples, start=0.0, end=100.0, count=4) == [
        (50.0, 150.0),
        (75.0, 150.0),
        (100.0, 90.0),
    ]
    assert levels([], start=0.0, end=100.0, count=4) == []
    # a sample exactly on an interval's end belongs to it
    assert levels([Sample(25.0, 7, 1, 1)], start=0.0, end=100.0, count=4)[0] == (25.0, 7.0)


def test_log_keeps_samples_in_order_skips_close_ones_and_drops_old_ones(tmp_path: Path) -> None:
    log = VolumeLog(tmp_path / "portal.db")
    assert log.add(Sample(1000.0, 10, 1, 1))
    assert not log.add(Sample(1005.0, 20, 1, 1), min_gap=10.0)  # too soon after the last
    assert log.add(Sample(1010.0, 30, 1, 1), min_gap=10.0)
    assert [s.bytes_used for s in log.samples()] == [10, 30]
    assert [s.at for s in log.samples(since=1001.0)] == [1010.0]
    later = 1010.0 + KEEP_SECONDS + 1
    assert log.add(Sample(later, 40, 2, 2))
    assert [s.at for s in log.samples()] == [later]  # the two old ones are gone
    log.close()
    again = VolumeLog(tmp_path / "portal.db")  # kept on disk
    assert again.samples() == [Sample(later, 40, 2, 2)]
    again.close()


def test_a_sample_is_numbers_only(tmp_path: Path) -> None:
    log = VolumeLog(tmp_path / "portal.db")
    log.add(Sample(1.0, 2, 3, 4))
    log.close()
    with sqlite3.connect(tmp_path / "portal.db") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(volume)")]
    assert columns == ["at", "bytes_used", "nodes_up", "nodes"]


def test_volume_counts_only_nodes_that_answered() -> None:
    nodes = [
        NodeView("http://127.0.0.1:1", True, "a", 3, 2048),
        NodeView("http://127.0.0.1:2", False),
        NodeView("http://127.0.0.1:3", True, "c", 1, 1024),
    ]
    assert volume_of(nodes) == (3072, 2, 3)
    assert volume_of([]) == (0, 0, 0)
    assert [size_text(n) for n in (512, 2048, 5 * 1024**2, 3 * 1024**3)] == [
        "512 B",
        "2.0 KB",
        "5.0 MB",
        "3.0 GB",
    ]


def test_sampler_samples_until_stopped_and_survives_a_failing_probe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    log = VolumeLog(tmp_path / "portal.db", clock=lambda: now[0])
    answers: list[tuple[int, int, int] | Exception] = [(100, 1, 1), OSError("gone"), (300, 2, 2)]
    stop = threading.Event()

    def probe() -> tuple[int, int, int]:
        answer = answers.pop(0)
        now[0] += 60.0
        if not answers:
            stop.set()
        if isinstance(answer, Exception):
            raise answer
        return answer

    VolumeSampler(log, probe, every=0.0).run(stop)
    assert [(s.bytes_used, s.nodes_up) for s in log.samples()] == [(100, 1), (300, 2)]
    assert "sample skipped: OSError" in caplog.text
    log.close()


def test_chart_axis_reads_in_the_series_unit() -> None:
    svg = line_chart("v", [Series("stored", [(0.0, 0.0), (1.0, 2048.0)], "stored", size_text)])
    assert ">2.0 KB<" in svg and ">0 B<" in svg
    assert "stored: 2.0 KB at the end" in svg

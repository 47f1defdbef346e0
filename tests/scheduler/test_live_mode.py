"""The live migration mode rule: by memory size when that settles it, else by the measured dirty rate."""

from __future__ import annotations

from metavmm.scheduler.live_mode import AUTO_CONVERGE, POSTCOPY, PRECOPY, by_dirty_rate, by_size

BOTH = frozenset({AUTO_CONVERGE, POSTCOPY})


def test_a_small_domain_is_pre_copied_without_measuring() -> None:
    choice = by_size(64, 400.0, BOTH)
    assert choice is not None and choice.mode == PRECOPY
    assert "64 MiB" in choice.why and "400 MiB/s" in choice.why and "0.16 s" in choice.why


def test_a_large_domain_or_an_unknown_size_is_measured_first() -> None:
    assert by_size(1024, 400.0, BOTH) is None  # 2.6 s a pass: the dirty rate decides
    assert by_size(0, 400.0, BOTH) is None  # size unknown (a flavor's shape)


def test_nothing_to_choose_is_pre_copy_whatever_the_size() -> None:
    choice = by_size(65536, 25.0, frozenset())
    assert choice is not None and choice.mode == PRECOPY and "neither" in choice.why


def test_a_quiet_guest_is_pre_copied() -> None:
    choice = by_dirty_rate(1024, 400.0, 40.0, BOTH)
    assert choice.mode == PRECOPY and "10% of the 400 MiB/s link" in choice.why
    assert by_dirty_rate(1024, 400.0, 60.0, BOTH).mode == AUTO_CONVERGE  # 15%: a measured rate is a lower bound


def test_a_busy_guest_is_throttled_only_as_much_as_needed() -> None:
    choice = by_dirty_rate(1024, 400.0, 200.0, BOTH)  # half the link: pre-copy would converge slowly
    assert choice.mode == AUTO_CONVERGE and "converge slowly" in choice.why
    assert choice.initial_throttle == 80  # 200 MiB/s throttled by 80% is 40 MiB/s: 10% of the link
    assert choice.as_params()["auto_converge_initial"] == 80


def test_a_guest_faster_than_the_link_goes_post_copy_where_offered() -> None:
    choice = by_dirty_rate(1024, 25.0, 300.0, BOTH)
    assert choice.mode == POSTCOPY and "never converge" in choice.why and "41 s" in choice.why
    fallback = by_dirty_rate(1024, 25.0, 300.0, {AUTO_CONVERGE})  # no post-copy: throttle hard from the start
    assert fallback.mode == AUTO_CONVERGE and fallback.initial_throttle == 99  # QEMU's ceiling


def test_post_copy_alone_serves_a_slowly_converging_guest() -> None:
    assert by_dirty_rate(1024, 400.0, 200.0, {POSTCOPY}).mode == POSTCOPY
    assert by_dirty_rate(1024, 400.0, 200.0, ()).mode == PRECOPY

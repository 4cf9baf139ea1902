"""Hold ids are time-ordered UUIDs (version 7): new holds and their usage records land at
the end of their indexes, whatever the size of the tables (bench/README.md, Scale)."""

import time
import uuid

from metering.authorize import hold_id_new


def test_hold_ids_are_version_7_uuids_ordered_by_time():
    # given ids made a millisecond apart, and many made at once
    first = hold_id_new()
    time.sleep(0.002)
    later = [hold_id_new() for _ in range(1000)]
    # then each is a version 7 UUID of the RFC variant, later ones sort after earlier ones,
    # and ids made in the same millisecond still differ (74 random bits)
    assert {i.version for i in [first, *later]} == {7}
    assert {i.variant for i in [first, *later]} == {uuid.RFC_4122}
    assert all(first < i for i in later)
    assert len(set(later)) == 1000
    # and the first 48 bits are the time in milliseconds
    assert abs((first.int >> 80) - time.time_ns() // 1_000_000) < 5_000

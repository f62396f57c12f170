"""The waiting room's policy: arrival order, small jobs past a head that does not fit, no starvation."""

from __future__ import annotations

from dataclasses import dataclass

from openvertex.backends.local.scheduling import WaitingRoom


@dataclass(eq=False)
class Job:
    name: str
    candidates: int = 1


def room(*jobs: Job, max_bypasses: int = 2) -> WaitingRoom[Job]:
    waiting: WaitingRoom[Job] = WaitingRoom(max_bypasses=max_bypasses)
    for job in jobs:
        waiting.add(job)
    return waiting


def test_jobs_start_in_arrival_order_while_they_fit() -> None:
    a, b, c = Job("a"), Job("b", 2), Job("c")
    waiting = room(a, b, c)
    assert [waiting.take(4), waiting.take(3), waiting.take(1)] == [a, b, c]
    assert waiting.take(8) is None and len(waiting) == 0


def test_a_small_job_goes_past_a_head_that_does_not_fit() -> None:
    big, small = Job("big", 4), Job("small")
    waiting = room(big, small)
    assert waiting.take(3) is small
    assert list(waiting) == [big]
    assert waiting.take(3) is None  # nothing else fits
    assert waiting.take(4) is big


def test_the_head_is_passed_a_bounded_number_of_times() -> None:
    big = Job("big", 4)
    smalls = [Job(f"s{i}") for i in range(4)]
    waiting = room(big, *smalls, max_bypasses=2)
    assert [waiting.take(1), waiting.take(1)] == smalls[:2]
    # The bound is reached: the free slots are kept for the head until it starts.
    assert waiting.take(3) is None
    assert waiting.take(4) is big
    # A new head gets its own count.
    assert waiting.take(1) is smalls[2]


def test_a_new_head_after_the_old_one_leaves_starts_a_new_count() -> None:
    big, other_big = Job("big", 4), Job("other", 4)
    smalls = [Job(f"s{i}") for i in range(3)]
    waiting = room(big, other_big, *smalls, max_bypasses=1)
    assert waiting.take(2) is smalls[0]
    assert waiting.take(2) is None
    waiting.discard(lambda job: job is big)  # its client went away
    assert waiting.take(2) is smalls[1]
    assert waiting.take(2) is None
    assert waiting.take(4) is other_big

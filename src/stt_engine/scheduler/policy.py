"""The scheduler's choices, as pure functions over plain values: testable without threads, models or audio.

Who goes next: live sessions before interactive files before background jobs (`Priority`); within a priority,
round-robin over requests, so a 10 s clip waits for one window of a one-hour file that came first, not for all of
them. What goes together: only windows with equal batch keys (every decoding option but the language), and a
warm-up never with anyone. How many: a worker takes its fair share of what is ready, so one long request still
spreads over every idle worker. Priorities are not absolute: a request that has waited `STARVE_AFTER_SECONDS` since
it was last served moves up a level (`effective_priority`), so a flood of live sessions slows files and jobs down
but never stops them.

Short before long (issue 18): a request with at most `SHORT_SECONDS` of audio left to decode goes ahead of longer
ones at the same level, so a 9 s clip behind 64 five-minute uploads starts within one window instead of after a
round of all of them. The long ones are not starved: while they have ready windows, every `LONG_TURN_EVERY`-th
batch is theirs whatever short work is waiting (`long_turn_due`). The same shortest-first order, bounded by age,
decides which upload takes a free decoding slot and which request's VAD runs next (`slot_rank`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import IntEnum


class Priority(IntEnum):
    """Higher runs first. Live sessions need partial text within a second; jobs can wait."""

    JOB = 0
    FILE = 1
    LIVE = 2


STARVE_AFTER_SECONDS = 10.0
SHORT_SECONDS = 30.0  # audio left to decode at or under which a request goes ahead of longer ones
LONG_TURN_EVERY = 3  # while long requests have ready windows, at least one batch in this many is theirs
SHORT_RESERVE = 0.125  # share of the queue's bounds (requests, audio seconds) that only short requests may fill
SLOT_SECONDS_PER_AUDIO_SECOND = 0.1  # decode slots and VAD: how much sooner a shorter file is served, per second
SLOT_MAX_HEADSTART = 30.0  # ... and at most this much: no upload waits more than this longer than in FIFO order


def effective_priority(priority: int, waited: float, starve_after: float = STARVE_AFTER_SECONDS) -> int:
    """A request's priority after waiting `waited` seconds unserved: one level up per `starve_after` seconds, at most
    live's. Within a level, round-robin then serves the one served least recently first."""
    return min(int(Priority.LIVE), priority + int(max(0.0, waited) // starve_after))


@dataclass(frozen=True)
class Candidate:
    """One ready window: which request (ticket) it belongs to, its stream's index there, and its batch key."""

    ticket: int
    stream: int
    key: Hashable


def admits(duration: float, waiting: int, queued: float, max_requests: int, max_seconds: float) -> bool:
    """Whether a request of `duration` s fits the queue, which holds `waiting` requests and `queued` s of audio.

    Both bounds count. A long request may fill them only up to `1 - SHORT_RESERVE`, so a queue full of long
    uploads still admits short requests (which the order above then serves first); a long file larger than that
    share still gets in when nothing else is queued."""
    if waiting >= max_requests or queued + duration > max_seconds:
        return False
    if is_short(duration):
        return True
    reserved_requests = math.floor(max_requests * SHORT_RESERVE)
    within = waiting < max_requests - reserved_requests and queued + duration <= max_seconds * (1 - SHORT_RESERVE)
    return within or (waiting == 0 and queued == 0)


def level(priority: int, top: int) -> int:
    """The level a request competes at: its effective priority, but never above the highest base priority that
    has ready work. Aging exists to pass higher levels; among equals it would only reorder by age, which would
    put every long file that waited a while ahead of a short one that just came."""
    return min(priority, top)


def is_short(remaining_seconds: float) -> bool:
    return remaining_seconds <= SHORT_SECONDS


def long_turn_due(short_in_a_row: int) -> bool:
    """After `LONG_TURN_EVERY - 1` batches in a row went to short requests while long ones waited, the next is a
    long one's: short requests take at most that share from long ones, which therefore always progress."""
    return short_in_a_row >= LONG_TURN_EVERY - 1


@dataclass(frozen=True)
class Turn:
    """A request's place in line: level first, then short before long (unless a long turn is due), then who was
    served least recently, then who came first."""

    ticket: int
    priority: int
    last_served: int
    seq: int
    short: bool = False

    def order(self, long_first: bool = False) -> tuple[int, int, int, int]:
        return (-self.priority, int(self.short == long_first), self.last_served, self.seq)


def fair_share(ready: int, batch_size: int, idle_workers: int) -> int:
    """How many windows one worker takes: its share of what is ready among the idle workers, at most a batch."""
    return max(1, min(batch_size, math.ceil(ready / max(1, idle_workers))))


def pick_batch(
    candidates: Sequence[Candidate], turns: Sequence[Turn], size: int, long_first: bool = False
) -> list[Candidate]:
    """Up to `size` ready windows for one batch (`long_first`: a long request's turn is due, see `long_turn_due`).

    The request whose turn it is gives the first window (its lowest-numbered ready stream, so a request's text
    becomes final in order); that window's key decides which others may join. Then requests take turns, one window
    each per round, in the same order, until the batch is full or nothing compatible is left.
    """
    if not candidates or size <= 0:
        return []
    by_ticket: dict[int, list[Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: c.stream):
        by_ticket.setdefault(candidate.ticket, []).append(candidate)
    order = [t.ticket for t in sorted(turns, key=lambda t: t.order(long_first)) if t.ticket in by_ticket]
    order += [t for t in by_ticket if t not in order]  # a ticket without a turn record goes last
    key = by_ticket[order[0]][0].key
    queues = {t: [c for c in by_ticket[t] if c.key == key] for t in order}
    batch: list[Candidate] = []
    while len(batch) < size and any(queues.values()):
        for ticket in order:
            if queues[ticket] and len(batch) < size:
                batch.append(queues[ticket].pop(0))
    return batch


def run_solo(chosen: int, ready: int, busy_workers: int) -> bool:
    """Whether a batch may use every core: it is all the work there is, and no other worker is decoding."""
    return chosen == ready and busy_workers == 0


def express(short_ready: bool, busy_workers: int, workers: int, long_busy: int, solo_free: bool) -> bool:
    """Whether a short request's window may start now on the all-cores instance, beside the workers: every worker
    is busy with a long request's window (one takes seconds), and the all-cores instance is idle. It costs the
    long windows a little speed for those seconds; a short request no longer waits for one of them to end."""
    return short_ready and solo_free and workers > 0 and busy_workers >= workers and long_busy >= workers


def next_at_gate(waiting: Sequence[tuple[int, float, int]], now: float) -> int:
    """Which of the batches waiting for a decoding slot shared by several models (`slots.CoreGate`) goes first:
    `waiting` is (priority, waiting since, arrival number) per batch; the highest `effective_priority` (so a job's
    batch waiting behind another model's live turns moves up as any request does), then the earliest. Its index."""
    return min(range(len(waiting)),
               key=lambda i: (-effective_priority(waiting[i][0], now - waiting[i][1]), waiting[i][2]))


def slot_rank(seconds: float | None, arrived: float) -> float:
    """Order of service for a limited resource (decoding slots, the VAD threads): lowest first. Arrival time plus
    `SLOT_SECONDS_PER_AUDIO_SECOND` per second of audio, at most `SLOT_MAX_HEADSTART` (unknown length: the most).
    So a 9 s file that comes 1 s after a 300 s one goes first, and no file waits more than `SLOT_MAX_HEADSTART`
    seconds longer than it would in arrival order, however many shorter ones come after it."""
    length = SLOT_MAX_HEADSTART if seconds is None else min(SLOT_MAX_HEADSTART,
                                                             max(0.0, seconds) * SLOT_SECONDS_PER_AUDIO_SECOND)
    return arrived + length

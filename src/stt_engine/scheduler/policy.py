"""The scheduler's choices, as pure functions over plain values: testable without threads, models or audio.

Who goes next: live sessions before interactive files before background jobs (`Priority`); within a priority,
round-robin over requests, so a 10 s clip waits for one window of a one-hour file that came first, not for all of
them. What goes together: only windows with equal batch keys (every decoding option but the language), and a
warm-up never with anyone. How many: a worker takes its fair share of what is ready, so one long request still
spreads over every idle worker. Priorities are not absolute: a request that has waited `STARVE_AFTER_SECONDS` since
it was last served moves up a level (`effective_priority`), so a flood of live sessions slows files and jobs down
but never stops them.
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


@dataclass(frozen=True)
class Turn:
    """A request's place in line: priority first, then who was served least recently, then who came first."""

    ticket: int
    priority: int
    last_served: int
    seq: int

    @property
    def order(self) -> tuple[int, int, int]:
        return (-self.priority, self.last_served, self.seq)


def fair_share(ready: int, batch_size: int, idle_workers: int) -> int:
    """How many windows one worker takes: its share of what is ready among the idle workers, at most a batch."""
    return max(1, min(batch_size, math.ceil(ready / max(1, idle_workers))))


def pick_batch(candidates: Sequence[Candidate], turns: Sequence[Turn], size: int) -> list[Candidate]:
    """Up to `size` ready windows for one batch.

    The request whose turn it is gives the first window (its lowest-numbered ready stream, so a request's text
    becomes final in order); that window's key decides which others may join. Then requests take turns, one window
    each per round, in the same order, until the batch is full or nothing compatible is left.
    """
    if not candidates or size <= 0:
        return []
    by_ticket: dict[int, list[Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: c.stream):
        by_ticket.setdefault(candidate.ticket, []).append(candidate)
    order = [t.ticket for t in sorted(turns, key=lambda t: t.order) if t.ticket in by_ticket]
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

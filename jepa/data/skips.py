"""Bad data: skip it, count it by kind, log it (rate limited), and stop a stream that is mostly bad.

A `SkipLog` lives in each DataLoader worker (and, for evaluation, one more in the main process that
merges the workers' tallies). Every decoded sample calls `ok()`, every skipped shard or sample calls
`skip(kind, url, key, message)`. The counts since the previous batch travel with each batch
(`take()`), because workers are separate processes and the training loop must see them.

Failing is never fatal for one sample, and never silent: each skip is counted and the first few of
each kind are logged with the shard and key, then one summary line per kind at most every
`log_every_s` seconds. What is fatal is a stream where almost nothing decodes: more than
`max_error_fraction` of the first `window` events (samples and shards) failing, or every one of
them, raises `UserError` naming the shards and the first errors. Nothing here ever sleeps.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

from jepa.errors import UserError

log = logging.getLogger("jepa.data")

KINDS = {
    "shard_open": "a shard that cannot be opened or holds no tar data",
    "tar_read": "a tar that breaks off mid-stream or lacks its end-of-archive marker (truncated or corrupt); "
                "the rest of that shard and the sample in progress are lost",
    "empty_member": "a sample with a zero-length member",
    "missing_key": "a sample without a media member of the expected kind (e.g. no jpg/png/webp in an image stream)",
    "bad_label": "a `cls`/`json` label that does not parse as an integer",
    "image_decode": "an image that does not decode (corrupt, truncated, unknown format)",
    "video_decode": "a video that does not decode (truncated mp4, no video stream, no frames)",
    "short_video": "a video shorter than one clip with data.short_video=skip",
}
"""Every kind of skip, with what it means (docs/data.md lists the same)."""

FIRST_ERRORS = 5
"""How many error descriptions a log keeps for the final error message..."""
FIRST_PER_KIND = 2
"""...and at most this many of one kind, so that different problems all get named."""


class SampleSkip(Exception):
    """Raised by decoding code for one bad sample; the stream catches it, counts it and goes on."""

    def __init__(self, kind: str, message: str):
        assert kind in KINDS, kind
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class SkipRecord:
    kind: str
    url: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.url} key {self.key}" if self.key else self.url
        return f"{self.kind} at {where}: {self.message}"


@dataclass(frozen=True)
class SkipState:
    """What a `SkipLog` must carry over a resume: its counts and whether its budget was judged."""

    ok: int = 0
    totals: tuple[tuple[str, int], ...] = ()
    judged: bool = False


class SkipLog:
    """Counts, logs and budgets the skips of one stream (one worker, or the merged eval stream).

    `window=None` counts and logs only (an evaluation worker: the main process judges the sum).
    `state()` / `restore()` carry the counts and the budget over a resume; `muted()` ignores the
    skips met while a resumed stream re-reads what the saved counts already hold.
    """

    def __init__(self, *, max_error_fraction: float = 1.0, where: str = "", window: int | None = 1000,
                 log_first: int = 3, log_every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_error_fraction = max_error_fraction
        self.where = where
        self.window = window
        self.log_first = log_first
        self.log_every_s = log_every_s
        self.clock = clock
        self.ok_count = 0
        self.totals: Counter[str] = Counter()
        self.first: list[SkipRecord] = []
        self._since_batch: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._last_report: dict[str, float] = {}
        self._failed_urls: dict[str, None] = {}  # ordered set
        self._first_taken = 0
        self._judged = False
        self._muted = False

    @property
    def failed(self) -> int:
        return sum(self.totals.values())

    def ok(self, n: int = 1) -> None:
        self.ok_count += n

    def skip(self, kind: str, url: str, key: str, message: str) -> None:
        """Count one skipped sample or shard, log it (rate limited), stop if the budget is spent."""
        if self._muted:
            return
        record = SkipRecord(kind, url, key, message)
        self._count(record)
        self._log(record)
        self.check()

    def state(self) -> SkipState:
        return SkipState(self.ok_count, tuple(sorted(self.totals.items())), self._judged)

    def restore(self, state: SkipState) -> None:
        """Continue from a saved `state()` (counts and budget; the log's rate limiting starts anew)."""
        self.ok_count, self.totals, self._judged = state.ok, Counter(dict(state.totals)), state.judged

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        """Ignore skips inside the block: a resumed stream re-reading samples whose skips were counted."""
        self._muted = True
        try:
            yield
        finally:
            self._muted = False

    def take(self) -> dict[str, int]:
        """Skips since the previous call, by kind (what a batch carries to the main process)."""
        out, self._since_batch = dict(self._since_batch), Counter()
        return out

    def take_first(self) -> list[SkipRecord]:
        """First-error records not handed out yet (a worker sends them along for the error message)."""
        out = self.first[self._first_taken:]
        self._first_taken = len(self.first)
        return out

    def merge(self, counts: dict[str, int], ok: int, first: list[SkipRecord]) -> None:
        """Add a worker's tally (main process of an eval stream); logging happened in the worker."""
        self.ok_count += ok
        for kind, n in counts.items():
            self.totals[kind] += n
        for record in first:
            self._failed_urls.setdefault(record.url)
            self._keep(record)

    def check(self) -> None:
        """Raise `UserError` once the first `window` events hold too many failures (or only failures).

        Before the window is full it raises as soon as the failures alone exceed the budget; when it
        fills (a merge may step past it) the stream is judged once on what it has seen.
        """
        if self._judged or self.window is None:
            return  # the budget covers the start of a stream only; later skips are counted and logged
        events = self.ok_count + self.failed
        if events >= self.window:
            self._judge(events, "the first")
        elif self.failed > self.max_error_fraction * self.window:
            raise UserError(self._message(f"{self.failed} of the first {events} samples and shards failed"))

    def check_end(self) -> None:
        """For a finite stream that ended before its window filled: the same budget on all it saw."""
        events = self.ok_count + self.failed
        if events and not self._judged and self.window is not None:
            self._judge(events, "all")

    def _judge(self, events: int, which: str) -> None:
        self._judged = True
        if self.ok_count == 0 or self.failed > self.max_error_fraction * events:
            raise UserError(self._message(f"{self.failed} of {which} {events} samples and shards failed"))

    def _count(self, record: SkipRecord) -> None:
        self.totals[record.kind] += 1
        self._since_batch[record.kind] += 1
        self._failed_urls.setdefault(record.url)
        self._keep(record)

    def _keep(self, record: SkipRecord) -> None:
        same_kind = sum(r.kind == record.kind for r in self.first)
        if len(self.first) < FIRST_ERRORS and same_kind < FIRST_PER_KIND:
            self.first.append(record)

    def _log(self, record: SkipRecord) -> None:
        prefix = f"[{self.where}] " if self.where else ""
        if self.totals[record.kind] <= self.log_first:
            log.warning("%sskipped %s", prefix, record)
            self._last_report[record.kind] = self.clock()
            return
        self._unlogged[record.kind] += 1
        now = self.clock()
        if now - self._last_report.get(record.kind, 0.0) >= self.log_every_s:
            log.warning("%sskipped %d more %s (total %d); latest: %s", prefix, self._unlogged[record.kind],
                        record.kind, self.totals[record.kind], record)
            self._unlogged[record.kind] = 0
            self._last_report[record.kind] = now

    def _message(self, what: str) -> str:
        urls = list(self._failed_urls)
        shards = ", ".join(urls[:4]) + (f" (+{len(urls) - 4} more)" if len(urls) > 4 else "")
        firsts = "; ".join(str(r) for r in self.first)
        where = f" ({self.where})" if self.where else ""
        return (f"the data is unusable{where}: {what}, above data.max_error_fraction="
                f"{self.max_error_fraction}. Failing shards: {shards}. First errors: {firsts}. "
                f"Check the shards (e.g. `tar tvf SHARD`, decode a sample by hand) or the URLs in "
                f"data.sources / data.val_urls.")

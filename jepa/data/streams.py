"""Raw sample streams: shard URLs -> tar members grouped into samples -> resampled, shuffled, mixed.

Nothing here decodes pixels; a `RawSample` is the bytes of one sample's tar members. Shards are
opened with WebDataset's `gopen` (local paths, `file:`, `pipe:` commands, http via curl), so every
URL WebDataset accepts works here. Members are grouped into samples the WebDataset way: the key is
the member path up to the first dot of its file name, the rest is the extension (`a/b.seg.png` is
key `a/b`, extension `seg.png`).

Reading is done here rather than with `wds.tarfile_to_samples` so that each failure is classified
(`shard_open` vs `tar_read`) and reported with its shard and key, without WebDataset's handlers
(whose `warn_and_continue` sleeps half a second per error).
"""

from __future__ import annotations

import random
import tarfile
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls as wds_expand_urls
from webdataset.tariterators import base_plus_ext

from jepa.data.skips import SkipLog
from jepa.errors import UserError
from jepa.seeding import derive_seed


@dataclass
class RawSample:
    """One sample as stored: its shard, its key and the bytes of each member by (lowercase) extension."""

    url: str
    key: str
    members: dict[str, bytes] = field(default_factory=dict)


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Shard URLs from a brace pattern / `::`-separated string (WebDataset syntax) or a list."""
    out = wds_expand_urls(urls) if isinstance(urls, str) else [u for s in urls for u in wds_expand_urls(s)]
    out = [u.strip() for u in out if u.strip()]
    if not out:
        raise UserError(f"no shard URLs in {urls!r}: give e.g. /data/train-{{000000..000099}}.tar")
    return out


def read_shard(url: str, log: SkipLog) -> Iterator[RawSample]:
    """The samples of one tar shard, in order. Failures are counted in `log` and end the shard."""
    try:
        stream = gopen(url, "rb")
    except Exception as e:  # any scheme's open error: the shard is unusable, the stream goes on
        log.skip("shard_open", url, "", f"{type(e).__name__}: {e}")
        return
    current: RawSample | None = None
    seen = False
    reader = _TailReader(stream)
    try:
        tar = tarfile.open(fileobj=reader, mode="r|*")
        for info in tar:
            if not info.isreg():
                continue
            key, ext = base_plus_ext(info.name)
            if key is None or _is_meta(info.name):
                continue
            if current is not None and key != current.key:
                yield current
                current = None
            if current is None:
                current = RawSample(url=url, key=key)
            seen = True
            current.members[ext.lower()] = tar.extractfile(info).read()
            tar.members = []  # stream mode keeps every header otherwise: memory grows with the shard
        if seen and not reader.ended_cleanly():
            # tarfile takes a cut at a member boundary for the end of the archive; the last sample
            # may be missing members, so it goes too
            log.skip("tar_read", url, current.key if current else "",
                     "the tar stops without its end-of-archive marker (truncated?); its last sample is dropped")
            return
    except (tarfile.TarError, OSError, EOFError) as e:
        # before the first member the shard never worked; after it, the tar broke off
        kind = "tar_read" if seen else "shard_open"
        log.skip(kind, url, current.key if current else "", _describe(e, stream, url))
        return
    finally:
        _close(stream)
    if current is not None:
        yield current
    elif not seen:  # an endless resampled stream of empty shards would otherwise spin silently
        log.skip("shard_open", url, "", "the shard holds no samples")


class _TailReader:
    """A read-only stream that remembers the last bytes it returned (to check how a tar ends)."""

    END_MARKER = 2 * tarfile.BLOCKSIZE
    """A tar ends with two zero blocks (then zero padding to a full record)."""

    def __init__(self, stream):
        self._stream = stream
        self._tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._tail = (self._tail + data[-self.END_MARKER:])[-self.END_MARKER:]
        return data

    def ended_cleanly(self) -> bool:
        """Read to the end; True when the stream's last bytes are the end-of-archive marker."""
        while self.read(1 << 16):
            pass
        return self._tail == bytes(self.END_MARKER)


def _is_meta(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith("__") and base.endswith("__")


def _describe(e: BaseException, stream, url: str) -> str:
    text = f"{type(e).__name__}: {e}"
    close_error = _close(stream)
    status = getattr(stream, "status", None)  # set on a `pipe:` stream once its command has exited
    if status not in (None, 0):
        reason = f"`{url[len('pipe:'):]}` exited with status {status}"
        return reason if isinstance(e, OSError) else f"{reason} ({text})"  # OSError: the pipe's own
    return f"{text} ({close_error})" if close_error else text


def _close(stream) -> str:
    """Close a shard stream; returns what went wrong (e.g. a command cut off early on purpose)."""
    try:
        stream.close()
    except Exception as e:  # a pipe's non-zero exit: reported by _describe where it matters
        return f"{type(e).__name__}: {e}"
    return ""


def resampled_shards(urls: Sequence[str], rng: random.Random) -> Iterator[str]:
    """An endless stream of shards drawn with replacement; the same `rng` state gives the same stream."""
    while True:
        yield urls[rng.randrange(len(urls))]


def samples_of(shards: Iterator[str], log: SkipLog) -> Iterator[RawSample]:
    for url in shards:
        yield from read_shard(url, log)


def shuffled(samples: Iterator[RawSample], size: int, rng: random.Random) -> Iterator[RawSample]:
    """A shuffle buffer of `size` samples: fill, then emit a random one and put the next in its place."""
    buffer: list[RawSample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def mixed(streams: Sequence[Iterator[RawSample]], weights: Sequence[float],
          rng: random.Random) -> Iterator[RawSample]:
    """Endless streams interleaved at random in proportion to `weights`."""
    if len(streams) == 1:
        yield from streams[0]
        return
    choices = range(len(streams))
    while True:
        yield next(streams[rng.choices(choices, weights)[0]])


def stream_rng(*parts: object) -> random.Random:
    """A `random.Random` seeded by its parts (e.g. seed, rank, worker, epoch, purpose)."""
    return random.Random(derive_seed(*parts, purpose="jepa-data"))
"""Where the archive's lines go: JSON Lines shards of deterministic content.

A line is keyed by `records.record_key` (the image's sha256 and the model version); each key is kept
once and falls into a fixed shard by its hash, and each shard is written whole, sorted, through a
temporary file that is then renamed. A retried bundle or a re-run therefore rewrites the same bytes,
and no line appears twice.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from covidxray.archive.records import record_key

SHARD_NAME = "{prefix}-{kind}-{index:05d}-of-{count:05d}.jsonl"


def shard_of(key: str, count: int) -> int:
    """The shard of `key` among `count`: the same on every run and every worker."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) % count


def _canonical(line: dict[str, Any]) -> str:
    return json.dumps(line, sort_keys=True)


def _one_of(lines: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The line kept for a key seen more than once (the same image under two paths): the same every run."""
    return min(lines, key=lambda line: (line["path"], _canonical(line)))


class OncePerKey(beam.PTransform):  # type: ignore[misc]
    """Dict lines → (record_key, line), one per key."""

    def expand(self, lines: beam.PCollection) -> beam.PCollection:
        return (
            lines
            | "Key" >> beam.Map(lambda line: (record_key(line), line))
            | "Keep one" >> beam.CombinePerKey(_one_of)
        )


class WriteShards(beam.PTransform):  # type: ignore[misc]
    """Writes (key, line) pairs, one per key, to `PREFIX-KIND-NNNNN-of-MMMMM.jsonl` (every shard, empty
    ones too)."""

    def __init__(self, prefix: str, kind: str, shards: int):
        super().__init__()
        self.prefix, self.kind, self.shards = prefix, kind, shards

    def expand(self, unique: beam.PCollection) -> beam.PCollection:
        count = self.shards
        sharded = unique | "To shard" >> beam.Map(lambda item: (shard_of(item[0], count), item[1]))
        every = unique.pipeline | "Every shard" >> beam.Create([(i, None) for i in range(count)])
        return (
            {"lines": sharded, "shard": every}
            | "Group" >> beam.CoGroupByKey()
            | "Write" >> beam.ParDo(_WriteShard(self.prefix, self.kind, count))
        )


class _WriteShard(beam.DoFn):  # type: ignore[misc]
    """Writes one shard's lines, sorted by path, atomically; yields the shard's file name."""

    def __init__(self, prefix: str, kind: str, count: int):
        self.prefix, self.kind, self.count = prefix, kind, count

    def process(self, element: tuple[int, dict[str, list[Any]]]) -> Iterator[str]:
        index, grouped = element
        lines = sorted(grouped["lines"], key=lambda line: (line["path"], record_key(line)))
        path = SHARD_NAME.format(prefix=self.prefix, kind=self.kind, index=index, count=self.count)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with FileSystems.create(temporary, mime_type="application/jsonl") as out:
            for line in lines:
                out.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        FileSystems.rename([temporary], [path])
        yield path


def remove_stale_shards(prefix: str, kinds: Iterable[str], count: int) -> list[str]:
    """Delete the shards of an earlier run with another shard count (they would double-count); return them."""
    stale = []
    for kind in kinds:
        pattern = f"{prefix}-{kind}-*-of-*.jsonl"
        (result,) = FileSystems.match([pattern])
        ours = f"-of-{count:05d}.jsonl"
        stale += [m.path for m in result.metadata_list if not m.path.endswith(ours)]
    if stale:
        FileSystems.delete(stale)
    return stale

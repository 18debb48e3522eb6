"""Arrow stream files that preprocess writes in batches and reads back memory-mapped.

They let a corpus flow through cleaning, splitting, tokenizer training and packing without ever
being held in memory whole: what is in memory at once is one batch of text (or of tokens), plus
the 16-byte digests of the duplicate and leakage checks. `datasets.Dataset.from_file` opens the
same files (the Arrow IPC stream format is what `datasets` itself writes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

CHARS_PER_BATCH = 1 << 20  # text per Arrow record batch: what is in memory at once, writing or reading


class TextFile:
    """A column of texts on disk: `append` while writing, then `close`; iterating reads it back lazily,
    as often as needed."""

    schema = pa.schema([("text", pa.large_string())])

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._buffer: list[str] = []
        self._buffered_chars = 0
        self._count = 0
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer: pa.ipc.RecordBatchStreamWriter | None = pa.ipc.new_stream(self._sink, self.schema)

    def append(self, text: str) -> None:
        self._buffer.append(text)
        self._buffered_chars += len(text)
        self._count += 1
        if self._buffered_chars >= CHARS_PER_BATCH:
            self._flush()

    def close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._sink.close()
            self._writer = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        if self._writer is not None:
            raise RuntimeError(f"{self.path}: close the file before reading it")
        with pa.memory_map(str(self.path)) as source:
            for batch in pa.ipc.open_stream(source):
                yield from batch.column(0).to_pylist()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_batch(pa.record_batch([pa.array(self._buffer, pa.large_string())], self.schema))
            self._buffer, self._buffered_chars = [], 0


class BlockWriter:
    """Rows of `block_size` token ids (int32) written batch by batch to an Arrow stream file, and a
    fingerprint of their content (a `datasets` fingerprint would hash the file's temporary path, so
    data/processed would differ byte for byte between two identical runs and DVC would rerun
    everything downstream)."""

    def __init__(self, path: Path, block_size: int) -> None:
        self.path, self.block_size = Path(path), block_size
        self.schema = pa.schema([("input_ids", pa.list_(pa.int32()))])
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._digest = hashlib.blake2b(str(block_size).encode(), digest_size=16)
        self.blocks = 0

    def write(self, blocks: np.ndarray) -> None:
        """`blocks`: an (n, block_size) integer array; no Python list is built on the way to disk."""
        n = len(blocks)
        if n == 0:
            return
        offsets = pa.array(np.arange(0, (n + 1) * self.block_size, self.block_size, dtype=np.int32))
        values = np.ascontiguousarray(blocks, dtype=np.int32).ravel()
        self._digest.update(values.tobytes())
        values = pa.array(values)
        self._writer.write_batch(pa.record_batch([pa.ListArray.from_arrays(offsets, values)], self.schema))
        self.blocks += n

    @property
    def fingerprint(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The progress bar of a local run: the DoFns advance it when they run in the launcher's process (the
DirectRunner's in-memory mode); elsewhere (other processes, Dataflow workers) `advance` does nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_bar: Any = None
_lock = threading.Lock()


@contextmanager
def shown(total: int | None) -> Iterator[None]:
    """Show a bar over `total` files on stderr while the block runs (none when `total` is None)."""
    global _bar
    if total is None:
        yield
        return
    from tqdm import tqdm

    _bar = tqdm(total=total, unit="image", desc="scoring")
    try:
        yield
    finally:
        _bar.close()
        _bar = None


def advance() -> None:
    """One more file done (scored or failed)."""
    if _bar is not None:
        with _lock:
            _bar.update(1)

"""Run a tensor stream one step ahead on a thread: reading (and dequantizing, unstacking) the next tensor overlaps
converting and writing this one, and at most ``depth`` tensors wait in between, so memory stays a few tensors."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield ``items``, produced on a worker thread up to ``depth`` ahead; its exceptions re-raise here. When the
    consumer stops early (an error, a ``break``), the worker stops at its next item."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)
        finally:
            close = getattr(items, "close", None)  # a generator's open files close on this thread
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="llm-launch-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()

"""Run a blocking generator in a worker thread and consume it as a cancellable async stream.

CPU backends (espeak, piper, whisper, llama.cpp) produce results from blocking code. This helper
lets the asyncio conductor consume them without blocking the loop, and makes cancellation reach
the producer: when the consumer stops (barge-in cancels the task, or it breaks out of the loop),
the producer thread sees ``stop`` set and its generator is closed at the next item.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


async def iterate_in_thread(
    factory: Callable[[threading.Event], Iterator[T]],
    *,
    lock: threading.Lock | None = None,
    max_queued: int = 64,
) -> AsyncIterator[T]:
    """Yield the items of ``factory(stop_event)`` produced in a daemon thread.

    ``lock`` serialises producers that share one non-reentrant engine (one espeak voice per
    process). Exceptions raised by the producer are re-raised in the consumer.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(max_queued)
    stop = threading.Event()

    def put(item: object) -> None:
        fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while not stop.is_set():
            try:
                fut.result(timeout=0.1)
                return
            except TimeoutError:
                continue
        fut.cancel()

    def run() -> None:
        try:
            if lock is not None:
                lock.acquire()
            try:
                gen = factory(stop)
                try:
                    for item in gen:
                        if stop.is_set():
                            break
                        put(item)
                finally:
                    close = getattr(gen, "close", None)
                    if close is not None:
                        close()
            finally:
                if lock is not None:
                    lock.release()
        except BaseException as exc:  # forwarded to the consumer
            if not stop.is_set():
                put(exc)
        finally:
            if not stop.is_set():
                put(_DONE)

    thread = threading.Thread(target=run, daemon=True, name="iterate-in-thread")
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()

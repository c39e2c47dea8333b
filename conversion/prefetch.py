"""Read the next tensors on a background thread while the current one is transformed and written.

A conversion is read -> transform -> write, one tensor at a time; reading (file reads, ``torch.load`` of a
torch_dist chunk, safetensors copies) and writing (page-cache copies) both release the GIL, so overlapping them
uses a second core for the price of ``depth`` tensors held ahead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """``get(name)`` for ``names`` in that order, up to ``depth`` ahead on one thread.

    Calls must come in ``names``' order; a call out of order is served directly (and stops the read-ahead),
    so a caller that deviates is slower, never wrong.
    """

    def __init__(self, get: Callable[[str], T], names: Iterable[str], depth: int = 2):
        self._get = get
        self._names = iter(names)
        self._pending: deque[tuple[str, Future[T]]] = deque()
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        for _ in range(depth):
            self._submit()

    def _submit(self) -> None:
        name = next(self._names, None)
        if name is not None and self._pool is not None:
            self._pending.append((name, self._pool.submit(self._get, name)))

    def __call__(self, name: str) -> T:
        if self._pending and self._pending[0][0] == name:
            _, fut = self._pending.popleft()
            self._submit()
            return fut.result()
        self.close()
        return self._get(name)

    def close(self) -> None:
        """Stop reading ahead and drop what was read (safe to call more than once)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

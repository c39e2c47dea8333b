"""The read-ahead of the conversions: same tensors in the same order, errors surface, a deviating caller is served."""

from __future__ import annotations

import threading

import pytest

from conversion.prefetch import Prefetcher


def test_serves_in_order_from_another_thread_ahead_of_the_caller():
    seen: list[tuple[str, str]] = []

    def get(name: str) -> str:
        seen.append((name, threading.current_thread().name))
        return name.upper()

    names = [f"t{i}" for i in range(6)]
    with Prefetcher(get, names, depth=2) as pf:
        assert [pf(n) for n in names] == [n.upper() for n in names]
    assert [n for n, _ in seen] == names and all(t.startswith("prefetch") for _, t in seen)


def test_out_of_order_call_is_served_directly_and_errors_propagate():
    def get(name: str) -> str:
        if name == "bad":
            raise ValueError("cannot read bad")
        return name

    with Prefetcher(get, ["a", "b", "c"]) as pf:
        assert pf("c") == "c" and pf("a") == "a"  # out of order: read-ahead stopped, still right
    with Prefetcher(get, ["a", "bad"]) as pf, pytest.raises(ValueError, match="cannot read bad"):
        pf("a")
        pf("bad")

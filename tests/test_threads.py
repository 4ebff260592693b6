"""The shared thread-count rule: explicit counts win, a busy machine gets 1 thread."""

import pytest

from worldmodel import threads


def test_requested_count_wins(monkeypatch):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    assert threads.choose_threads(3) == (3, "requested")


def test_busy_machine_gets_one_thread(monkeypatch):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    n, why = threads.choose_threads(None)
    assert n == 1 and "busy" in why


def test_idle_machine_keeps_torch_default(monkeypatch):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: 2)
    assert threads.choose_threads(None) == (2, "torch default")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads"):
        threads.choose_threads(bad)

"""The shared thread-count rule: explicit counts win, a busy machine gets 1 thread."""

import pytest

from worldmodel import threads


def test_requested_count_wins(monkeypatch):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    assert threads.choose_threads(3) == (3, "requested")


@pytest.mark.parametrize("cores, load, default, want", [
    (2, 2.0, 2, 1),    # every core busy: one thread
    (2, 0.5, 2, 1),    # one core partly busy: one thread on the idle one
    (2, 9.0, 2, 1),    # overloaded: still at least one
    (16, 4.2, 16, 12),  # a big machine keeps its idle cores (4 busy, 0.2 of noise)
    (2, 0.0, 2, 2),    # an idle machine: torch's default
    (2, 0.2, 2, 2),    # background noise does not make a core busy
    (16, 0.0, 8, 8),   # never more than torch's default
])
def test_one_thread_per_idle_core(monkeypatch, cores, load, default, want):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: default)
    assert threads.choose_threads(None)[0] == want


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads"):
        threads.choose_threads(bad)


def test_thread_benchmark_compares_the_default_with_every_count(tmp_path):
    """`python -m worldmodel.bench.threads` times the default and each count 1..cores and writes the ratio."""
    import json
    import os

    from worldmodel.bench.threads import main

    main(["--steps", "2", "--warmup", "1", "--json", str(tmp_path / "t.json")])
    r = json.loads((tmp_path / "t.json").read_text())
    assert {row["threads"] for row in r["rows"]} == set(range(1, (os.cpu_count() or 1) + 1)) | {r["default_threads"]}
    assert r["best_over_default"] >= 1.0

"""The counter manager: 4.34's names, reset answers the value before, adds from many threads
are exact. Socket-free."""
from __future__ import annotations

import threading

import pytest

from v2sync.app.stats.manager import Counter, StatsManager, counter_name
from v2sync.common.errors import V2SyncError


def test_names_are_4_34s() -> None:
    assert counter_name("inbound", "socks-in", "uplink") == "inbound>>>socks-in>>>traffic>>>uplink"
    assert counter_name("user", "a@b", "downlink") == "user>>>a@b>>>traffic>>>downlink"


def test_set_returns_the_value_before() -> None:
    counter = Counter()
    counter.add(5)
    counter.add(7)
    assert counter.set(0) == 12
    assert counter.value() == 0


def test_register_twice_is_an_error_but_get_or_register_shares() -> None:
    stats = StatsManager()
    first = stats.register("x")
    with pytest.raises(V2SyncError, match="already registered"):
        stats.register("x")
    assert stats.get_or_register("x") is first
    assert stats.get("y") is None


def test_query_by_substring_with_reset() -> None:
    stats = StatsManager()
    up, down = stats.traffic_pair("inbound", "in", True, True)
    assert up is not None and down is not None
    up.add(3)
    down.add(4)
    other, off = stats.traffic_pair("outbound", "out", True, False)
    assert off is None and other is not None
    other.add(9)
    assert dict(stats.query("inbound>>>", reset=True)) == {
        "inbound>>>in>>>traffic>>>uplink": 3, "inbound>>>in>>>traffic>>>downlink": 4}
    assert dict(stats.query()) == {"inbound>>>in>>>traffic>>>uplink": 0,
                                   "inbound>>>in>>>traffic>>>downlink": 0,
                                   "outbound>>>out>>>traffic>>>uplink": 9}


def test_adds_from_many_threads_are_exact() -> None:
    counter = Counter()

    def work() -> None:
        for _ in range(20_000):
            counter.add(3)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert counter.value() == 4 * 20_000 * 3


def test_past_the_cap_a_new_name_is_served_uncounted(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A connection of a user added past the cap is served, its bytes uncounted (4.34 has
    no cap; refusing it locked out every later user; found by a review)."""
    from v2sync.app.stats import manager
    monkeypatch.setattr(manager, "MAX_COUNTERS", 2)
    stats = StatsManager()
    first = stats.traffic_pair("user", "a@x", True, True)
    later = [stats.traffic_pair("user", f"{n}@x", True, True) for n in "bc"]
    assert all(counter is not None for pair in later for counter in pair)
    assert [name for name, _ in stats.query()] == [counter_name("user", "a@x", d)
                                                   for d in ("uplink", "downlink")]
    assert stats.traffic_pair("user", "a@x", True, True) == first  # still shared
    assert len([r for r in caplog.records if "not counted" in r.getMessage()]) == 1
    with pytest.raises(V2SyncError, match="more than 2 counters"):
        stats.register("inbound>>>late>>>traffic>>>uplink")  # a config's: refused at start

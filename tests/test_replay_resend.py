"""``--resend`` on the store: which rows are re-stamped, and that the range survives a restart."""

from __future__ import annotations

from datetime import datetime

from materializer.apply import Materializer
from materializer.replay import read_resend, rewind
from materializer.store import Store
from tests.fix_store import Events, ManualClock

TP = ("spacevegas.public.users", 0)


def stamps(store: Store) -> dict[str, datetime]:
    with store.cursor() as cur:
        return dict(cur.execute("SELECT id, modified_at FROM feed_players").fetchall())


def test_resend_restamps_exactly_the_replayed_rows_and_resumes_after_restart(
        store: Store, materializer: Materializer, events: Events, clock: ManualClock) -> None:
    log = [events.record("c", None, events.user(i)) for i in (1, 2, 3)]
    log.append(events.record("u", events.user(2), events.user(2, login_count=5)))  # invisible to the feeds
    materializer.apply(log, {TP: 4})
    first = stamps(store)

    # A plain replay of everything: nothing moves.
    clock.advance(seconds=10)
    rewind(store, {TP: 0}, {TP: 4}, resend=False)
    materializer.apply(log, {TP: 4})
    assert stamps(store) == first

    # Resend offsets 1..3 (users 2, 3; user 2 twice): exactly those rows move, once, to the new stamp.
    rewind(store, {TP: 1}, {TP: 4}, resend=True)
    materializer.reload_resend()
    assert read_resend(store) == {TP: 4}
    clock.advance(seconds=10)
    result = materializer.apply(log[1:3], {TP: 3})  # a batch ends inside the range ...
    assert read_resend(store) == {TP: 4}
    restarted = Materializer(store)  # ... the service restarts: the range is still there
    clock.advance(seconds=10)
    newer = events.record("c", None, events.user(9))  # after the range: applied normally
    restarted.apply([log[3], newer], {TP: 5})
    after = stamps(store)
    assert {k for k in first if after[k] != first[k]} == {"2", "3"}
    assert after["2"] > first["2"] and after["1"] == first["1"]
    assert result.changed["players"] == 2
    assert read_resend(store) == {}  # used up, in the batch's transaction
    assert restarted.resend == {}

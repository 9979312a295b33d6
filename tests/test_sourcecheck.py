"""The source check's verdicts, from hand-made catalog facts: no server needed.

These cover the states a test Postgres cannot easily be put in (wal_level=replica,
full slot tables, RDS, an old server); tests/test_sourcecheck_stack.py checks the
same verdicts against a real server.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from feedstore.connector import SourceNames
from feedstore.sourcecheck import (
    Facts,
    PublicationFacts,
    SlotFacts,
    TableFacts,
    failed,
    fixes_of,
    identity_needs,
    plan,
    render,
)
from materializer.mapping import Mapping, parse_mapping

REFERENCE = Path(__file__).resolve().parents[1] / "deploy" / "mappings" / "spacevegas.yaml"


def players(**overrides: object) -> Mapping:
    doc = yaml.safe_load(REFERENCE.read_text())
    feed = dict(doc["feeds"]["players"])
    for key, value in overrides.items():
        if key == "id":
            feed["fields"] = dict(feed["fields"], id=value)
        else:
            feed[key] = value
    tables = {k: v for k, v in (doc.get("tables") or {}).items() if k == feed["source"]}
    return parse_mapping({"topic_prefix": "acme", "source_zone": "UTC", "tables": tables,
                          "feeds": {"players": feed}}, Path("m.yaml"))


USERS = players().feeds["players"].source.name
SIGNAL = "public.debezium_signal"


def ready(**overrides: object) -> Facts:
    """A source with everything in place; tests break one thing at a time."""
    table = TableFacts(USERS, exists=True, key=("user_id",), select=True, insert=False,
                       columns=("user_id", "fname"))
    facts = Facts(
        version=160002, database="casino", user="admin", role="debezium", wal_level="logical",
        max_replication_slots=10, slots_used=1, max_wal_senders=10, senders_used=1,
        role_exists=True, role_login=True, role_replication=True, connect=True, schemas={"public": True},
        publication=PublicationFacts(False, frozenset({USERS, SIGNAL}), frozenset({"insert", "update", "delete"})),
        tables={USERS: table},
        signal=TableFacts(SIGNAL, exists=True, key=("id",), select=True, insert=True,
                          columns=("id", "type", "data")),
    )
    return dataclasses.replace(facts, **overrides)  # type: ignore[arg-type]


def by_name(facts: Facts, mapping: Mapping | None = None) -> dict[str, object]:
    return {c.name: c for c in plan(facts, mapping or players())}


def test_a_ready_source_has_nothing_to_fix() -> None:
    checks = plan(ready(), players())
    assert failed(checks) == [] and fixes_of(checks) == []
    assert {c.state for c in checks} == {"ok"}


def test_wal_level_is_printed_with_restart_instructions_not_applied() -> None:
    checks = plan(ready(wal_level="replica"), players())
    (bad,) = failed(checks)
    assert bad.name == "wal_level" and "is replica" in bad.detail
    (fix,) = bad.fixes
    assert fix.sql == "ALTER SYSTEM SET wal_level = logical;" and fix.restart and not fix.applicable
    assert "needs a server restart" in render(checks, "h") and "restart PostgreSQL" in render(checks, "h")
    rds = failed(plan(ready(wal_level="replica", rds=True), players()))[0]
    assert "rds.logical_replication" in rds.detail


def test_full_slot_and_sender_tables() -> None:
    checks = failed(plan(ready(slots_used=10, senders_used=10), players()))
    assert [c.name for c in checks] == ["max_replication_slots", "max_wal_senders"]
    assert all(f.restart for c in checks for f in c.fixes)
    # our own slot already exists: it takes no new one
    names = [c.name for c in failed(plan(ready(slots_used=10, slot=SlotFacts("pgoutput", "casino", None, 0)),
                                         players()))]
    assert names == []


@pytest.mark.parametrize(("slot", "says"), [
    (SlotFacts("wal2json", "casino", None, 0), "plugin wal2json"),
    (SlotFacts("pgoutput", "other", None, 0), "database other"),
    (SlotFacts("pgoutput", "casino", 4242, 0), "pid 4242"),
])
def test_a_slot_that_cannot_be_ours(slot: SlotFacts, says: str) -> None:
    (bad,) = failed(plan(ready(slot=slot), players()))
    assert bad.name == "slot feedstore" and says in bad.detail
    assert all(not f.applicable for f in bad.fixes)  # dropping a slot loses its position: the operator decides


def test_a_slot_streaming_to_the_connectors_role_is_fine() -> None:
    c = by_name(ready(slot=SlotFacts("pgoutput", "casino", 4242, 0, "debezium")))["slot feedstore"]
    assert c.ok and "connector is running" in c.detail  # type: ignore[attr-defined]
    (bad,) = failed(plan(ready(slot=SlotFacts("pgoutput", "casino", 4242, 0, "etl")), players()))
    assert "pid 4242 (etl)" in bad.detail


def test_an_idle_slot_reports_the_wal_it_holds() -> None:
    c = by_name(ready(slot=SlotFacts("pgoutput", "casino", None, 3 * 2**30)))["slot feedstore"]
    assert c.ok and "3072 MiB" in c.detail  # type: ignore[attr-defined]


def test_role_fixes() -> None:
    missing = failed(plan(ready(role_exists=False, tables={USERS: TableFacts(USERS, True, ("user_id",))},
                                signal=TableFacts(SIGNAL, True, ("id",), columns=("id", "type", "data"))),
                          players()))
    sql = [f.sql for c in missing for f in c.fixes]
    assert sql[0] == 'CREATE ROLE "debezium" WITH LOGIN REPLICATION;'
    assert 'GRANT SELECT ON "public"."users" TO "debezium";' in sql
    assert 'GRANT SELECT, INSERT ON "public"."debezium_signal" TO "debezium";' in sql
    assert sql.index('CREATE ROLE "debezium" WITH LOGIN REPLICATION;') < sql.index(
        'GRANT SELECT ON "public"."users" TO "debezium";')  # fixes run in order
    (rep,) = failed(plan(ready(role_replication=False), players()))
    assert rep.fixes[0].sql == 'ALTER ROLE "debezium" WITH REPLICATION;'
    (rds,) = failed(plan(ready(role_replication=False, rds=True), players()))
    assert rds.fixes[0].sql == 'GRANT rds_replication TO "debezium";'
    (login,) = failed(plan(ready(role_login=False), players()))
    assert login.fixes[0].sql == 'ALTER ROLE "debezium" WITH LOGIN;'


def test_odd_names_are_quoted() -> None:
    (rep,) = failed(plan(ready(role='dbz"x', role_replication=False), players()))
    assert rep.fixes[0].sql == 'ALTER ROLE "dbz""x" WITH REPLICATION;'


def test_missing_table_and_missing_key() -> None:
    (gone,) = failed(plan(ready(tables={}), players()))
    assert gone.name == f"table {USERS}" and "does not exist in database casino" in gone.detail and not gone.fixes
    nokey = TableFacts(USERS, True, (), select=True)
    bad, identity = failed(plan(ready(tables={USERS: nokey}), players()))
    assert "has none" in bad.detail and bad.fixes[0].manual
    # without a key a delete carries nothing to find the row by
    assert identity.name.endswith("replica identity") and "needs FULL" in identity.detail
    assert bad.fixes[0].sql == 'ALTER TABLE "public"."users" ADD PRIMARY KEY (<column>);'
    unique = dataclasses.replace(nokey, unique_index="users_email_key")
    bad, _ = failed(plan(ready(tables={USERS: unique}), players()))
    assert bad.fixes[0].sql == 'ALTER TABLE "public"."users" ADD PRIMARY KEY USING INDEX "users_email_key";'


def test_replica_identity_needs() -> None:
    keys = {USERS: ("user_id",)}
    assert not identity_needs(players(), keys)[USERS].full  # the reference: constants on delete
    assert not identity_needs(players(on_delete="ignore"), keys)[USERS].full
    by_email = players(id="lower(email)", on_delete={"set": {"status": "Deleted"}})
    need = identity_needs(by_email, keys)[USERS]
    assert need.full and "email" in need.reason
    # deletes ignored: a non-key id does not matter
    assert not identity_needs(players(id="lower(email)", on_delete="ignore"), keys)[USERS].full


def test_replica_identity_verdicts() -> None:
    by_email = players(id="lower(email)", on_delete={"set": {"status": "Deleted"}})
    (bad,) = failed(plan(ready(), by_email))
    assert "needs FULL" in bad.detail
    assert bad.fixes[0].sql == 'ALTER TABLE "public"."users" REPLICA IDENTITY FULL;' and bad.fixes[0].applicable
    full = dataclasses.replace(ready().tables[USERS], identity="f")
    assert failed(plan(ready(tables={USERS: full}), by_email)) == []
    nothing = dataclasses.replace(ready().tables[USERS], identity="n")
    (bad,) = failed(plan(ready(tables={USERS: nothing}), players()))
    assert "refuses updates and deletes" in bad.detail
    assert bad.fixes[0].sql == 'ALTER TABLE "public"."users" REPLICA IDENTITY DEFAULT;'


def test_large_mapped_columns_get_one_warning_not_a_failure() -> None:
    big = dataclasses.replace(ready().tables[USERS], large=("reg_ua", "push_token", "user_id"))
    checks = plan(ready(tables={USERS: big}), players())
    assert failed(checks) == []
    note = checks[-1]
    assert (note.name, note.state) == ("large values", "warn")
    assert f"{USERS} (reg_ua)" in note.detail  # push_token is not mapped, user_id is the key
    full = dataclasses.replace(big, identity="f")
    assert plan(ready(tables={USERS: full}), players())[-1].name != "large values"


def test_schema_usage_is_one_line_per_schema() -> None:
    (bad,) = failed(plan(ready(schemas={"public": False}), players()))
    assert bad.name == "schema public: usage"
    assert bad.fixes[0].sql == 'GRANT USAGE ON SCHEMA "public" TO "debezium";'
    assert all(c.name != "schema public: usage" for c in plan(ready(), players()))


def test_signal_table() -> None:
    (bad,) = failed(plan(ready(signal=TableFacts(SIGNAL, exists=False)), players()))
    assert bad.fixes[0].sql.startswith('CREATE TABLE "public"."debezium_signal" (id varchar(42) PRIMARY KEY')
    wrong = TableFacts(SIGNAL, True, ("k",), select=True, insert=True, columns=("k", "v"))
    (bad,) = failed(plan(ready(signal=wrong), players()))
    assert "(id, type, data)" in bad.detail and not bad.fixes
    ro = dataclasses.replace(ready().signal, insert=False)  # type: ignore[arg-type]
    (bad,) = failed(plan(ready(signal=ro), players()))
    assert "INSERT" in bad.detail


def test_publication_states() -> None:
    (bad,) = failed(plan(ready(publication=None), players()))
    assert bad.fixes[0].sql == ('CREATE PUBLICATION "feedstore_publication" FOR TABLE "public"."users", '
                                "\"public\".\"debezium_signal\" WITH (publish = 'insert, update, delete, truncate');")
    everything = PublicationFacts(True, frozenset({USERS, SIGNAL, "public.other"}),
                                  frozenset({"insert", "update", "delete"}))
    (bad,) = failed(plan(ready(publication=everything), players()))
    assert "FOR ALL TABLES" in bad.detail and [f.sql.split()[0] for f in bad.fixes] == ["DROP", "CREATE"]
    assert failed(plan(ready(publication=everything), players(), SourceNames(publication_mode="all_tables"))) == []
    partial = PublicationFacts(False, frozenset({USERS, "public.other"}), frozenset({"insert", "update"}))
    (bad,) = failed(plan(ready(publication=partial), players()))
    assert "misses public.debezium_signal" in bad.detail and "also has public.other" in bad.detail
    assert "does not publish delete" in bad.detail
    assert [f.sql.split()[:4] for f in bad.fixes] == [["ALTER", "PUBLICATION", '"feedstore_publication"', "SET"]] * 2


def test_old_server() -> None:
    (bad,) = failed(plan(ready(version=90624), players()))
    assert "PostgreSQL 9" in bad.detail


def test_render_lists_every_check_and_fix_in_order() -> None:
    checks = plan(ready(wal_level="replica", role_replication=False, publication=None), players())
    text = render(checks, "header")
    lines = text.splitlines()
    assert lines[0] == "header"
    assert sum(line.startswith("  fix ") for line in lines) == 3
    fixes = [line.strip() for line in lines if line.startswith("  ALTER") or line.startswith("  CREATE")]
    assert fixes[0].startswith("ALTER SYSTEM SET wal_level") and fixes[-1].startswith("CREATE PUBLICATION")

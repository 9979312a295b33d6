"""A wrong mapping file fails at start, naming the file, the feed and the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from materializer.mapping import MappingError, load_mapping
from schemas import load_feeds
from tests.fix_store import MAPPING


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def base() -> dict:
    return yaml.safe_load(MAPPING.read_text())


def test_reference_mapping_loads() -> None:
    m = load_mapping(MAPPING)
    assert {"spacevegas.public.users", "spacevegas.public.payments", "spacevegas.public.sb_selections"} <= set(m.topics)
    assert {fm.source.topic for fm in (m.feeds["players"], m.feeds["contacts"])} == {"spacevegas.public.users"}
    players = m.feeds["players"]
    assert players.exprs["first_name"] == "fname"
    assert "modified_at" not in players.exprs  # the stamp is never mapped
    assert players.delete_set == {"status": "'Deleted'", "is_blocked": "TRUE"}
    assert "WHEN 'M' THEN 'male'" in players.exprs["gender"]


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d["feeds"]["players"]["fields"].pop("registered_at"), ["players", "registered_at", "required"]),
    (lambda d: d["feeds"]["players"]["fields"].update(nickname="x"), ["players", "nickname", "not a field"]),
    (lambda d: d["feeds"]["players"]["fields"].update(city="lower(city"), ["players", "city", "DuckDB SQL"]),
    (lambda d: d["feeds"]["players"]["fields"].update(modified_at="now()"), ["players", "modified_at", "stamp"]),
    (lambda d: d["feeds"].update(gamblers=d["feeds"]["players"]), ["gamblers", "unknown feed"]),
    (lambda d: d.update(source_zone="Mars/Olympus"), ["source_zone", "IANA"]),
    (lambda d: d["tables"]["public.users"]["columns"].update(dob="datetime64"), ["public.users", "dob"]),
    (lambda d: d["feeds"]["players"].update(on_delete="drop"), ["players", "on_delete"]),
    (lambda d: d["feeds"]["players"].update(source="users"), ["players", "schema.table"]),
    # custom fields
    (lambda d: d["feeds"]["players"]["custom_fields"]["vip_level"].update(type="float"),
     ["players", "vip_level", "type 'float'"]),
    (lambda d: d["feeds"]["players"]["custom_fields"].update(city={"type": "string", "sql": "city"}),
     ["players", "city", "standard field"]),
    (lambda d: d["feeds"]["players"]["custom_fields"].update({"VIP Level": {"type": "string", "sql": "x"}}),
     ["players", "VIP Level", "lower-case"]),
    (lambda d: d["feeds"]["transactions"].update(custom_fields={"x": {"type": "string", "sql": "x"}}),
     ["transactions", "custom_fields", "players"]),
    (lambda d: d["feeds"]["players"]["fields"].update(vip_level="vip_level"),
     ["players", "vip_level", "custom_fields"]),
    # values checked against the spec at load
    (lambda d: d["feeds"]["transactions"]["fields"].update(dir={"sql": "kind", "map": {"D": "IN", "W": "SIDEWAYS"}}),
     ["transactions", "dir", "SIDEWAYS", "IN, OUT"]),
    (lambda d: d["feeds"]["transactions"]["fields"].update(currency={"const": "EURO"}),
     ["transactions", "currency", "EURO"]),
    (lambda d: d["feeds"]["transactions"]["fields"].update(dir={"const": None}), ["transactions", "dir", "required"]),
    (lambda d: d["feeds"]["bonus_assignments"]["fields"].update(active={"const": 5}), ["bonus_assignments", "active"]),
    (lambda d: d["feeds"]["players"]["fields"].update(gender={"sql": "sex", "map": {True: "male"}}),
     ["players", "gender", "quote"]),
    (lambda d: d["feeds"]["players"]["fields"].update(gender={"sql": "sex", "const": "x"}),
     ["players", "gender", "stands alone"]),
    # expressions checked by binding them
    (lambda d: d["feeds"]["players"]["fields"].update(city="lowr(city)"), ["players", "city", "lowr"]),
    (lambda d: d["feeds"]["players"]["fields"].update(city="lower(city, 2)"), ["players", "city", "lower"]),
    (lambda d: d["feeds"]["players"]["fields"].update(city="max(city)"), ["players", "city", "aggregate"]),
    (lambda d: d["feeds"]["players"]["fields"].update(city="row_number() OVER ()"), ["players", "city", "window"]),
    # typos in keys
    (lambda d: d["feeds"]["players"].update(on_delet="ignore"), ["players", "on_delet", "typo"]),
    (lambda d: d.update(source_zon="UTC"), ["source_zon", "typo"]),
    (lambda d: d["tables"].update({"public.userz": {"columns": {"x": "date"}}}), ["public.userz", "no feed"]),
    (lambda d: d["tables"]["public.users"].update(colums={}), ["public.users", "colums"]),
    # delete policies
    (lambda d: d["feeds"]["players"].update(on_delete={"set": {"status": {"sql": "fname"}}}),
     ["players", "on_delete", "status", "constant"]),
    (lambda d: d["feeds"]["bonus_assignments"].update(on_delete={"set": {"active": 7}}),
     ["bonus_assignments", "on_delete", "active"]),
    (lambda d: d["feeds"]["players"].update(on_delete={"set": {"id": "x"}}), ["players", "id", "key"]),
])
def test_wrong_mapping_names_file_feed_and_field(tmp_path: Path, change, words: list[str]) -> None:
    doc = base()
    change(doc)
    path = write(tmp_path, doc)
    with pytest.raises(MappingError) as err:
        load_mapping(path)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_file_says_which_setting(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="FEEDSTORE_MAPPING"):
        load_mapping(tmp_path / "nope.yaml")


def test_topic_override_and_zone_per_table(tmp_path: Path) -> None:
    doc = base()
    doc["tables"]["public.users"].update(topic="legacy.cdc.users", zone="Asia/Tokyo")
    m = load_mapping(write(tmp_path, doc))
    assert m.feeds["players"].source.topic == m.feeds["contacts"].source.topic == "legacy.cdc.users"
    assert m.feeds["players"].source.zone.key == "Asia/Tokyo"
    assert m.feeds["transactions"].source.zone.key == "Europe/Malta"
    assert "legacy.cdc.users" in m.topics


def test_custom_fields_extend_the_feed_after_the_spec_fields() -> None:
    players = load_mapping(MAPPING).feeds["players"].feed
    custom = players.fields[-5:]
    assert [(f.name, f.type, f.required) for f in custom] == [
        ("vip_level", "integer", False), ("lifetime_value", "decimal", False), ("kyc_status", "string", False),
        ("last_deposit_at", "timestamp", False), ("segments", "array", False)]
    assert custom[1].scale == 2
    assert players.field_names[:18] == load_feeds()["players"].field_names


def test_enum_map_without_default_passes_unmapped_values_on() -> None:
    dir_sql = load_mapping(MAPPING).feeds["transactions"].exprs["dir"]
    assert dir_sql.endswith("ELSE CAST((kind) AS VARCHAR) END")
    status_sql = load_mapping(MAPPING).feeds["sport_events"].exprs["status"]
    assert status_sql.endswith("ELSE 'unknown' END")


DOCS = MAPPING.parents[2] / "docs" / "mapping.md"


def yaml_blocks(after: str) -> list[str]:
    """The ```yaml blocks of docs/mapping.md after the heading ``after``, without the
    indentation of their fence (list items indent theirs)."""
    text = DOCS.read_text().split(after, 1)[1]
    return ["".join(line[len(indent):] + "\n" for line in body.splitlines())
            for indent, body in re.findall(r"^( *)```yaml\n(.*?)^ *```", text, re.MULTILINE | re.DOTALL)]


def test_docs_complete_example_is_the_reference_mapping(tmp_path: Path) -> None:
    """docs/mapping.md shows the SpaceVegas mapping in full (bar casino): keep them in step."""
    example = yaml.safe_load(yaml_blocks("## A complete example")[0])
    reference = base()
    reference["feeds"].pop("casino_activity", None)
    reference["tables"] = {t: v for t, v in reference["tables"].items()
                           if any(f.get("source") == t for f in reference["feeds"].values())}
    assert example == reference
    assert set(load_mapping(write(tmp_path, example)).feeds) == set(reference["feeds"])


def test_docs_worked_example_loads(tmp_path: Path) -> None:
    """The new-operator walk-through, its steps put together, is a working mapping."""
    steps = yaml_blocks("## Worked example: a new operator")
    m = load_mapping(write(tmp_path, yaml.safe_load("".join(steps))))
    assert set(m.feeds) == {"players", "contacts", "transactions"}
    assert m.feeds["players"].feed.field_names[-2:] == ("loyalty_points", "tags")
    assert m.feeds["transactions"].source.zone.key == "Europe/Berlin"

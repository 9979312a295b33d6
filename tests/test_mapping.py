"""A wrong mapping file fails at start, naming the file, the feed and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from materializer.mapping import MappingError, load_mapping
from tests.fix_store import MAPPING


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def base() -> dict:
    return yaml.safe_load(MAPPING.read_text())


def test_reference_mapping_loads() -> None:
    m = load_mapping(MAPPING)
    assert m.topics == ["spacevegas.public.users"]
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

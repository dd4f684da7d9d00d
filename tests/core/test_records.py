"""The one typed-result base: field order, left-out fields, missing and unknown keys, nested records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from saecircuits.core.records import (
    ABSENT,
    REQUIRED,
    JsonRecord,
    LenientRecord,
    catch_all,
    flattened,
    json_field,
    not_in_json,
    optional,
    required,
)


@dataclass
class Point(JsonRecord):
    x: float
    y: float


@dataclass
class Shape(JsonRecord):
    name: str
    corners: list[Point]
    by_name: dict[str, Point]
    centre: Point | None
    note: str | None = optional()
    tags: list[str] = json_field(if_missing=[], default_factory=list)


@dataclass(kw_only=True)
class Partial(JsonRecord):
    if_missing = ABSENT

    first: int
    second: int = 2
    third: int | None = optional()


@dataclass
class Loose(LenientRecord):
    key: str = required()
    count: int | None
    kept: bool = json_field(if_missing=True)
    names: list[str] = json_field(if_missing=[], empty_is_missing=True)
    section: Point | None = json_field(omit_none=True, empty_is_missing=True)


@dataclass
class Outcome(LenientRecord):
    sync: str | None
    mode: str = required()


@dataclass
class Parent(LenientRecord):
    unknown_keys = "keep"

    label: str
    inner: Point | None = flattened()
    outcome: Outcome | None = flattened("run_")
    extras: dict[str, Any] = catch_all()
    cache: Any = not_in_json()


def test_fields_are_written_in_declaration_order_and_nested_records_round_trip():
    shape = Shape("tri", [Point(0, 0), Point(1, 0)], {"apex": Point(0.5, 1)}, None, tags=["a"])
    data = shape.to_json()
    assert json.dumps(data) == json.dumps({"name": "tri", "corners": [{"x": 0, "y": 0}, {"x": 1, "y": 0}],
                                           "by_name": {"apex": {"x": 0.5, "y": 1}}, "centre": None, "tags": ["a"]})
    back = Shape.from_json(data)
    assert back == shape and isinstance(back.corners[0], Point) and isinstance(back.by_name["apex"], Point)
    assert Shape.from_json({**data, "centre": {"x": 2, "y": 3}}).centre == Point(2, 3)  # inside X | None


def test_an_optional_field_is_left_out_while_none_and_reads_back_as_none():
    shape = Shape("s", [], {}, None, note="hi")
    assert list(shape.to_json()) == ["name", "corners", "by_name", "centre", "note", "tags"]
    shape.note = None
    assert "note" not in shape.to_json() and Shape.from_json(shape.to_json()).note is None


def test_missing_keys_read_as_the_field_or_class_rule():
    with pytest.raises(KeyError, match="centre"):  # the class default: required
        Shape.from_json({"name": "s", "corners": [], "by_name": {}})
    first = Shape.from_json({"name": "s", "corners": [], "by_name": {}, "centre": None})
    second = Shape.from_json({"name": "s", "corners": [], "by_name": {}, "centre": None})
    assert first.tags == [] and first.tags is not second.tags  # a fresh default per record

    loose = Loose.from_json({"key": "k"})
    assert (loose.count, loose.kept, loose.names, loose.section) == (None, True, [], None)
    assert loose.to_json() == {"key": "k", "count": None, "kept": True, "names": []}
    with pytest.raises(KeyError, match="key"):
        Loose.from_json({"count": 1})
    assert Loose.from_json({"key": "k", "names": None, "section": {}}).names == []  # null / empty read as missing
    assert Loose.from_json({"key": "k", "section": {"x": 1, "y": 2}}).section == Point(1, 2)


def test_absent_keys_stay_absent():
    partial = Partial.from_json({"first": 1})
    assert partial.second is ABSENT and partial.third is None
    assert partial.to_json() == {"first": 1}
    assert Partial(first=1).to_json() == {"first": 1, "second": 2}
    assert repr(ABSENT) == "ABSENT" and repr(REQUIRED) == "REQUIRED"


def test_unknown_keys_are_an_error_ignored_or_kept():
    with pytest.raises(TypeError, match="Partial: unknown field"):
        Partial.from_json({"first": 1, "frist": 2})
    assert Loose.from_json({"key": "k", "other": 1}).to_json() == {"key": "k", "count": None, "kept": True, "names": []}
    parent = Parent.from_json({"label": "p", "zeta": 1, "alpha": {"a": 2}})
    assert parent.extras == {"zeta": 1, "alpha": {"a": 2}}
    assert list(parent.to_json()) == ["label", "zeta", "alpha"]  # after the declared fields, in the file's order


def test_a_flattened_record_sits_in_its_parent_object():
    parent = Parent("p", Point(1, 2), Outcome(None, "offline"), {"more": 3}, cache=object())
    data = parent.to_json()
    assert json.dumps(data) == json.dumps({"label": "p", "x": 1, "y": 2, "run_sync": None, "run_mode": "offline",
                                           "more": 3})
    back = Parent.from_json(data)
    assert (back.inner, back.outcome, back.extras, back.cache) == (Point(1, 2), Outcome(None, "offline"),
                                                                   {"more": 3}, None)
    assert Parent("p").to_json() == {"label": "p"} and Parent.from_json({"label": "p"}).outcome is None
    # read back only when the parent holds its required keys: run_sync alone is no outcome
    assert Parent.from_json({"label": "p", "run_sync": "s"}).outcome is None

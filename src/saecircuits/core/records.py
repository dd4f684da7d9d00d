"""Typed results that are their JSON: ``JsonRecord``, the one dataclass base every stage's results use.

``to_json()`` lists the fields in declaration order; ``from_json()`` builds a record back, records nested
in lists, dicts and ``X | None`` included, so a renamed field fails loudly instead of reading as missing.
Records are found where the annotations say: a field annotated with plain JSON types is written and read
as it is.
What a record does with a key is declared, not coded:

- per class: what a key the JSON lacks reads as (``if_missing``: ``REQUIRED``, the default, raises
  KeyError; ``ABSENT`` is left out again by ``to_json()``; any other value is used as it is, a list or
  dict copied), and what a key the class does not know does (``unknown_keys``: ``"error"``, the default,
  ``"ignore"``, or ``"keep"`` it in the ``catch_all()`` field); ``LenientRecord`` reads missing keys as
  None and ignores unknown ones;
- per field, with the helpers below: its own missing-key value, whether it is left out while None and
  whether a null or empty value reads as missing (``json_field``, ``optional``, ``required``), a record
  flattened into the parent object (``flattened``), the catch-all for unknown keys (``catch_all``), or a
  field not in the JSON (``not_in_json``).

Only the standard library: every package may import it.
"""

from __future__ import annotations

import copy
import functools
import sys
import types
import typing
from dataclasses import Field, field, fields
from typing import Any, ClassVar, Union


class _Marker:
    """A named sentinel value."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED: Any = _Marker("REQUIRED")  # ``if_missing``: the JSON must hold the key (KeyError when it does not)
ABSENT: Any = _Marker("ABSENT")  # the value of a field whose key the JSON read did not hold; left out again
_CLASS_RULE: Any = _Marker("CLASS_RULE")  # a field without its own ``if_missing`` follows its class's


def json_field(*, if_missing: Any = _CLASS_RULE, omit_none: bool = False, empty_is_missing: bool = False,
               **dataclass_field: Any) -> Any:
    """A field with its own value for a missing key (``if_missing``), left out of the JSON while None
    (``omit_none``), or read as missing when its value is null or empty (``empty_is_missing``);
    ``dataclass_field``: ``default`` / ``default_factory`` as for ``dataclasses.field``."""
    rules = {"omit_none": omit_none, "empty_is_missing": empty_is_missing}
    return field(metadata=rules | ({} if if_missing is _CLASS_RULE else {"if_missing": if_missing}), **dataclass_field)


def optional() -> Any:
    """A field that defaults to None and that the JSON leaves out (and reads as None) while it is None."""
    return json_field(if_missing=None, omit_none=True, default=None)


def required() -> Any:
    """A field whose key the JSON must hold, whatever its class reads a missing key as."""
    return json_field(if_missing=REQUIRED)


def flattened(prefix: str = "") -> Any:
    """A record (or None) whose keys sit in the parent's object, ``prefix`` before each, where the field is;
    read back when the parent holds any of them and all its required ones, else None. Defaults to None."""
    return field(default=None, metadata={"flatten": prefix})


def catch_all() -> Any:
    """The dict of the keys no field reads (with ``unknown_keys = "keep"``), written where the field is."""
    return field(default_factory=dict, metadata={"catch_all": True})


def not_in_json() -> Any:
    """A field that is neither written nor read (defaults to None); its annotation is never resolved."""
    return field(default=None, metadata={"in_json": False})


class JsonRecord:
    """A dataclass that is its JSON (see the module docstring); subclasses are ``@dataclass``es."""

    if_missing: ClassVar[Any] = REQUIRED
    unknown_keys: ClassVar[str] = "error"  # "error" (TypeError), "ignore", or "keep" (in the catch_all() field)

    def to_json(self) -> dict:
        """The JSON-able dict: the fields in declaration order, by the rules above."""
        out: dict = {}
        types_ = _field_types(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if "flatten" in f.metadata:
                if value is not None:
                    out.update({f.metadata["flatten"] + k: v for k, v in value.to_json().items()})
            elif "catch_all" in f.metadata:
                out.update(value)
            elif f.metadata.get("in_json", True) and value is not ABSENT \
                    and not (value is None and f.metadata.get("omit_none")):
                out[f.name] = _encode(value) if types_[f.name] else value
        return out

    @classmethod
    def from_json(cls, data: dict) -> Any:
        """The record that ``data`` (plain JSON, as ``to_json()`` writes it) holds."""
        types_, known = _field_types(cls), _known_keys(cls)
        unknown = [k for k in data if k not in known]
        if unknown and cls.unknown_keys == "error":
            raise TypeError(f"{cls.__name__}: unknown field(s) {', '.join(sorted(unknown))}")
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if "flatten" in f.metadata:
                prefix, record = f.metadata["flatten"], types_[f.name]
                held = {g.name: data[prefix + g.name] for g in fields(record) if prefix + g.name in data}
                needed = {g.name for g in fields(record) if _missing_rule(record, g) is REQUIRED}
                values[f.name] = record.from_json(held) if held and needed <= held.keys() else None
            elif "catch_all" in f.metadata:
                values[f.name] = {k: data[k] for k in unknown} if cls.unknown_keys == "keep" else {}
            elif f.metadata.get("in_json", True):
                given = f.name in data and not (f.metadata.get("empty_is_missing") and not data[f.name])
                values[f.name] = _decode(types_[f.name], data[f.name]) if given else _when_missing(cls, f)
        return cls(**values)


class LenientRecord(JsonRecord):
    """A record read from files that may be partial or older: a key the JSON lacks reads as None (unless the
    field says otherwise), a key the class does not know is ignored."""

    if_missing = None
    unknown_keys = "ignore"


@functools.cache
def _known_keys(cls: type) -> frozenset[str]:
    """The keys of the JSON that the fields of ``cls`` read (a flattened record's with their prefix)."""
    keys = []
    for f in fields(cls):
        if "flatten" in f.metadata:
            keys += [f.metadata["flatten"] + g.name for g in fields(_field_types(cls)[f.name])]
        elif "catch_all" not in f.metadata and f.metadata.get("in_json", True):
            keys.append(f.name)
    return frozenset(keys)


def _missing_rule(cls: type[JsonRecord], f: Field) -> Any:
    """What field ``f`` reads as when the JSON lacks its key: the field's rule, else the class's."""
    return f.metadata.get("if_missing", cls.if_missing)


def _when_missing(cls: type[JsonRecord], f: Field) -> Any:
    """The value of field ``f`` when the JSON lacks its key (KeyError when it is required)."""
    value = _missing_rule(cls, f)
    if value is REQUIRED:
        raise KeyError(f.name)
    return copy.copy(value) if isinstance(value, (list, dict)) else value  # a fresh [] or {} per record


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each field of ``cls`` that is in its JSON and holds records (None for one
    that holds plain JSON only: read as it is; a flattened field's record class). Resolved one by one, so
    a ``not_in_json()`` field may be annotated with names imported for type checking only."""
    namespace = vars(sys.modules[cls.__module__])  # a string annotation is evaluated as get_type_hints would
    types_ = {f.name: eval(f.type, namespace) if isinstance(f.type, str) else f.type
              for f in fields(cls) if f.metadata.get("in_json", True) and "catch_all" not in f.metadata}
    return {name: _unwrap_optional(tp) if "flatten" in cls.__dataclass_fields__[name].metadata
            else tp if _holds_records(tp) else None for name, tp in types_.items()}


def _holds_records(tp: Any) -> bool:
    """Whether type ``tp`` is a record or has one inside (in a list, dict or union)."""
    if isinstance(tp, type) and issubclass(tp, JsonRecord):
        return True
    return any(_holds_records(arg) for arg in typing.get_args(tp))


def _unwrap_optional(tp: Any) -> Any:
    """``X`` for ``X | None``; any other type as it is."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else tp
    return tp


def _encode(value: Any) -> Any:
    """``value`` as plain JSON: records (also inside lists and dicts) become their ``to_json()``."""
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(tp: Any, value: Any) -> Any:
    """``value`` (plain JSON) as type ``tp``: records (also inside lists, dicts and ``X | None``) are built;
    ``tp`` None (a field without records): as it is."""
    if value is None or tp is None:
        return value
    tp = _unwrap_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if origin is dict:
        return {k: _decode(args[1], v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, JsonRecord):
        return tp.from_json(value)
    return value

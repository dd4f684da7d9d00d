"""Typed configs, validated at the edge: YAML in, one clear line out when a field is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from saecircuits.core.errors import SaecircuitsError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every config: unknown fields are errors, values are checked on assignment, and no float
    is NaN or infinite (a NaN passes every range check and then silently selects nothing)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


def describe_validation_error(err: ValidationError, where: str) -> str:
    """The first problem of a pydantic error as one line: which field, what is wrong, what is allowed."""
    e = err.errors()[0]
    field = ".".join(str(p) for p in e["loc"]) or "(top level)"
    kind = e["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown field '{field}'"
    if kind == "missing":
        return f"{where}: field '{field}' is required"
    got = e.get("input")
    got_s = repr(got) if not isinstance(got, (dict, list)) or len(repr(got)) < 60 else type(got).__name__
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{where}: field '{field}': {e['msg']}, got {got_s}{more}"


def _known_fields(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def validate(cls: type[C], data: Any, where: str = "config") -> C:
    """Build a config from plain data; a bad field is a SaecircuitsError naming it."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SaecircuitsError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        msg = describe_validation_error(err, where)
        if err.errors()[0]["type"] == "extra_forbidden":
            loc = err.errors()[0]["loc"]
            sub: Any = cls
            for part in loc[:-1]:
                ann = getattr(sub, "model_fields", {}).get(part)
                sub = getattr(ann, "annotation", None)
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                return _raise(msg, f"known fields: {', '.join(_known_fields(sub))}")
        raise SaecircuitsError(msg) from None


def _raise(msg: str, hint: str) -> Any:
    raise SaecircuitsError(msg, hint) from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise SaecircuitsError(f"config file {path} does not exist")
    if path.is_dir():
        raise SaecircuitsError(f"config path {path} is a folder; pass a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SaecircuitsError(f"config file {path} is not UTF-8 text") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SaecircuitsError(f"config file {path} is not valid YAML{line}: {problem}") from None


def load(cls: type[C], path: str | Path) -> C:
    """Read a YAML config file into ``cls``."""
    return validate(cls, read_yaml(path), where=str(path))


def dump(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

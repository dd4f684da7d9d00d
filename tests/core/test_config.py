import pytest
from pydantic import Field

from saecircuits.core.config import Config, load, validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.text.config import TextConfig


class Inner(Config):
    kind: str = "a"
    width: int = Field(4, ge=1)


class Outer(Config):
    name: str = "x"
    inner: Inner = Inner()


def test_unknown_field_is_named_with_known_fields():
    with pytest.raises(SaecircuitsError) as e:
        validate(Outer, {"inner": {"widht": 3}})
    assert "unknown field 'inner.widht'" in str(e.value)
    assert "width" in str(e.value)


def test_wrong_type_names_field_and_value():
    with pytest.raises(SaecircuitsError, match=r"field 'inner.width'.*'many'"):
        validate(Outer, {"inner": {"width": "many"}})


def test_malformed_yaml_gives_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ninner: {width: 3\n")
    with pytest.raises(SaecircuitsError, match="not valid YAML at line"):
        load(Outer, p)


def test_yaml_that_is_not_a_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(SaecircuitsError, match="expected a mapping"):
        load(Outer, p)


def test_text_config_bounds():
    with pytest.raises(SaecircuitsError, match="context_size"):
        validate(TextConfig, {"context_size": 1})
    assert validate(TextConfig, {"source": "bible"}).source == "bible"

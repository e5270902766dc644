"""gradguard.errors: pydantic errors become one readable line; a ConfigError raised inside a
validator keeps its own text."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError, field_validator

from gradguard.errors import ConfigError, config_errors, describe_validation_error


class _Options(BaseModel):
    sigma: float = Field(0.1, ge=0)
    name: str = "x"

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value != "x":
            raise ConfigError(f"name: unknown name {value!r}; choose one of ['x']")
        return value


def _error(**options) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _Options(**options)
    return info.value


def test_fields_values_and_rules_on_one_line():
    message = describe_validation_error(_error(sigma=-1))
    assert message == "_Options: sigma=-1: Input should be greater than or equal to 0"


def test_a_config_error_inside_a_validator_keeps_its_own_text():
    assert describe_validation_error(_error(name="y")) == "name: unknown name 'y'; choose one of ['x']"


def test_mixed_errors_are_all_named():
    message = describe_validation_error(_error(sigma="abc", name="y"))
    assert "sigma='abc'" in message and "unknown name 'y'" in message and "\n" not in message


def test_config_errors_names_the_component():
    with pytest.raises(ConfigError, match=r"^defense 'dp-gaussian': _Options: sigma=-1: ") as info:
        with config_errors("defense 'dp-gaussian'"):
            _Options(sigma=-1)
    assert info.value.__cause__ is None and info.value.__suppress_context__

"""The base of every policy section: unknown keys are errors, values are frozen; names."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+\-]*$", max_length=128)]


def _unset(value: object) -> bool:
    # Fields added after version 1 shipped are left out of the canonical JSON while unset,
    # so adding them changed the hash of no policy written before them.
    return value is None or value == ()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

"""Field types shared by the request bodies and paths of several routes."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return value


# A string that a database column keeps as text (an id, a name): PostgreSQL's text
# cannot hold NUL where SQLite's can, so both backends refuse it here alike, as a 400
# naming the field, instead of PostgreSQL failing the write after the request was taken.
StoredText = Annotated[str, AfterValidator(_no_nul)]

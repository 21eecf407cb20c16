"""Field types shared by the request bodies and paths of several routes, and the route
class that lets a path parameter hold any character."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi.routing import APIRoute
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from stores.catalog import NOT_UNICODE, is_unicode


def _unicode(value: str) -> str:
    if not value.isascii() and not is_unicode(value):  # isascii: O(1), a flag of the str
        raise PydanticCustomError("not_unicode", NOT_UNICODE)
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return _unicode(value)


# Text no UTF-8 writer writes (JSON's `\ud800` escape, which FastAPI's JSON reader takes)
# refused as a 400 naming the field; NUL is allowed (JSON text, not a database key).
UnicodeText = Annotated[str, AfterValidator(_unicode)]


# A string that a database column keeps as text (an id, a name): PostgreSQL's text
# cannot hold NUL where SQLite's can, so both backends refuse it here alike, as a 400
# naming the field, instead of PostgreSQL failing the write after the request was taken.
# Nor can either hold a lone surrogate (JSON's `\ud800`, which FastAPI's JSON reader
# takes and no UTF-8 writer writes).
StoredText = Annotated[str, AfterValidator(_no_nul)]


def _not_a_dot_segment(value: str) -> str:
    if value in (".", ".."):
        raise PydanticCustomError("dot_segment", "must not be . or .. (a URL path cannot carry it)")
    return value


# An id that is later read back through a URL path (`/v1/catalogs/c/items/{id}`,
# `/v1/features/user/{id}`): `.` and `..` are resolved away by every URL library, so
# such an id could be written but never read or deleted.
PathId = Annotated[StoredText, AfterValidator(_not_a_dot_segment)]


class AnyCharacterRoute(APIRoute):
    """A route whose path parameters take any character, line breaks included (ids may
    hold any but NUL). Starlette's `{item_id:path}` is `.*`, which stops at a line
    break, before a closing `$` that also matches ahead of a final one: an id holding a
    line break found no route, and one ending in a line break was read, and deleted, as
    the id without it (`GET /v1/catalogs/shop/items/abc%0A` answered item `abc`,
    `GET /v1/features/user/abc%0A` user `abc`'s features). The path stays
    `{item_id:path}` for every reader of the app's routes (OpenAPI, Ray Serve's proxy,
    which rebuilds the routes from their paths, without this process's convertors)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        pattern = self.path_regex.pattern.removesuffix("$")
        self.path_regex = re.compile(pattern + r"\Z", re.DOTALL)

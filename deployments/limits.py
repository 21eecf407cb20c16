"""Refusal before work: the cheap checks that run before a body is parsed.

A body just under the size limit made of millions of one-character strings costs
hundreds of milliseconds to parse and validate, all of it on the replica's only event
loop, where every other request waits. So the number of strings in a JSON body is
bounded from below by counting quote characters (a C-speed scan, about 18 ms for 8 MB)
before anything is parsed: a body that must hold more texts than a request may carry
is refused at once. After parsing, the input list's length is checked before any
per-item validation, and only then is each text's length checked.
"""

from __future__ import annotations

from deployments.errors import InputTooLong, TooManyInputs

# Strings a valid request may hold besides its texts (field names, model, user...).
STRINGS_BESIDES_INPUTS = 16


def strings_at_least(body: bytes) -> int:
    """A lower bound on the JSON strings in `body`, without parsing it.

    Each string has two unescaped quotes; a quote preceded by a backslash may be an
    escaped one (it could also close a string ending in an escaped backslash, so
    counting it as escaped only lowers the bound)."""
    return max(0, (body.count(b'"') - body.count(b'\\"')) // 2)


def refuse_too_many_strings(body: bytes, max_inputs: int, field: str) -> None:
    """400 when the body must hold more texts than `max_inputs` allows."""
    if len(body) < 2 * max_inputs:  # too small to hold that many strings: skip the scan
        return
    # Twice the limit: a protocol's free-form parameters may hold strings of their own,
    # and a flood of millions is still refused before parsing.
    if strings_at_least(body) > 2 * max_inputs + STRINGS_BESIDES_INPUTS:
        raise TooManyInputs(f"{field}: more than {max_inputs} inputs; at most {max_inputs} allowed")


def check_count(count: int, max_inputs: int, field: str) -> None:
    """400 when a request carries more inputs than allowed."""
    if count > max_inputs:
        raise TooManyInputs(f"{field}: {count} inputs, at most {max_inputs} allowed")


def check_lengths(texts: list[str], max_chars: int, field: str) -> None:
    """400 naming the first text longer than `max_chars`: by its index in a list, by
    the field alone when it is the only one (a search's query, a single `input`)."""
    for i, text in enumerate(texts):
        if len(text) > max_chars:
            where = field if len(texts) == 1 else f"{field}.{i}"
            raise InputTooLong(f"{where}: longer than {max_chars} characters")

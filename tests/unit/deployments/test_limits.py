"""Inputs counted before parsing: a true lower bound on a body's strings, refusal of
string floods under the size limit, and the count checked before any item is."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import orjson
import pytest

from configs.schema import Limits
from deployments.errors import BadRequest, TooManyInputs
from deployments.http.oip import encode_bytes_tensor, parse_infer
from deployments.http.openai import parse_request
from deployments.limits import STRINGS_BESIDES_INPUTS, refuse_too_many_strings, strings_at_least

MAX_INPUTS = Limits().max_inputs_per_request  # 2048
# Characters that make escaping interesting: quotes, backslashes, controls, non-ASCII.
ALPHABET = ['"', "\\", "/", "a", "b", " ", "\n", "\t", "\x00", "é", "€", "😀", '\\"', '"\\']


def _count_strings(doc: Any) -> int:
    """Strings in a parsed JSON document, keys included."""
    if isinstance(doc, str):
        return 1
    if isinstance(doc, list):
        return sum(_count_strings(x) for x in doc)
    if isinstance(doc, dict):
        return len(doc) + sum(_count_strings(v) for v in doc.values())
    return 0


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 8)))


def _random_doc(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return _random_text(rng)
    if kind == 1:
        return rng.randrange(-1000, 1000)
    if kind == 2:
        return rng.choice([True, False, None, 1.5])
    if kind == 3:
        return [_random_text(rng) for _ in range(rng.randrange(0, 6))]
    if kind in (4, 5):
        return [_random_doc(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {_random_text(rng): _random_doc(rng, depth + 1) for _ in range(rng.randrange(0, 5))}


def _encodings(doc: Any) -> list[bytes]:
    """The same document as different encoders write it."""
    return [
        orjson.dumps(doc),
        json.dumps(doc).encode(),  # ASCII, \uXXXX escapes
        json.dumps(doc, ensure_ascii=False, indent=2).encode(),
    ]


# ---- strings_at_least ------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "strings"),
    [
        ([], 0),
        (["a"], 1),
        (['say "hi"'], 1),  # escaped quotes are not strings
        (["ends in a backslash\\"], 1),  # "...\\" : its closing quote follows a backslash
        (["\\", "\\", "\\"], 3),
        (['\\"', '"\\', '\\"\\'], 3),  # \\\" and \"\\ sequences
        ({"model": "m", "input": ["x", 'y"', "z\\"]}, 6),
        ([1, 2.5, True, None, {"k": [None]}], 1),
    ],
)
def test_strings_at_least_on_tricky_escapes(doc: Any, strings: int) -> None:
    assert _count_strings(doc) == strings
    for body in _encodings(doc):
        assert strings_at_least(body) <= strings, body


def test_strings_at_least_is_exact_without_backslashes() -> None:
    doc = {"model": "minilm", "input": [f"text {i}" for i in range(100)], "user": "u"}
    assert strings_at_least(orjson.dumps(doc)) == _count_strings(doc) == 105


def test_strings_at_least_never_exceeds_the_parsed_count() -> None:
    rng = random.Random(20261201)
    exact = 0
    for _ in range(3000):
        doc = _random_doc(rng)
        strings = _count_strings(doc)
        for body in _encodings(doc):
            assert _count_strings(orjson.loads(body)) == strings
            bound = strings_at_least(body)
            assert 0 <= bound <= strings, body
            exact += bound == strings
    assert exact > 1000  # a bound, but not a useless one


# ---- refuse_too_many_strings -----------------------------------------------------


def _flood(max_body_bytes: int) -> bytes:
    """As many one-character strings as fit in a body of at most `max_body_bytes`."""
    head, tail = b'{"model":"minilm","input":[', b'"a"]}'
    count = (max_body_bytes - len(head) - len(tail)) // 4
    return head + b'"a",' * count + tail


def test_a_flood_of_one_character_strings_is_refused_before_parsing(
    report: list[str],
) -> None:
    limit = Limits().max_body_bytes
    body = _flood(limit)
    assert len(body) <= limit
    assert strings_at_least(body) > 1_990_000
    started = time.perf_counter()
    with pytest.raises(TooManyInputs) as caught:
        refuse_too_many_strings(body, MAX_INPUTS, "input")
    seconds = time.perf_counter() - started
    line = (
        f"limits: {strings_at_least(body):,} strings in {len(body):,} bytes "
        f"refused in {seconds * 1000:.1f} ms"
    )
    print(line)
    report.append(line)
    assert caught.value.status == 400
    assert caught.value.code == "too_many_inputs"
    assert caught.value.message == "input: more than 2048 inputs; at most 2048 allowed"
    # The whole parse refuses it the same way, without decoding the body.
    with pytest.raises(TooManyInputs, match=r"^input: more than 2048 inputs"):
        parse_request(body, MAX_INPUTS)


@pytest.mark.parametrize(
    "text",
    ["plain text", 'with "quotes" inside', "ends in a backslash\\", "\\\\\\", "x"],
)
def test_a_full_legit_request_is_admitted(text: str) -> None:
    doc = {
        "model": "minilm",
        "input": [text] * MAX_INPUTS,
        "encoding_format": "base64",
        "dimensions": 384,
        "user": "user-1",
    }
    body = orjson.dumps(doc)
    refuse_too_many_strings(body, MAX_INPUTS, "input")  # no error
    assert parse_request(body, MAX_INPUTS).texts() == [text] * MAX_INPUTS


def test_the_allowance_besides_inputs_is_exact() -> None:
    def body(strings: int) -> bytes:
        return orjson.dumps(["s"] * strings)

    allowed = 2 * MAX_INPUTS + STRINGS_BESIDES_INPUTS
    refuse_too_many_strings(body(allowed), MAX_INPUTS, "input")
    with pytest.raises(TooManyInputs):
        refuse_too_many_strings(body(allowed + 1), MAX_INPUTS, "input")


def test_the_refusal_names_the_field() -> None:
    with pytest.raises(TooManyInputs) as caught:
        refuse_too_many_strings(orjson.dumps(["a"] * 40), 7, "inputs.0.data")
    assert caught.value.message == "inputs.0.data: more than 7 inputs; at most 7 allowed"


# ---- parse_request (OpenAI) -----------------------------------------------------


def test_openai_counts_inputs_before_checking_items() -> None:
    body = orjson.dumps({"model": "minilm", "input": list(range(3000))})
    with pytest.raises(TooManyInputs) as caught:
        parse_request(body, MAX_INPUTS)
    assert caught.value.message == "input: 3000 inputs, at most 2048 allowed"
    # Under the bound, the same items are refused one by one.
    few = orjson.dumps({"model": "minilm", "input": list(range(10))})
    with pytest.raises(BadRequest, match=r"^input\.0: expected a string") as item:
        parse_request(few, MAX_INPUTS)
    assert not isinstance(item.value, TooManyInputs)


def test_openai_one_input_over_the_bound() -> None:
    body = orjson.dumps({"model": "minilm", "input": ["t"] * (MAX_INPUTS + 1)})
    with pytest.raises(TooManyInputs, match=r"^input: 2049 inputs, at most 2048 allowed$"):
        parse_request(body, MAX_INPUTS)


# ---- parse_infer (Open Inference Protocol) -------------------------------------


def _infer_json(shape: list[int], data: list[Any]) -> bytes:
    tensor = {"name": "text", "shape": shape, "datatype": "BYTES", "data": data}
    return orjson.dumps({"inputs": [tensor]})


def _infer_binary(shape: list[int], raw: bytes) -> tuple[bytes, str]:
    tensor = {
        "name": "text",
        "shape": shape,
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(raw)},
    }
    header = orjson.dumps({"inputs": [tensor]})
    return header + raw, str(len(header))


def test_oip_counts_the_declared_shape_before_checking_items() -> None:
    with pytest.raises(TooManyInputs) as caught:
        parse_infer(_infer_json([3000], list(range(3000))), None, MAX_INPUTS)
    assert caught.value.message == "inputs.0.data: 3000 inputs, at most 2048 allowed"
    with pytest.raises(TooManyInputs):  # a shape that lies about its data: still the count
        parse_infer(_infer_json([3000, 1], [1, 2]), None, MAX_INPUTS)
    with pytest.raises(BadRequest, match=r"^inputs\.0\.data\.0: expected a string"):
        parse_infer(_infer_json([3], [1, 2, 3]), None, MAX_INPUTS)


def test_oip_json_flood_is_refused_before_parsing() -> None:
    body = _infer_json([5000], ["t"] * 5000)
    with pytest.raises(TooManyInputs, match=r"^inputs\.0\.data: more than 2048 inputs"):
        parse_infer(body, None, MAX_INPUTS)


def test_oip_binary_shape_over_the_limit_is_refused_before_decoding() -> None:
    garbage = b"\xff" * 12_000  # element lengths that run past the data, not UTF-8
    body, length = _infer_binary([3000], garbage)
    with pytest.raises(TooManyInputs) as caught:
        parse_infer(body, length, MAX_INPUTS)
    assert caught.value.message == "inputs.0.data: 3000 inputs, at most 2048 allowed"
    # Within the limit, the same bytes reach the decoder, which refuses them.
    body, length = _infer_binary([3], garbage)
    with pytest.raises(BadRequest, match=r"^inputs\.0: binary element runs past") as decoded:
        parse_infer(body, length, MAX_INPUTS)
    assert not isinstance(decoded.value, TooManyInputs)


def test_oip_binary_request_at_the_limit_is_decoded() -> None:
    texts = [f'text {i} "quoted" é' for i in range(MAX_INPUTS)]
    body, length = _infer_binary([MAX_INPUTS, 1], encode_bytes_tensor(texts))
    assert parse_infer(body, length, MAX_INPUTS).texts == texts


def test_oip_request_at_the_limit_with_parameters_is_admitted() -> None:
    # As tritonclient writes it (request id, binary output), plus two request parameters.
    doc = {
        "id": "req-1",
        "parameters": {"tenant": "acme", "priority_class": "batch"},
        "inputs": [
            {"name": "text", "shape": [MAX_INPUTS], "datatype": "BYTES", "data": ["t"] * 2048}
        ],
        "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}],
    }
    assert len(parse_infer(orjson.dumps(doc), None, MAX_INPUTS).texts) == MAX_INPUTS

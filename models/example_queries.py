"""Labelled queries for the example catalog (`models/example_catalog.py`): what a shopper
would type, with every item's relevance read from the catalog's structure.

Five kinds, none copied from a title:

- `intent`: the need in other words ("trail runners for muddy mountain paths"): each
  leaf category's own synonyms and uses. Its items: grade 3; related leaves: 1.
- `attribute`: a product type with one to three constraints of a product that exists
  (colour family, a feature in a shopper's words, men's/women's): "red waterproof rain
  shells". Items of the leaf matching every constraint: 3; all but one: 2; the rest of
  the leaf, and related leaves matching every constraint: 1. Unisex items match both.
- `brand`: a brand and a product type ("norrvik trekking boots"): the brand's items of
  the leaf: 3; its items of related leaves, and other brands' items of the leaf: 1.
- `name`: a model or line name, where words carry no meaning ("stridewell torvane 6",
  "torvane 6 trail runners"): that model (of that leaf, when the query names a type): 3;
  the same model in another leaf, and other models of the line in the leaf: 1.
- `code`: a model number as typed ("STR-4821", "str4821"): the model's items: 3.

Each kind is split half and half into `dev` (for tuning) and `test` (for reporting).
Each query is one JSON line: `{"id", "query", "relevant": {item id: grade}, "split",
"kind"}`; grades run from 1 (partly relevant) to 3 (exactly what was asked for), and an
item a query does not list is not relevant to it.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from models.example_catalog import Catalog, Product
from models.example_catalog_data import AUDIENCE_WORDS, FEATURE_WORDS

DEFAULT_QUERIES = 600
KIND_SHARES = {"intent": 0.25, "attribute": 0.25, "brand": 0.2, "name": 0.15, "code": 0.15}
SPLITS = ("dev", "test")
MAX_GRADE = 3


@dataclass(frozen=True)
class Query:
    """One labelled query."""

    id: str
    query: str
    relevant: dict[str, int]  # item id -> grade (1-3)
    split: str = "test"
    kind: str = ""


Labels = dict[str, int]


class _Structure:
    """The catalog's products grouped the ways relevance reads them."""

    def __init__(self, catalog: Catalog) -> None:
        self.products = catalog.products
        self.by_leaf: dict[str, list[Product]] = defaultdict(list)
        self.by_code: dict[str, list[Product]] = defaultdict(list)
        self.by_line: dict[tuple[str, str], list[Product]] = defaultdict(list)
        self.by_model: dict[tuple[str, str], list[Product]] = defaultdict(list)
        for p in catalog.products:
            self.by_leaf[p.leaf.name].append(p)
            self.by_code[p.code].append(p)
            self.by_line[p.brand, p.line].append(p)
            self.by_model[p.line, p.model].append(p)


class _Maker:
    """Query text and labels of each kind, from a product that answers it."""

    def __init__(self, catalog: Catalog, rng: random.Random) -> None:
        self.s = _Structure(catalog)
        self.rng = rng

    def kinds(self) -> dict[str, Callable[[Product], tuple[str, Labels]]]:
        return {
            "intent": self.intent,
            "attribute": self.attribute,
            "brand": self.brand,
            "name": self.name,
            "code": self.code,
        }

    def _kind(self, p: Product) -> str:
        return self.rng.choice(p.leaf.kinds)

    def _related(self, p: Product) -> list[Product]:
        return [r for name in p.leaf.related for r in self.s.by_leaf[name]]

    def intent(self, p: Product) -> tuple[str, Labels]:
        kind, use = self._kind(p), self.rng.choice(p.leaf.uses)
        text = self.rng.choice((f"{kind} {use}", f"{kind} {use}", f"best {kind} {use}", kind))
        labels = {r.item.id: 1 for r in self._related(p)}
        labels.update({r.item.id: 3 for r in self.s.by_leaf[p.leaf.name]})
        return text, labels

    def attribute(self, p: Product) -> tuple[str, Labels]:
        rng = self.rng
        options: list[tuple[str, str]] = [("color", p.color)]
        options += [("tag", t) for t in p.tags]
        if p.audience:
            options.append(("audience", p.audience))
        chosen = rng.sample(options, rng.randint(1, min(3, len(options))))
        before: list[str] = []
        after: list[str] = []
        for what, value in chosen:
            if what == "color":
                if rng.random() < 0.75:
                    before.append(value)
                else:
                    after.append(f"in {value}")
            elif what == "tag":
                words, phrases = FEATURE_WORDS[value]
                if rng.random() < 0.75:
                    before.append(rng.choice(words))
                else:
                    after.append(rng.choice(phrases))
            else:
                word = rng.choice(AUDIENCE_WORDS[value])
                (after if word.startswith("for ") else before).append(word)
        text = " ".join([*before, self._kind(p), *after])

        def matched(r: Product) -> int:
            return sum(_matches(r, what, value) for what, value in chosen)

        labels = {r.item.id: 1 for r in self._related(p) if matched(r) == len(chosen)}
        for r in self.s.by_leaf[p.leaf.name]:
            missing = len(chosen) - matched(r)
            labels[r.item.id] = 3 if missing == 0 else 2 if missing == 1 < len(chosen) else 1
        return text, labels

    def brand(self, p: Product) -> tuple[str, Labels]:
        rng = self.rng
        brand = p.brand if rng.random() < 0.3 else p.brand.lower()
        kind = self._kind(p) if rng.random() < 0.7 else _plural(p.leaf.noun).lower()
        text = rng.choice((f"{brand} {kind}", f"{brand} {kind}", f"{kind} by {brand}"))
        labels = {r.item.id: 1 for r in self._related(p) if r.brand == p.brand}
        for r in self.s.by_leaf[p.leaf.name]:
            labels[r.item.id] = 3 if r.brand == p.brand else 1
        return text, labels

    def name(self, p: Product) -> tuple[str, Labels]:
        form = self.rng.randrange(3)
        labels: Labels = {}
        if form == 0:  # "stridewell torvane 6": the model, whatever its leaf
            text = f"{p.brand} {p.model}"
            for r in self.s.by_line[p.brand, p.line]:
                if r.model == p.model or r.leaf == p.leaf:
                    labels[r.item.id] = 3 if r.model == p.model else 1
        elif form == 1:  # "torvane 6 trail runners": the model of that leaf
            text = f"{p.model} {self._kind(p)}"
            for r in self.s.by_model[p.line, p.model]:
                labels[r.item.id] = 3 if r.leaf == p.leaf else 1
            for r in self.s.by_line[p.brand, p.line]:
                if r.leaf == p.leaf:
                    labels.setdefault(r.item.id, 1)
        else:  # "stridewell torvane": the whole line
            text = f"{p.brand} {p.line}"
            labels = {r.item.id: 3 for r in self.s.by_line[p.brand, p.line]}
        return text.lower(), labels

    def code(self, p: Product) -> tuple[str, Labels]:
        rng = self.rng
        compact = "".join(c for c in p.code if c.isalnum()).lower()
        text = rng.choice((p.code, p.code, compact, f"{p.brand.lower()} {p.code}"))
        return text, {r.item.id: 3 for r in self.s.by_code[p.code]}


def _matches(p: Product, what: str, value: str) -> bool:
    if what == "color":
        return p.color == value
    if what == "tag":
        return value in p.tags
    return p.audience in (value, None)  # unisex fits both


def _plural(noun: str) -> str:
    if noun.endswith("s"):
        return noun
    if noun.endswith(("sh", "ch", "x")):
        return noun + "es"
    return noun[:-1] + "ves" if noun.endswith("fe") else noun + "s"


def make_queries(catalog: Catalog, n: int = DEFAULT_QUERIES, seed: int = 0) -> list[Query]:
    """`n` labelled queries of the catalog (about `KIND_SHARES` of each kind), each kind
    split evenly into dev and test. The same catalog and seed give the same queries."""
    rng = random.Random(f"queries:{seed}")
    maker = _Maker(catalog, rng)
    kinds = maker.kinds()
    counts = {kind: round(n * share) for kind, share in KIND_SHARES.items()}
    counts["intent"] += n - sum(counts.values())
    seen: set[str] = set()
    out: list[Query] = []
    for kind, count in counts.items():
        made, tries = 0, 0
        while made < count and tries < 50 * count:
            tries += 1
            text, labels = kinds[kind](rng.choice(catalog.products))
            if text.lower() in seen:
                continue
            seen.add(text.lower())
            split = SPLITS[made % 2]
            out.append(Query(f"q{len(out):04d}", text, labels, split, kind))
            made += 1
    return out


# ---- JSON lines ----------------------------------------------------------------------


def write_queries(queries: Iterable[Query], path: Path) -> None:
    """Write queries as JSON lines (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for q in queries:
            row = {"id": q.id, "query": q.query, "relevant": q.relevant, "split": q.split}
            if q.kind:
                row["kind"] = q.kind
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_queries(path: Path) -> list[Query]:
    """Queries from a JSON-lines file: `{"id": str, "query": str, "relevant": {item id:
    grade}}` a line, grades whole numbers 0-3 (0: judged not relevant), optional
    `"split"` (`dev` or `test`, default `test`) and `"kind"`. A bad line names its number."""
    queries = []
    with path.open() as lines:
        for n, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    queries.append(_query(json.loads(line)))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: not a labelled query ({e})") from e
    return queries


def _query(row: dict[str, object]) -> Query:
    qid, text, relevant = row["id"], row["query"], row["relevant"]
    split, kind = row.get("split", "test"), row.get("kind", "")
    if not isinstance(qid, str) or not isinstance(text, str) or not text.strip():
        raise TypeError("id and query must be non-empty strings")
    if not isinstance(relevant, dict):
        raise TypeError("relevant must be an object of item id -> grade")
    grades = {}
    for item_id, grade in relevant.items():
        if isinstance(grade, bool) or not isinstance(grade, int) or not 0 <= grade <= MAX_GRADE:
            raise ValueError(f"grade of {item_id!r} must be a whole number 0-{MAX_GRADE}")
        grades[str(item_id)] = grade
    if split not in SPLITS or not isinstance(kind, str):
        raise ValueError(f"split must be one of {', '.join(SPLITS)}")
    return Query(qid, text, grades, str(split), kind)

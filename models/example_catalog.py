"""A deterministic example product catalog, for trying and evaluating search.

    python -m models.example_catalog --out artifacts/catalog/products.jsonl \\
        [--items 50000] [--seed 0] [--queries 600]

writes the catalog as JSON lines (one item a line, the shape `PUT /v1/catalogs/{catalog}/
items` takes: `id`, `text`, `attributes`) and, beside it, `queries.jsonl`: the labelled
queries of `models/example_queries.py`, made from the same catalog.

No installed package ships a product catalog, so this generator is the source. The
vocabulary (`models/example_catalog_data.py`) has 8 departments and 58 leaf categories,
each with its fictional brands, price range, sizes, materials, features and colours. A
product is a model of a brand's product line ("Stridewell Aerion 3"), with a model number
in its text ("STR-4821"); its items are its variants: colourways (footwear and clothing
come in every size, which the description says), times sizes where a size makes another
product ("2-person" tents, "1.5 L" kettles). The same seed and size give the same
catalog, byte for byte.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import random
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from models.example_catalog_data import (
    AUDIENCE_TITLE,
    DEPARTMENTS,
    FEATURE_TITLES,
    LINE_ENDINGS,
    LINE_ONSETS,
    LINE_WORDS,
    MAX_GENERATION,
    MODEL_TIERS,
    SHADES,
    Department,
    Leaf,
)
from stores.catalog import AttrValue, Item, item_problem

DEFAULT_ITEMS = 50_000
IN_STOCK_SHARE = 0.88
UNISEX_SHARE = 0.15
MAX_COLOURS = 5
MAX_SPEC_SIZES = 3


@dataclass(frozen=True)
class Product:
    """One catalog item and the structure it was made from (what relevance reads)."""

    item: Item
    department: str
    leaf: Leaf
    brand: str
    line: str  # "Aerion"
    model: str  # "Aerion 3"
    code: str  # the model number in the text, shared by the model's variants
    color: str  # colour family
    audience: str | None  # "men", "women", or None (unisex, or not worn)
    tags: tuple[str, ...]

    @property
    def category(self) -> str:
        """The category path, as the `category` attribute holds it."""
        return category_path(self.department, self.leaf)


@dataclass(frozen=True)
class Catalog:
    """A generated catalog: its products, in id order."""

    products: list[Product]
    seed: int

    @property
    def items(self) -> list[Item]:
        """The catalog items."""
        return [p.item for p in self.products]


def category_path(department: str, leaf: Leaf) -> str:
    """`Department > Leaf`."""
    return f"{department} > {leaf.name}"


def leaves() -> list[tuple[Department, Leaf]]:
    """Every leaf category with its department, in table order."""
    return [(dept, leaf) for dept in DEPARTMENTS for leaf in dept.leaves]


def generate(n_items: int = DEFAULT_ITEMS, seed: int = 0) -> Catalog:
    """A catalog of exactly `n_items` items (at least one per leaf category)."""
    all_leaves = leaves()
    if n_items < len(all_leaves):
        raise ValueError(f"need at least {len(all_leaves)} items, one per leaf category")
    rng = random.Random(seed)
    quotas = _quotas(n_items, [leaf.weight for _, leaf in all_leaves])
    prefixes = _brand_prefixes()
    lines = {dept.name: _brand_lines(rng, dept) for dept in DEPARTMENTS}
    codes: set[str] = set()
    drafts: list[_Draft] = []
    for (dept, leaf), quota in zip(all_leaves, quotas, strict=True):
        maker = _ModelMaker(rng, dept, leaf, lines[dept.name], prefixes, codes)
        drafts.extend(maker.variants(quota))
    rng.shuffle(drafts)  # ids say nothing about the category
    width = max(6, len(str(n_items - 1)))
    return Catalog([d.product(f"p{i:0{width}d}") for i, d in enumerate(drafts)], seed)


def _quotas(total: int, weights: list[float]) -> list[int]:
    """`total` split by weight (largest remainders), at least 1 each."""
    spare = total - len(weights)
    shares = [spare * w / sum(weights) for w in weights]
    counts = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(weights)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: spare - sum(counts)]:
        counts[i] += 1
    return [c + 1 for c in counts]


def _brand_prefixes() -> dict[str, str]:
    """A distinct three-letter model-number prefix per brand: its initial and two more
    of its letters, consonants first ("Stridewell": STR)."""
    prefixes: dict[str, str] = {}
    for brand in dict.fromkeys(b for dept in DEPARTMENTS for b in dept.brands):
        letters = [c for c in brand.upper() if c.isalpha()]
        head, rest = letters[0], letters[1:]
        consonants = [c for c in rest if c not in "AEIOU"]
        candidates = (
            head + a + b for pool in (consonants, rest) for a, b in itertools.combinations(pool, 2)
        )
        prefix = next((p for p in candidates if p not in prefixes.values()), None)
        if prefix is None:
            raise ValueError(f"no free model-number prefix for {brand!r}")
        prefixes[brand] = prefix
    return prefixes


def _style(brand: str, what: str, n: int) -> int:
    """Which of `n` house styles (of titles, of model numbers) a brand uses."""
    return zlib.crc32(f"{what}:{brand}".encode()) % n


def _line_names(rng: random.Random) -> list[str]:
    invented = [onset + ending for onset in LINE_ONSETS for ending in LINE_ENDINGS]
    names = list(dict.fromkeys(invented + list(LINE_WORDS)))
    rng.shuffle(names)
    return names


def _brand_lines(rng: random.Random, dept: Department) -> dict[str, list[str]]:
    """Each brand's product lines in a department; no two brands there share a name."""
    pool = iter(_line_names(rng))
    return {brand: [next(pool) for _ in range(rng.randint(4, 7))] for brand in dept.brands}


@dataclass(frozen=True)
class _Draft:
    """An item before it has an id."""

    department: str
    leaf: Leaf
    brand: str
    line: str
    model: str
    code: str
    color: str
    shade: str
    audience: str | None
    tags: tuple[str, ...]
    material: str
    size: str | None  # a size that makes another product, in the title
    fit_sizes: tuple[str, ...]  # sizes one item comes in (footwear, clothing)
    price: float
    in_stock: bool
    title_style: int
    blurbs: tuple[str, ...]

    def product(self, item_id: str) -> Product:
        attributes: dict[str, AttrValue] = {
            "category": category_path(self.department, self.leaf),
            "brand": self.brand,
            "price": self.price,
            "tags": list(self.tags),
            "in_stock": self.in_stock,
            "color": self.color,
            "material": self.material,
            "model": self.code,
        }
        if self.audience is not None:
            attributes["audience"] = self.audience
        if self.size is not None:
            attributes["size"] = self.size
        text = {"title": self._title(), "description": self._description(), "brand": self.brand}
        return Product(
            item=Item(id=item_id, text=text, attributes=attributes),
            department=self.department,
            leaf=self.leaf,
            brand=self.brand,
            line=self.line,
            model=self.model,
            code=self.code,
            color=self.color,
            audience=self.audience,
            tags=self.tags,
        )

    def _title(self) -> str:
        who = AUDIENCE_TITLE[self.audience] + " " if self.audience else ""
        features = [FEATURE_TITLES.get(t, t.replace("-", " ").title()) for t in self.tags[:2]]
        details = [*features, self.shade, *([self.size] if self.size else [])]
        if self.title_style == 0:
            return f"{self.brand} {self.model} {who}{self.leaf.noun}, {', '.join(details)}"
        if self.title_style == 1:
            return f"{self.brand} {who}{self.leaf.noun} {self.model} - {' - '.join(details)}"
        size = f" {self.size}" if self.size else ""
        extra = f", {', '.join(features)}" if features else ""
        return f"{self.brand} {self.model}{size} {who}{self.leaf.noun} ({self.shade}{extra})"

    def _description(self) -> str:
        parts = list(self.blurbs)
        parts.append(f"Made of {self.material}.")
        if self.fit_sizes:
            parts.append(f"Sizes {self.fit_sizes[0]} to {self.fit_sizes[-1]}.")
        parts.append(f"Model {self.code}.")
        return " ".join(parts)


class _ModelMaker:
    """Makes the models of one leaf category and their variants."""

    def __init__(
        self,
        rng: random.Random,
        dept: Department,
        leaf: Leaf,
        lines: dict[str, list[str]],
        prefixes: dict[str, str],
        codes: set[str],
    ) -> None:
        self.rng, self.dept, self.leaf = rng, dept, leaf
        self.prefixes, self.codes = prefixes, codes
        self.brands = rng.sample(dept.brands, min(len(dept.brands), rng.randint(4, 6)))
        # a brand's tier moves its prices; some brands sell more models than others
        self.tier = {b: rng.uniform(0.8, 1.25) for b in self.brands}
        self.share = [rng.uniform(0.5, 2.0) for _ in self.brands]
        self.lines = {b: rng.sample(lines[b], rng.randint(2, 4)) for b in self.brands}
        self.models: set[tuple[str, str]] = set()

    def variants(self, quota: int) -> Iterator[_Draft]:
        """`quota` items: whole models, the last one cut short if need be."""
        made = 0
        while made < quota:
            for draft in self._model(quota - made):
                made += 1
                yield draft

    def _name(self) -> tuple[str, str, str]:
        """A brand, one of its lines here, and a model name not made yet."""
        while True:
            brand = self.rng.choices(self.brands, self.share)[0]
            line = self.rng.choice(self.lines[brand])
            generation = self.rng.randint(1, MAX_GENERATION)
            tier = self.rng.choice(MODEL_TIERS) if self.rng.random() < 0.4 else None
            model = f"{line} {tier} {generation}" if tier else f"{line} {generation}"
            if (brand, model) not in self.models:
                self.models.add((brand, model))
                return brand, line, model

    def _model(self, room: int) -> list[_Draft]:
        """A new model's variants (at most `room`)."""
        rng, leaf = self.rng, self.leaf
        brand, line, model = self._name()
        audience = None
        if leaf.audience and rng.random() >= UNISEX_SHARE:
            audience = rng.choice(("men", "women"))
        lo, hi = leaf.price
        base = lo * (hi / lo) ** rng.triangular(0, 1, 0.3) * self.tier[brand]
        template = _Draft(
            department=self.dept.name,
            leaf=leaf,
            brand=brand,
            line=line,
            model=model,
            code=self._code(brand),
            color="",
            shade="",
            audience=audience,
            tags=tuple(t for t in leaf.features if rng.random() < 0.35),
            material=rng.choice(leaf.materials),
            size=None,
            fit_sizes=self._fit_sizes(),
            price=0.0,
            in_stock=True,
            title_style=_style(brand, "title", 3),
            blurbs=tuple(rng.sample(leaf.blurbs, 2)),
        )
        families = list(dict.fromkeys(leaf.colors))
        colours = rng.sample(families, rng.randint(1, min(MAX_COLOURS, len(families))))
        out = []
        for colour in colours:
            shade = rng.choice(SHADES[colour])
            for i, size in enumerate(self._spec_sizes()):
                out.append(
                    dataclasses.replace(
                        template,
                        color=colour,
                        shade=shade,
                        size=size,
                        price=_price(min(max(base * (1 + 0.2 * i), lo), hi * 1.1)),
                        in_stock=rng.random() < IN_STOCK_SHARE,
                    )
                )
        rng.shuffle(out)
        return out[:room]

    def _spec_sizes(self) -> list[str | None]:
        """Sizes that make separate items (a 2-person and a 4-person tent), or [None]."""
        sizes = self.leaf.sizes
        if self.leaf.audience or not sizes:
            return [None]
        n = self.rng.randint(1, min(MAX_SPEC_SIZES, len(sizes)))
        start = self.rng.randrange(len(sizes) - n + 1)
        return list(sizes[start : start + n])

    def _fit_sizes(self) -> tuple[str, ...]:
        """The run of sizes one item of footwear or clothing comes in, else ()."""
        sizes = self.leaf.sizes
        if not (self.leaf.audience and sizes):
            return ()
        n = self.rng.randint(max(2, len(sizes) // 2), len(sizes))
        start = self.rng.randrange(len(sizes) - n + 1)
        return sizes[start : start + n]

    def _code(self, brand: str) -> str:
        """A model number in the brand's own format, unique in the catalog."""
        prefix, style = self.prefixes[brand], _style(brand, "code", 3)
        while True:
            n = self.rng.randrange(1000, 10_000)
            if style == 0:
                code = f"{prefix}-{n}"
            elif style == 1:
                code = f"{prefix[:2]}{n}{self.rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}"
            else:
                code = f"{prefix} {n // 100}-{n % 100:02d}"
            if code not in self.codes:
                self.codes.add(code)
                return code


def _price(value: float) -> float:
    """A shelf price: whole units ending in .99 (.49 under 10)."""
    return round(math.floor(value) + (0.49 if value < 10 else 0.99), 2)


# ---- JSON lines ----------------------------------------------------------------------


def item_record(item: Item) -> dict[str, object]:
    """An item as one JSON line holds it."""
    return {"id": item.id, "text": item.text, "attributes": item.attributes}


def write_items(items: Iterable[Item], path: Path) -> None:
    """Write items as JSON lines (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for item in items:
            out.write(json.dumps(item_record(item), ensure_ascii=False, sort_keys=True) + "\n")


def read_items(path: Path) -> list[Item]:
    """Items from a JSON-lines file: `{"id", "text": {field: str}, "attributes": {...}}`
    a line, each as the items route takes it (`null`, `NaN` or an integer past 2^53 in
    an attribute is refused, as a snapshot must not hold what no replica can index); a
    line that is not one names its number and the field."""
    items = []
    with path.open() as lines:
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row["text"]
                if not isinstance(row["id"], str) or not isinstance(text, dict):
                    raise TypeError("id must be a string and text an object")
                if not all(isinstance(v, str) for v in text.values()):
                    raise TypeError("text fields must be strings")
                attributes = row.get("attributes", {})
                if not isinstance(attributes, dict):
                    raise TypeError("attributes: an object")
                item = Item(row["id"], dict(text), dict(attributes))
                if (problem := item_problem(item)) is not None:
                    raise ValueError(problem)
                items.append(item)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a catalog item ({e})") from e
    return items


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: write the catalog and its labelled queries."""
    from models.example_queries import DEFAULT_QUERIES, make_queries, write_queries

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("artifacts/catalog/products.jsonl"))
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, help="catalog size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES, help="how many")
    parser.add_argument(
        "--queries-out", type=Path, default=None, help="default: queries.jsonl beside --out"
    )
    args = parser.parse_args(argv)
    catalog = generate(args.items, args.seed)
    write_items(catalog.items, args.out)
    queries = make_queries(catalog, args.queries, args.seed)
    queries_out = args.queries_out or args.out.with_name("queries.jsonl")
    write_queries(queries, queries_out)
    print(f"{args.out}: {len(catalog.products)} items; {queries_out}: {len(queries)} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())

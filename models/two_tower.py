"""The recommender's candidate stage: a two-tower model, trained offline, served as two
ONNX graphs.

The item tower reads an item's content: the words of its title and brand (hashed into
`TOKEN_BUCKETS`, so a new item's words already mean something), its category and brand
(hashed too: any tenant's names work) and its price. An item nobody has touched is
therefore reachable through its content. The user tower reads what the online
features hold: the mean of the item-tower vectors of the user's recent items, the top
category and brand affinities (sharing the item tower's category and brand tables, so
a liked category and an item of it meet), and the user's activity counts. Both end in
unit vectors of `DIM`; the score is their dot product, and the item vectors go into
the same ANN index search uses, one per model version.

Training: every click, add-to-cart and purchase before the split is a positive, with the
user's features as they were just before it (the event weights of the feature
definitions); in-batch softmax over the batch's positives. Deterministic for one seed,
and the same bytes on any x86-64 CPU: the build pins ATen's kernels to AVX2, and every
matrix product of training and of the vectors it ships runs in numpy's OpenBLAS, which
the build pins to one kernel (its MKL, torch's BLAS, gave different sums on different
CPUs even told to keep to AVX2). The exported graphs keep ONNX's own matrix products.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.example_interactions import Interaction
from models.lexical import tokenize
from stores.catalog import Item

DIM = 64
TOKEN_BUCKETS = 1 << 15
NAME_BUCKETS = 4096  # categories and brands
MAX_TOKENS = 24
HISTORY = 20  # recent items the user tower reads (the features' recent_items)
TOP = 10  # affinities it reads (the features' top_k)
EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
POSITIVE = ("click", "add_to_cart", "purchase")
ACTIVITY = ("view", "click", "add_to_cart", "purchase")

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


def bucket(name: str, buckets: int) -> int:
    """A name's hashed bucket, 1 to `buckets` - 1 (0 pads)."""
    return 1 + zlib.crc32(name.encode()) % (buckets - 1)


@dataclass(frozen=True)
class ItemInputs:
    """The item tower's inputs for a list of items, row by row."""

    tokens: I64  # (n, MAX_TOKENS), 0 pads
    category: I64  # (n,)
    brand: I64  # (n,)
    price: F32  # (n, 1): log1p(price), centred

    @classmethod
    def of(cls, items: Sequence[Item]) -> ItemInputs:
        """Inputs of `items` (title and brand words, category, brand, price)."""
        tokens = np.zeros((len(items), MAX_TOKENS), np.int64)
        category, brand = np.zeros(len(items), np.int64), np.zeros(len(items), np.int64)
        price = np.zeros((len(items), 1), np.float32)
        for n, item in enumerate(items):
            words = " ".join(item.text.get(f, "") for f in ("title", "brand", "name"))
            ids = [bucket(t, TOKEN_BUCKETS) for t in tokenize(words)][:MAX_TOKENS]
            tokens[n, : len(ids)] = ids
            attrs = item.attributes
            category[n] = bucket(str(attrs.get("category", "")), NAME_BUCKETS)
            brand[n] = bucket(str(attrs.get("brand", "")), NAME_BUCKETS)
            value = attrs.get("price", 0.0)
            price[n, 0] = (
                math.log1p(max(0.0, float(value))) - 4.0 if isinstance(value, int | float) else 0.0
            )
        return cls(tokens, category, brand, price)


@dataclass(frozen=True)
class UserInputs:
    """The user tower's inputs (besides the history vector), row by row."""

    categories: I64  # (n, TOP) buckets, 0 pads
    category_weights: F32  # (n, TOP), summing to 1 (or 0)
    brands: I64
    brand_weights: F32
    activity: F32  # (n, len(ACTIVITY)): log1p of counts


@dataclass
class UserState:
    """A user's features, kept as events arrive (as the online store keeps them)."""

    recent: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY))
    categories: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    brands: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, slot: int, item: Item, kind: str) -> None:
        """Fold one event in."""
        if slot in self.recent:
            self.recent.remove(slot)
        self.recent.append(slot)
        weight = EVENT_WEIGHTS[kind]
        self.categories[str(item.attributes.get("category", ""))] += weight
        self.brands[str(item.attributes.get("brand", ""))] += weight
        self.counts[kind] += 1


def user_inputs(
    affinities: Sequence[tuple[dict[str, float], dict[str, float], dict[str, int]]],
) -> UserInputs:
    """Inputs from (category affinities, brand affinities, counts by event type) per
    user: the top `TOP` of each affinity, weights normalised."""
    n = len(affinities)
    out = UserInputs(
        np.zeros((n, TOP), np.int64), np.zeros((n, TOP), np.float32),
        np.zeros((n, TOP), np.int64), np.zeros((n, TOP), np.float32),
        np.zeros((n, len(ACTIVITY)), np.float32),
    )  # fmt: skip
    for row, (cats, brands, counts) in enumerate(affinities):
        for names, ids, weights in ((cats, out.categories, out.category_weights),
                                    (brands, out.brands, out.brand_weights)):  # fmt: skip
            top = sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
            total = sum(w for _, w in top) or 1.0
            for col, (name, w) in enumerate(top):
                ids[row, col] = bucket(name, NAME_BUCKETS)
                weights[row, col] = w / total
        out.activity[row] = [math.log1p(counts.get(k, 0)) for k in ACTIVITY]
    return out


# While the towers are exported, their linear layers are traced as plain ones.
_EXPORTING = {"on": False}


def _blas_matmul(a: Any, b: Any) -> Any:
    """`a @ b` (2-D float32 tensors) in numpy's BLAS, with its gradient likewise."""
    return _blas_matmul_function().apply(a, b)


@functools.cache
def _blas_matmul_function() -> Any:
    """The autograd function of `_blas_matmul`, defined once torch is imported."""
    import torch

    class BlasMatmul(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, a: Any, b: Any) -> Any:
            ctx.save_for_backward(a, b)
            return torch.from_numpy(a.detach().numpy() @ b.detach().numpy())

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            a, b = ctx.saved_tensors
            g = grad.detach().contiguous().numpy()
            return (
                torch.from_numpy(g @ b.detach().numpy().T),
                torch.from_numpy(a.detach().numpy().T @ g),
            )

    return BlasMatmul


class _Adam:
    """Adam (Kingma and Ba; torch's defaults), with its square roots taken in numpy:
    torch's run in MKL's vector math, whose results differ between CPUs."""

    def __init__(self, params: list[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:  # fmt: skip
        import torch

        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        self.steps += 1
        b1, b2 = self.betas
        step_size = self.lr / (1 - b1**self.steps)
        root_correction = math.sqrt(1 - b2**self.steps)
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v, strict=True):
                if p.grad is None:
                    continue
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                root = torch.from_numpy(np.sqrt(v.numpy()))
                p.addcdiv_(m, root.div_(root_correction).add_(self.eps), value=-step_size)


def _modules() -> Any:
    import torch
    from torch import nn

    class Linear(nn.Linear):
        """A linear layer whose product runs in numpy's BLAS (see the module's doc),
        exported as a plain one."""

        def forward(self, x: Any) -> Any:
            if _EXPORTING["on"]:
                return super().forward(x)
            return _blas_matmul(x, self.weight.t()) + self.bias

    class ItemTower(nn.Module):
        def __init__(self, shared: nn.ModuleDict) -> None:
            super().__init__()
            self.shared = shared
            self.tokens = nn.Embedding(TOKEN_BUCKETS, DIM, padding_idx=0)
            self.mlp = nn.Sequential(Linear(3 * DIM + 1, 128), nn.ReLU(), Linear(128, DIM))

        def forward(self, tokens: Any, category: Any, brand: Any, price: Any) -> Any:
            mask = (tokens > 0).unsqueeze(-1).float()
            words = (self.tokens(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            cat, brd = self.shared["category"](category), self.shared["brand"](brand)
            out = self.mlp(torch.cat([words, cat, brd, price], dim=-1))
            return nn.functional.normalize(out, dim=-1)

    class UserTower(nn.Module):
        def __init__(self, shared: nn.ModuleDict) -> None:
            super().__init__()
            self.shared = shared
            self.mlp = nn.Sequential(
                Linear(3 * DIM + len(ACTIVITY), 128), nn.ReLU(), Linear(128, DIM)
            )

        def forward(
            self, history: Any, categories: Any, category_weights: Any, brands: Any,
            brand_weights: Any, activity: Any,
        ) -> Any:  # fmt: skip
            cat = (self.shared["category"](categories) * category_weights.unsqueeze(-1)).sum(1)
            brd = (self.shared["brand"](brands) * brand_weights.unsqueeze(-1)).sum(1)
            out = self.mlp(torch.cat([history, cat, brd, activity], dim=-1))
            return nn.functional.normalize(out, dim=-1)

    shared = nn.ModuleDict(
        {
            "category": nn.Embedding(NAME_BUCKETS, DIM, padding_idx=0),
            "brand": nn.Embedding(NAME_BUCKETS, DIM, padding_idx=0),
        }
    )
    return ItemTower(shared), UserTower(shared)


@dataclass
class Examples:
    """Training rows: the user's state before each positive event, and the item."""

    history: list[list[int]]  # slots of recent items
    users: UserInputs
    items: I64  # slot of the positive item


def examples(
    items: Sequence[Item], train: Sequence[Interaction]
) -> tuple[Examples, dict[str, UserState]]:
    """Training rows from the train log, and every user's state at its end."""
    slot_of = {item.id: n for n, item in enumerate(items)}
    states: dict[str, UserState] = defaultdict(UserState)
    history: list[list[int]] = []
    affinities: list[tuple[dict[str, float], dict[str, float], dict[str, int]]] = []
    positives: list[int] = []
    for event in train:
        slot = slot_of.get(event.item)
        if slot is None:
            continue
        state = states[event.user]
        if event.type in POSITIVE and state.counts:
            history.append(list(state.recent))
            affinities.append((dict(state.categories), dict(state.brands), dict(state.counts)))
            positives.append(slot)
        state.add(slot, items[slot], event.type)
    rows = Examples(history, user_inputs(affinities), np.array(positives, np.int64))
    return rows, dict(states)


@dataclass
class TwoTower:
    """Trained towers, and the item vectors of the catalog they were trained on."""

    item_tower: Any
    user_tower: Any
    item_vectors: F32  # (n_items, DIM)

    def user_vectors(self, history: Sequence[Sequence[int]], users: UserInputs) -> F32:
        """User vectors from recent item slots and the other inputs."""
        import torch

        hist = np.zeros((len(history), DIM), np.float32)
        for n, slots in enumerate(history):
            if slots:
                hist[n] = self.item_vectors[list(slots)].mean(0)
        with torch.no_grad():
            out = self.user_tower(
                torch.from_numpy(hist), torch.from_numpy(users.categories),
                torch.from_numpy(users.category_weights), torch.from_numpy(users.brands),
                torch.from_numpy(users.brand_weights), torch.from_numpy(users.activity),
            )  # fmt: skip
        return np.asarray(out.numpy(), np.float32)


def item_vectors(tower: Any, inputs: ItemInputs, chunk: int = 8192) -> F32:
    """Item-tower vectors of every item, in chunks."""
    import torch

    parts = []
    with torch.no_grad():
        for s in range(0, len(inputs.category), chunk):
            e = s + chunk
            parts.append(
                tower(
                    torch.from_numpy(inputs.tokens[s:e]), torch.from_numpy(inputs.category[s:e]),
                    torch.from_numpy(inputs.brand[s:e]), torch.from_numpy(inputs.price[s:e]),
                ).numpy()
            )  # fmt: skip
    return np.concatenate(parts).astype(np.float32)


def train(
    items: Sequence[Item],
    rows: Examples,
    epochs: int = 3,
    batch: int = 512,
    seed: int = 0,
    temperature: float = 0.05,
    log: Any = print,
) -> TwoTower:
    """Train both towers with in-batch softmax; deterministic for one seed."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    item_tower, user_tower = _modules()
    inputs = ItemInputs.of(items)
    t = {
        "tokens": torch.from_numpy(inputs.tokens),
        "category": torch.from_numpy(inputs.category),
        "brand": torch.from_numpy(inputs.brand),
        "price": torch.from_numpy(inputs.price),
    }
    hist = np.zeros((len(rows.items), HISTORY), np.int64)
    hist_mask = np.zeros((len(rows.items), HISTORY), np.float32)
    for n, slots in enumerate(rows.history):
        hist[n, : len(slots)] = slots
        hist_mask[n, : len(slots)] = 1.0
    params = list(item_tower.parameters()) + [
        p for name, p in user_tower.named_parameters() if not name.startswith("shared.")
    ]
    optimizer = _Adam(params, lr=3e-3)
    rng = np.random.default_rng(seed)
    u = rows.users
    for epoch in range(epochs):
        order = rng.permutation(len(rows.items))
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            pos = torch.from_numpy(rows.items[idx])
            h_slots = torch.from_numpy(hist[idx])
            h_mask = torch.from_numpy(hist_mask[idx]).unsqueeze(-1)
            flat = h_slots.reshape(-1)
            h_vec = item_tower(t["tokens"][flat], t["category"][flat], t["brand"][flat],
                               t["price"][flat]).reshape(len(idx), HISTORY, DIM)  # fmt: skip
            history = (h_vec * h_mask).sum(1) / h_mask.sum(1).clamp(min=1.0)
            user = user_tower(
                history, torch.from_numpy(u.categories[idx]),
                torch.from_numpy(u.category_weights[idx]), torch.from_numpy(u.brands[idx]),
                torch.from_numpy(u.brand_weights[idx]), torch.from_numpy(u.activity[idx]),
            )  # fmt: skip
            item = item_tower(
                t["tokens"][pos], t["category"][pos], t["brand"][pos], t["price"][pos]
            )
            logits = _blas_matmul(user, item.T) / temperature
            # the same item twice in a batch is not a negative of itself
            same = pos.unsqueeze(0) == pos.unsqueeze(1)
            logits = logits.masked_fill(same & ~torch.eye(len(idx), dtype=torch.bool), -1e9)
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(idx)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        log(f"two-tower epoch {epoch + 1}/{epochs}: loss {total / len(order):.3f}")
    item_tower.eval()
    user_tower.eval()
    return TwoTower(item_tower, user_tower, item_vectors(item_tower, inputs))


def export(model: TwoTower, out_dir: Any) -> dict[str, str]:
    """Both towers as ONNX graphs (dynamic batch) in `out_dir`; file names by tower."""
    from pathlib import Path

    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=65536)
    inputs = ItemInputs.of([Item("x", {"title": "a b"}, {"price": 1.0})] * 2)
    item_args = (
        torch.from_numpy(inputs.tokens), torch.from_numpy(inputs.category),
        torch.from_numpy(inputs.brand), torch.from_numpy(inputs.price),
    )  # fmt: skip
    names = ["tokens", "category", "brand", "price"]
    u = user_inputs([({"c": 1.0}, {"b": 1.0}, {"view": 1})] * 2)
    user_args = (
        torch.zeros(2, DIM), torch.from_numpy(u.categories), torch.from_numpy(u.category_weights),
        torch.from_numpy(u.brands), torch.from_numpy(u.brand_weights), torch.from_numpy(u.activity),
    )  # fmt: skip
    user_names = [
        "history", "categories", "category_weights", "brands", "brand_weights", "activity",
    ]  # fmt: skip
    _EXPORTING["on"] = True
    try:
        _save(model.item_tower, item_args, names, "item_vector", batch, out / "item_tower.onnx")
        _save(model.user_tower, user_args, user_names, "user_vector", batch,
              out / "user_tower.onnx")  # fmt: skip
    finally:
        _EXPORTING["on"] = False
    return {"item_tower": "item_tower.onnx", "user_tower": "user_tower.onnx"}


def _save(module: Any, args: tuple[Any, ...], names: list[str], output: str, batch: Any,
          path: Any) -> None:  # fmt: skip
    import torch

    program = torch.onnx.export(
        module, args, dynamo=True, input_names=names, output_names=[output],
        dynamic_shapes={name: {0: batch} for name in names}, optimize=True, verbose=False,
    )  # fmt: skip
    if program is None:
        raise RuntimeError("the ONNX exporter returned no program")
    program.save(str(path))


@dataclass(frozen=True)
class Scores:
    """recall@10 and NDCG@10 of a ranking over the test users, beside popularity's."""

    users: int
    recall: float
    ndcg: float
    popularity_recall: float
    popularity_ndcg: float


def evaluate(
    model: TwoTower,
    items: Sequence[Item],
    train_log: Sequence[Interaction],
    test_log: Sequence[Interaction],
    states: dict[str, UserState],
    k: int = 10,
) -> Scores:
    """Each test user's positives after the split (graded: click 1, cart 2, purchase 3)
    against the model's top k from the user's state at the split, and against the most
    interacted items of the train log."""
    from models.ranking_metrics import ndcg_at_k, recall_at_k

    grade = {"click": 1, "add_to_cart": 2, "purchase": 3}
    relevant: dict[str, dict[str, int]] = defaultdict(dict)
    for e in test_log:
        if e.type in grade:
            relevant[e.user][e.item] = max(relevant[e.user].get(e.item, 0), grade[e.type])
    users = sorted(u for u in relevant if u in states)
    ids = [item.id for item in items]
    slot = {i: n for n, i in enumerate(ids)}
    popularity = np.zeros(len(items))
    for e in train_log:
        if e.type in grade and e.item in slot:
            popularity[slot[e.item]] += 1
    popular = [ids[n] for n in np.argsort(-popularity, kind="stable")[:k]]
    got = {"recall": 0.0, "ndcg": 0.0, "pop_recall": 0.0, "pop_ndcg": 0.0}
    for start in range(0, len(users), 512):
        chunk = [states[u] for u in users[start : start + 512]]
        inputs = user_inputs([(dict(s.categories), dict(s.brands), dict(s.counts)) for s in chunk])
        scores = model.user_vectors([list(s.recent) for s in chunk], inputs) @ model.item_vectors.T
        for n, user in enumerate(users[start : start + 512]):
            top = np.argpartition(-scores[n], k)[:k]
            ranked = [ids[i] for i in top[np.argsort(-scores[n][top], kind="stable")]]
            got["recall"] += recall_at_k(ranked, relevant[user], k)
            got["ndcg"] += ndcg_at_k(ranked, relevant[user], k)
            got["pop_recall"] += recall_at_k(popular, relevant[user], k)
            got["pop_ndcg"] += ndcg_at_k(popular, relevant[user], k)
    n = max(1, len(users))
    return Scores(len(users), got["recall"] / n, got["ndcg"] / n, got["pop_recall"] / n,
                  got["pop_ndcg"] / n)  # fmt: skip

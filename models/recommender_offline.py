"""The recommender offline: the ranker's training rows, the ranker, and the evaluation
of the whole two-stage pipeline against popularity and item-to-item co-occurrence.

Everything is computed from an interaction log at a point in time, the way the online
store holds it then: users' states (`UserState`), items' weighted events and last event.
The ranker learns, on the train log's last days, which of the two towers' candidates a
user goes on to click, add to the cart or buy; the evaluation scores each method's top
10 against what test users do after the split.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from models.example_interactions import Interaction
from models.ranking_metrics import ndcg_at_k, recall_at_k
from models.recommender import F32, RANK_FEATURES, ItemStats, Profile, Ranker, rank_features
from models.two_tower import (
    EVENT_WEIGHTS,
    POSITIVE,
    TwoTower,
    UserInputs,
    UserState,
    examples,
    user_inputs,
)
from stores.catalog import Item

CANDIDATES = 150  # the towers' candidates the ranker reorders (recommendations.candidates)
GRADE = {"click": 1, "add_to_cart": 2, "purchase": 3}
RANKER_DAYS = 5  # the train log's last days label the ranker's rows


class Towers(Protocol):
    """What scoring reads of a two-tower model: trained (`TwoTower`) or shipped (ONNX)."""

    item_vectors: F32

    def user_vectors(self, history: Sequence[Sequence[int]], users: UserInputs) -> F32:
        """User vectors from recent item slots and the other inputs."""
        ...


def item_stats(log: Sequence[Interaction]) -> dict[str, ItemStats]:
    """Weighted events and last event of each item, as the online store holds them."""
    weight: dict[str, float] = defaultdict(float)
    last: dict[str, float] = {}
    for e in log:
        weight[e.item] += EVENT_WEIGHTS[e.type]
        last[e.item] = max(last.get(e.item, 0.0), e.timestamp)
    return {i: ItemStats(w, last[i]) for i, w in weight.items()}


def profile(state: UserState, ids: Sequence[str]) -> Profile:
    """A user's state as the online features present it: affinity shares, counts."""

    def shares(weights: dict[str, float]) -> dict[str, float]:
        total = sum(weights.values()) or 1.0
        top = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        return {k: v / total for k, v in top}

    recent = [ids[s] for s in reversed(state.recent)]
    return Profile(recent, shares(dict(state.categories)), shares(dict(state.brands)),
                   dict(state.counts))  # fmt: skip


def relevant(log: Sequence[Interaction]) -> dict[str, dict[str, int]]:
    """Each user's graded positives in `log`."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for e in log:
        if e.type in GRADE:
            out[e.user][e.item] = max(out[e.user].get(e.item, 0), GRADE[e.type])
    return out


@dataclass
class Scored:
    """One user's candidates: item slots, the towers' scores, the ranker's features."""

    slots: list[int]
    features: F32


def candidates(
    model: Towers,
    items: Sequence[Item],
    users: Sequence[str],
    states: dict[str, UserState],
    stats: dict[str, ItemStats],
    now: float,
) -> dict[str, Scored]:
    """Each user's `CANDIDATES` best items by the towers, with the ranker's features."""
    ids = [item.id for item in items]
    out: dict[str, Scored] = {}
    for start in range(0, len(users), 512):
        chunk = list(users[start : start + 512])
        st = [states[u] for u in chunk]
        inputs = user_inputs([(dict(s.categories), dict(s.brands), dict(s.counts)) for s in st])
        scores = model.user_vectors([list(s.recent) for s in st], inputs) @ model.item_vectors.T
        for n, user in enumerate(chunk):
            top = np.argpartition(-scores[n], CANDIDATES)[:CANDIDATES]
            top = top[np.argsort(-scores[n][top], kind="stable")]
            prof = profile(st[n], ids)
            recent_prices = [items[s].attributes.get("price") for s in st[n].recent]
            feats = rank_features(
                [float(scores[n][s]) for s in top], [items[s] for s in top],
                [stats.get(ids[s], ItemStats()) for s in top], prof, recent_prices, now,
            )  # fmt: skip
            out[user] = Scored([int(s) for s in top], feats)
    return out


def train_ranker(
    model: TwoTower, items: Sequence[Item], train_log: Sequence[Interaction], seed: int = 0
) -> tuple[Ranker, int]:
    """The ranker, fitted on the candidates of users at `RANKER_DAYS` before the train
    log's end, labelled by what they did in those days; and its row count."""
    end = max(e.timestamp for e in train_log)
    cut = end - RANKER_DAYS * 86_400
    before = [e for e in train_log if e.timestamp < cut]
    after = relevant([e for e in train_log if e.timestamp >= cut])
    _, states = examples(items, before)
    users = sorted(u for u in after if u in states)
    scored = candidates(model, items, users, states, item_stats(before), cut)
    ids = [item.id for item in items]
    x = np.concatenate([scored[u].features for u in users])
    y = np.concatenate(
        [np.array([1.0 if ids[s] in after[u] else 0.0 for s in scored[u].slots]) for u in users]
    ).astype(np.float32)
    return fit_logistic(x, y, seed), len(y)


def fit_logistic(x: F32, y: F32, seed: int = 0, steps: int = 400, l2: float = 1e-3) -> Ranker:
    """Logistic regression by full-batch gradient descent on standardised features
    (deterministic: no sampling)."""
    del seed  # full batch: nothing random
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale
    w = np.zeros(z.shape[1], np.float64)
    b = float(np.log(max(y.mean(), 1e-6) / max(1 - y.mean(), 1e-6)))
    lr = 0.5
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        grad = z.T @ (p - y) / len(y) + l2 * w
        w -= lr * grad
        b -= lr * float((p - y).mean())
    return Ranker(w.astype(np.float32), b, mean.astype(np.float32), scale.astype(np.float32))


def cooccurrence_top(
    train_log: Sequence[Interaction], users: Sequence[str], states: dict[str, UserState],
    ids: Sequence[str], k: int,
) -> dict[str, list[str]]:  # fmt: skip
    """Item-to-item co-occurrence: items other users engaged with beside the user's
    recent ones, by how many such users; the baseline every shop starts with."""
    engaged: dict[str, set[str]] = defaultdict(set)
    for e in train_log:
        if e.type in POSITIVE:
            engaged[e.user].add(e.item)
    with_item: dict[str, list[str]] = defaultdict(list)
    for user in sorted(engaged):
        for item in sorted(engaged[user]):
            with_item[item].append(user)
    popular = [
        i for i, _ in Counter(e.item for e in train_log if e.type in POSITIVE).most_common(k)
    ]
    out: dict[str, list[str]] = {}
    for user in users:
        scores: Counter[str] = Counter()
        for item in sorted({ids[s] for s in states[user].recent} | engaged.get(user, set())):
            for other in with_item.get(item, []):
                if other != user:
                    scores.update(sorted(engaged[other]))
        ranked = [i for i, _ in scores.most_common(k)]
        out[user] = (ranked + [p for p in popular if p not in ranked])[:k]
    return out


def evaluate_pipeline(
    model: Towers,
    ranker: Ranker,
    items: Sequence[Item],
    train_log: Sequence[Interaction],
    test_log: Sequence[Interaction],
    k: int = 10,
) -> dict[str, dict[str, float]]:
    """recall@k and NDCG@k over the test users of: the towers alone, towers + ranker,
    popularity, and co-occurrence."""
    truth = relevant(test_log)
    _, states = examples(items, train_log)
    users = sorted(u for u in truth if u in states)
    ids = [item.id for item in items]
    now = max(e.timestamp for e in train_log)
    scored = candidates(model, items, users, states, item_stats(train_log), now)
    popular = [
        i for i, _ in Counter(e.item for e in train_log if e.type in POSITIVE).most_common(k)
    ]
    cooc = cooccurrence_top(train_log, users, states, ids, k)
    rankings: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for user in users:
        s = scored[user]
        rankings["two-tower"][user] = [ids[x] for x in s.slots[:k]]
        order = np.argsort(-ranker.score(s.features), kind="stable")[:k]
        rankings["two-tower + ranker"][user] = [ids[s.slots[x]] for x in order]
        rankings["popularity"][user] = popular
        rankings["co-occurrence"][user] = cooc[user]
    out: dict[str, dict[str, float]] = {}
    for method, by_user in rankings.items():
        recall = sum(recall_at_k(by_user[u], truth[u], k) for u in users) / max(1, len(users))
        ndcg = sum(ndcg_at_k(by_user[u], truth[u], k) for u in users) / max(1, len(users))
        out[method] = {f"recall@{k}": round(recall, 4), f"ndcg@{k}": round(ndcg, 4)}
    out["users"] = {"test_users": float(len(users))}
    return out


__all__ = ["RANK_FEATURES", "evaluate_pipeline", "train_ranker"]

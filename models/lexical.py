"""The lexical half of hybrid search: BM25 over a catalog's text fields, kept current as
items are upserted and removed, filtered with the vector index's key mask.

Scoring is Lucene's BM25, the formula of bm25s's default method: for each query term
`idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))` with
`idf = ln(1 + (N - df + 0.5) / (df + 0.5))`. A field's weight multiplies its term counts
and its length: a title of weight 2 counts as if it were written twice.

Live updates. A bm25s index stores idf and length normalisation inside every document's
score, so each write (it moves N, df and avgdl) changes scores of documents it did not
touch: a delta scored with the base's statistics drifts until the next rebuild, and two
replicas that rebuilt at different moments rank one query differently. This index keeps
raw term counts and document lengths, updates N, df and the total length exactly on every
write, and applies the formula at query time to the postings of the query's terms (a few
numpy operations per term). Results therefore never depend on compaction: at every moment
they equal those of an index built from scratch from the live documents (the tests check
this, and check the scores against bm25s).

The postings live in two segments of one layout, sorted by term id: the base, built in
one vectorised pass, and the delta, the documents written since, rebuilt on each write
(it stays small). Replacing or removing a document marks its base slot dead. When the
delta passes `max_delta_docs` documents, or dead slots pass `max_dead_fraction` of the
base, a background thread merges everything into a new base from a snapshot (dropping
terms no live document uses), then, under the writer lock, replays the writes made
meanwhile and swaps it in.

Measured on a loaded 2-core development machine, 100k product texts (a 10-word title at
weight 2, a brand, a 30-word description; 200k distinct terms): loading them takes 7.2 s,
3.6 s of it tokenizing (done once, when an item is written); merging them into a new base
1.1 s, where bm25s needs 5.1 s to index the same tokens (and would need it again after
every few writes to stay exact); a write of 1 item beside a 1.9k-document delta 5 ms, of
100 items 14 ms; a query of 1 to 4 terms 2.5 to 4.5 ms (bm25s, its scores precomputed:
1.1 to 1.9 ms), 0.07 ms over 1k items. A time-based rebuild would buy nothing, since
scores are exact either way; the size thresholds bound what a write and a search cost.

Thread safety: one writer at a time (`upsert`, `remove` and a compaction's snapshot and
swap hold `_lock`); searches take no lock. Each write publishes an immutable `_State`
(segments, base liveness, df, N, total length) with one reference assignment, and a
search reads that reference once, so it sees every write before it whole and none of a
later one. A generation's vocabulary dict is shared with the writer, who only adds to it:
a term newer than a search's state has an id past that state's df and is skipped.
"""

from __future__ import annotations

import logging
import operator
import re
import secrets
import threading
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import InvalidInputError

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
Document = str | Mapping[str, str]  # one text, or text fields by name (title, brand, ...)

logger = logging.getLogger(__name__)

# Lucene's English stop set: words that carry no product meaning of their own.
STOPWORDS_EN = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the"
    " their then there these they this to was will with".split()
)
_MARKS = re.compile(r"[\u0300-\u036f]+")  # combining accents, once NFKD has split them off
_POSSESSIVE = re.compile(r"(?<=\w)['’]s\b")
# A run of letters and digits, possibly joined by - . / _ : "ab-1234", "usb-c", "2.5mm".
_COMPOUND = re.compile(r"[^\W_]+(?:[-./_][^\W_]+)*")
_PART = re.compile(r"[^\W\d_]+|\d+")  # letters or digits, never both
_MAX_KEY = 2**63
_local = threading.local()
# Analysis is per word, and catalogs reuse a small vocabulary: caching a word's terms makes
# analysis several times faster. Dict reads and writes are atomic, so threads share them.
# A compaction renumbers the terms, dropping those no document holds, once there are
# more of them than this and than live ones.
MAX_DEAD_TERMS = 50_000
_WORD_CACHE_SIZE = 100_000
# Only words up to this long are cached: a compound word may run to a text's whole length
# (32 KB), and 100,000 of those, each with its parts, would hold gigabytes. Real words and
# codes are far shorter.
_WORD_CACHE_MAX_CHARS = 64
_WORD_CACHES: dict[tuple[bool, bool], dict[str, tuple[str, ...]]] = {
    (stem, stop): {} for stem in (False, True) for stop in (False, True)
}


def tokenize(text: str, *, stem: bool = True, stopwords: bool = True) -> list[str]:
    """Index terms of `text`: accents and case folded, split into runs of letters and
    of digits, plus each compound joined up, so "AB-1234", "ab-1234" and "ab1234" all
    yield the rare term "ab1234" that ranks the exact SKU first. Words of letters only
    are stemmed (Snowball English); words with digits never are."""
    if not text.isascii():
        text = _MARKS.sub("", unicodedata.normalize("NFKD", text))
    folded = _POSSESSIVE.sub("", text.casefold())
    cache = _WORD_CACHES[stem, stopwords]
    tokens: list[str] = []
    for word in _COMPOUND.findall(folded):
        terms = cache.get(word)
        if terms is None:
            terms = _terms_of(word, stem, stopwords)
            if len(word) <= _WORD_CACHE_MAX_CHARS:
                if len(cache) >= _WORD_CACHE_SIZE:
                    cache.clear()  # crude, but the words that matter come straight back
                cache[word] = terms
        tokens.extend(terms)
    return tokens


def _terms_of(word: str, stem: bool, stopwords: bool) -> tuple[str, ...]:
    """The terms of one compound word (uncached)."""
    parts = _PART.findall(word)
    terms = [p for p in parts if not (stopwords and p in STOPWORDS_EN)]
    if len(parts) > 1:
        terms.append("".join(parts))
    if stem:
        stemmer: Any = getattr(_local, "stemmer", None)
        if stemmer is None:
            import Stemmer  # PyStemmer; its stemmers are not thread-safe, so one per thread

            stemmer = _local.stemmer = Stemmer.Stemmer("english")
        terms = [stemmer.stemWord(t) if t.isalpha() else t for t in terms]
    return tuple(terms)


@dataclass(frozen=True)
class CorpusStats:
    """What BM25 needs from the corpus for one query: documents, their total length and
    each query term's document frequency. Shards of one catalog add theirs up and
    score with the sum, so their scores equal those of one index over every item."""

    n_docs: int
    total_length: float
    df: dict[str, int]

    def __add__(self, other: CorpusStats) -> CorpusStats:
        df = dict(self.df)
        for term, n in other.df.items():
            df[term] = df.get(term, 0) + n
        return CorpusStats(self.n_docs + other.n_docs, self.total_length + other.total_length, df)


class StaleStats(Exception):
    """The corpus statistics a shard was asked to score with were not summed from its
    current state (a write since, or a query term they leave out): `generation` and
    `stats` are this index's, read together, to sum anew."""

    def __init__(self, generation: int, stats: CorpusStats) -> None:
        super().__init__("stale corpus statistics")
        self.generation = generation
        self.stats = stats


@dataclass(frozen=True, slots=True)
class _Doc:
    """One document's distinct term ids, their weighted counts, its weighted length."""

    terms: I32
    tfs: F32
    length: float


@dataclass(frozen=True, slots=True)
class _Segment:
    """Documents by slot, and their postings sorted by term id."""

    keys: I64  # per slot
    lengths: F64  # per slot
    terms: I32  # per posting
    slots: I32  # per posting
    tfs: F32  # per posting


@dataclass(frozen=True, slots=True)
class _State:
    """What one search reads: never changed once published."""

    vocab: Mapping[str, int]
    df: I64
    n_docs: int
    total_length: float
    base: _Segment
    base_live: Mask
    delta: _Segment
    generation: int  # changes with every published write or compaction


@dataclass(frozen=True, slots=True)
class _Merged:
    """A new base built from a snapshot of every live document, with its own vocabulary."""

    terms: list[str]
    docs: dict[int, _Doc]
    base: _Segment
    df: I64
    total_length: float


def _concat(arrays: list[Any], dtype: type[Any]) -> Any:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)


def _segment(keys: I64, lengths: F64, counts: I64, terms: I32, tfs: F32) -> _Segment:
    slots = np.repeat(np.arange(len(keys), dtype=np.int32), counts)
    order = np.argsort(terms, kind="stable")
    return _Segment(keys, lengths, terms[order], slots[order], tfs[order])


def _segment_of(docs: Mapping[int, _Doc]) -> _Segment:
    values = list(docs.values())
    return _segment(
        np.fromiter(docs, np.int64, len(values)),
        np.fromiter((d.length for d in values), np.float64, len(values)),
        np.fromiter((len(d.terms) for d in values), np.int64, len(values)),
        _concat([d.terms for d in values], np.int32),
        _concat([d.tfs for d in values], np.float32),
    )


def _merge(docs: dict[int, _Doc], terms: list[str]) -> _Merged:
    """Build a base from `docs` (term ids of `terms`), renumbering the terms in use."""
    values = list(docs.values())
    counts = np.fromiter((len(d.terms) for d in values), np.int64, len(values))
    old: I32 = _concat([d.terms for d in values], np.int32)
    old_df = np.bincount(old, minlength=len(terms))
    used = np.flatnonzero(old_df)
    remap = np.zeros(len(terms), np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)  # increasing: order is kept
    new = remap[old]
    lengths = np.fromiter((d.length for d in values), np.float64, len(values))
    split = np.split(new, np.cumsum(counts)[:-1]) if values else []
    return _Merged(
        terms=[terms[i] for i in used.tolist()],
        docs={
            key: _Doc(ids, doc.tfs, doc.length)
            for key, ids, doc in zip(docs, split, values, strict=True)
        },
        base=_segment(
            np.fromiter(docs, np.int64, len(values)),
            lengths,
            counts,
            new,
            _concat([d.tfs for d in values], np.float32),
        ),
        df=old_df[used].astype(np.int64),
        total_length=float(lengths.sum()),
    )


def _score(
    seg: _Segment, live: Mask | None, q: I32, idf: F64, avgdl: float, k1: float, b: float
) -> tuple[I64, F64]:
    """Keys and BM25 scores of the live documents of `seg` matching any term of `q`."""
    starts = np.searchsorted(seg.terms, q, side="left").tolist()
    stops = np.searchsorted(seg.terms, q, side="right").tolist()
    scores = np.zeros(len(seg.keys))
    for start, stop, weight in zip(starts, stops, idf.tolist(), strict=True):
        if start < stop:  # a term's documents are distinct, so `+=` by index is safe
            slots = seg.slots[start:stop]
            tf = seg.tfs[start:stop].astype(np.float64)
            part = seg.lengths[slots]  # then, in place: weight * tf / (tf + k1 * (...))
            part *= k1 * b / avgdl
            part += k1 * (1.0 - b)
            part += tf
            np.divide(tf, part, out=part)
            part *= weight
            scores[slots] += part
    hit = np.flatnonzero(scores)
    if live is not None:
        hit = hit[live[hit]]
    return seg.keys[hit], scores[hit]


def _allowed(keys: I64, allowed: Mask) -> Mask:
    """Per key: inside the mask and set there (keys past its end are not allowed)."""
    inside = keys < len(allowed)
    ok = np.zeros(len(keys), np.bool_)
    ok[inside] = allowed[keys[inside]]
    return ok


def _top(keys: I64, scores: F64, k: int) -> list[tuple[int, float]]:
    """The `k` best, ties broken by the smaller key, so results are deterministic."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth
        keys, scores = keys[keep], scores[keep]
    order = np.lexsort((keys, -scores))[:k]
    return list(zip(keys[order].tolist(), scores[order].tolist(), strict=True))


def _checked_keys(keys: Sequence[int]) -> list[int]:
    try:
        out = [operator.index(key) for key in keys]
    except TypeError as e:
        raise InvalidInputError("keys must be integers in [0, 2**63)") from e
    if any(not 0 <= key < _MAX_KEY for key in out):
        raise InvalidInputError("keys must be integers in [0, 2**63)")
    return out


_EMPTY = _segment_of({})


class LexicalIndex:
    """BM25 over the live documents of one catalog; see the module docstring."""

    def __init__(
        self,
        field_weights: Mapping[str, float] | None = None,
        *,
        k1: float = 1.2,
        b: float = 0.75,
        stem: bool = True,
        stopwords: bool = True,
        max_delta_docs: int = 2_000,
        max_dead_fraction: float = 0.25,
        background: bool = True,
    ) -> None:
        """`field_weights`: weight of each text field (others and plain strings count 1,
        0 leaves a field out). `background`: compact in a thread; False compacts inside
        the write that crosses a threshold."""
        weights = dict(field_weights or {})
        if any(not 0 <= w < float("inf") for w in weights.values()):
            raise ValueError(f"field weights must be finite and >= 0, got {weights}")
        if k1 < 0 or not 0 <= b <= 1 or max_delta_docs < 1 or not 0 < max_dead_fraction <= 1:
            raise ValueError("need k1 >= 0, 0 <= b <= 1, max_delta_docs >= 1, 0 < fraction <= 1")
        self._weights, self._k1, self._b = weights, k1, b
        self._stem, self._stopwords, self._background = stem, stopwords, background
        self._max_delta, self._max_dead = max_delta_docs, max_dead_fraction
        self._lock = threading.Lock()  # the writer's
        self._compaction = threading.Lock()  # one compaction at a time
        self._compacting = False  # a background compaction is scheduled or running
        # The writer's tables, guarded by `_lock`; `_install` replaces them at a compaction.
        self._terms: list[str] = []  # by term id
        self._vocab: dict[str, int] = {}
        self._df: I64 = np.zeros(0, np.int64)  # by term id, with room to grow
        self._live_terms = 0  # terms some live document holds (df > 0)
        self._docs: dict[int, _Doc] = {}  # every live document
        self._n_docs = 0
        self._total_length = 0.0
        self._base = _EMPTY
        self._base_slot: dict[int, int] = {}  # keys whose current document is in the base
        self._live: Mask = np.zeros(0, np.bool_)  # per base slot
        self._delta: dict[int, _Doc] = {}  # keys whose current document is in the delta
        self._delta_segment, self._delta_dirty = _EMPTY, False
        self._changed: set[int] = set()  # keys written since the last compaction's snapshot
        # Each published state's generation: a random start, so no other index (another
        # catalog's, this catalog's on a restarted replica) is likely to reuse one.
        self._generation = secrets.randbits(62)
        self._state: _State
        self._publish()

    def __len__(self) -> int:
        """Live documents."""
        return self._state.n_docs

    def upsert(self, keys: Sequence[int], docs: Sequence[Document]) -> None:
        """Insert or replace the document of each key (the last one wins for a key given
        twice); a search that starts after this returns finds only the new text."""
        checked = _checked_keys(keys)
        if len(checked) != len(docs):
            raise InvalidInputError(f"{len(checked)} keys for {len(docs)} documents")
        analysed = [self._analyse(doc) for doc in docs]  # the slow part, outside the lock
        with self._lock:
            for key, (counts, length) in zip(checked, analysed, strict=True):
                self._drop(key)
                self._put(key, self._intern(counts, length))
            self._publish()
        self._maybe_compact()

    def remove(self, keys: Sequence[int]) -> int:
        """Remove these keys' documents (unknown keys are skipped); how many there were.
        No search that starts after this returns sees them."""
        checked = _checked_keys(keys)
        with self._lock:
            removed = sum(self._drop(key) for key in checked)
            if removed:
                self._publish()
        self._maybe_compact()
        return removed

    def stats(self, query: str) -> CorpusStats:
        """This index's part of the corpus statistics a search for `query` reads."""
        return self.stats_at(query)[1]

    def stats_at(self, query: str) -> tuple[int, CorpusStats]:
        """`stats`, with the generation of the state they were read from: a search
        given that generation (`search(..., generation=)`) scores only if this index
        is still at it."""
        state = self._state
        return state.generation, self._stats(state, query)

    def _stats(self, state: _State, query: str) -> CorpusStats:
        found = self._query_terms(state, query)
        df = {term: int(state.df[tid]) for term, tid in found.items()}
        return CorpusStats(state.n_docs, state.total_length, df)

    def _query_terms(self, state: _State, query: str) -> dict[str, int]:
        """The query's terms that some document here has, with their ids."""
        found = {}
        for term in tokenize(query, stem=self._stem, stopwords=self._stopwords):
            tid = state.vocab.get(term)
            if tid is not None and tid < len(state.df) and state.df[tid] > 0:
                found[term] = tid
        return found

    def search(
        self,
        query: str,
        k: int,
        allowed: Mask | None = None,
        stats: CorpusStats | None = None,
        generation: int | None = None,
    ) -> list[tuple[int, float]]:
        """The `k` best (key, BM25 score) for `query`, best first, ties by smaller key.
        `allowed`: a boolean mask indexed by key (keys at or past its end are not
        allowed); every allowed matching document competes, so `k` come back whenever
        `k` allowed documents match. `stats`: the corpus statistics to score with when
        this index is one shard of a corpus (the sum of every shard's `stats`).
        `generation`: the generation this index's part of `stats` was read at
        (`stats_at`); when the index has moved on since, or `stats` leave out a term
        of the query it holds, nothing is scored: `StaleStats` carries its own anew."""
        if k < 0:
            raise InvalidInputError("k must be >= 0")
        if allowed is not None and (allowed.dtype != np.bool_ or allowed.ndim != 1):
            raise InvalidInputError("allowed must be a one-dimensional boolean mask")
        state = self._state  # read once: everything below sees one published write
        found = self._query_terms(state, query)
        if generation is not None and (
            generation != state.generation
            or stats is None
            or any(term not in stats.df for term in found)
        ):
            raise StaleStats(state.generation, self._stats(state, query))
        if k == 0 or not found:
            return []
        # Terms in text order, not id order: a document's score then sums its terms in
        # the same order in any index (ids differ between shards), to the last bit.
        terms = sorted(found)
        q = np.array([found[t] for t in terms], np.int32)
        if stats is None:
            df = state.df[q].astype(np.float64)
            n_docs, avgdl = state.n_docs, state.total_length / state.n_docs
        else:  # the whole corpus's, of which this index holds a shard
            df = np.array([stats.df.get(t, 0) for t in terms], np.float64)
            n_docs, avgdl = stats.n_docs, stats.total_length / max(1, stats.n_docs)
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
        base = _score(state.base, state.base_live, q, idf, avgdl, self._k1, self._b)
        delta = _score(state.delta, None, q, idf, avgdl, self._k1, self._b)
        keys, scores = np.concatenate([base[0], delta[0]]), np.concatenate([base[1], delta[1]])
        if allowed is not None:
            ok = _allowed(keys, allowed)
            keys, scores = keys[ok], scores[ok]
        return _top(keys, scores, k)

    def compact(self) -> None:
        """Merge the delta and drop dead slots now; returns when the new base serves.
        Searches go on meanwhile; writes wait only for the snapshot and the swap."""
        with self._compaction:
            with self._lock:
                docs, terms = dict(self._docs), list(self._terms)
                self._changed = set()
            merged = _merge(docs, terms)  # the slow part, outside the writer lock
            with self._lock:
                self._install(merged, self._changed, self._docs, self._terms)

    def _analyse(self, doc: Document) -> tuple[dict[str, float], float]:
        """Weighted term counts and length of a document (no lock: no shared state)."""
        fields = {"": doc} if isinstance(doc, str) else doc
        counts: dict[str, float] = {}
        length = 0.0
        for name, text in fields.items():
            if not isinstance(text, str):
                raise InvalidInputError(f"text field {name!r} is not a string")
            weight = self._weights.get(name, 1.0)
            if weight > 0:
                tokens = tokenize(text, stem=self._stem, stopwords=self._stopwords)
                length += weight * len(tokens)
                for term, n in Counter(tokens).items():
                    counts[term] = counts.get(term, 0.0) + weight * n
        return counts, length

    # The writer's side: the methods from here to `_needs_compaction` run with `_lock` held.

    def _intern(self, counts: Mapping[str, float], length: float) -> _Doc:
        known = [self._vocab.get(t) for t in counts]
        ids = np.array(known if None not in known else [self._term_id(t) for t in counts], np.int32)
        tfs = np.fromiter(counts.values(), np.float32, len(counts))
        order = np.argsort(ids)
        return _Doc(ids[order], tfs[order], length)

    def _term_id(self, term: str) -> int:
        tid = self._vocab.get(term)
        if tid is None:
            tid = len(self._terms)
            self._terms.append(term)
            self._vocab[term] = tid
            if tid >= len(self._df):
                self._df = np.concatenate([self._df, np.zeros(max(1024, tid), np.int64)])
        return tid

    def _put(self, key: int, doc: _Doc) -> None:
        self._docs[key] = self._delta[key] = doc
        self._df[doc.terms] += 1
        self._live_terms += int(np.count_nonzero(self._df[doc.terms] == 1))
        self._n_docs += 1
        self._total_length += doc.length
        self._changed.add(key)
        self._delta_dirty = True

    def _drop(self, key: int) -> bool:
        doc = self._docs.pop(key, None)
        if doc is None:
            return False
        self._df[doc.terms] -= 1
        self._live_terms -= int(np.count_nonzero(self._df[doc.terms] == 0))
        self._n_docs -= 1
        self._total_length -= doc.length
        self._changed.add(key)
        slot = self._base_slot.pop(key, None)
        if slot is None:
            del self._delta[key]
            self._delta_dirty = True
        else:
            self._live[slot] = False
        return True

    def _publish(self) -> None:
        self._generation += 1
        if self._delta_dirty:
            self._delta_segment = _segment_of(self._delta)
            self._delta_dirty = False
        self._state = _State(
            vocab=self._vocab,
            df=self._df[: len(self._terms)].copy(),
            n_docs=self._n_docs,
            total_length=self._total_length if self._n_docs else 0.0,
            base=self._base,
            base_live=self._live.copy(),
            delta=self._delta_segment,
            generation=self._generation,
        )

    def _install(
        self, merged: _Merged, changed: set[int], current: dict[int, _Doc], old_terms: list[str]
    ) -> None:
        """Serve `merged`, then replay the `changed` keys' `current` documents (term ids
        of `old_terms`) written since its snapshot."""
        self._terms = merged.terms
        self._vocab = {term: i for i, term in enumerate(merged.terms)}
        self._df = merged.df.copy()
        self._live_terms = len(merged.terms)
        self._docs = dict(merged.docs)
        self._n_docs, self._total_length = len(merged.docs), merged.total_length
        self._base = merged.base
        self._base_slot = {key: slot for slot, key in enumerate(merged.docs)}
        self._live = np.ones(len(merged.docs), np.bool_)
        self._delta = {}
        self._delta_segment, self._delta_dirty = _EMPTY, False
        self._changed = set()
        for key in changed:
            self._drop(key)
            doc = current.get(key)
            if doc is not None:
                counts = dict(zip((old_terms[t] for t in doc.terms), doc.tfs.tolist(), strict=True))
                self._put(key, self._intern(counts, doc.length))
        self._changed = set()
        self._publish()

    def _needs_compaction(self) -> bool:
        dead = len(self._live) - len(self._base_slot)
        # Terms no document holds any more stay numbered until a compaction: a small
        # catalog whose items are rewritten with new words again and again (never a
        # large delta, never many dead documents) would keep every word ever written.
        dead_terms = len(self._terms) - self._live_terms
        return (
            len(self._delta) > self._max_delta
            or dead > self._max_dead * len(self._live)
            or dead_terms > max(MAX_DEAD_TERMS, self._live_terms)
        )

    def _maybe_compact(self) -> None:
        with self._lock:
            if self._compacting or not self._needs_compaction():
                return
            self._compacting = True
        if self._background:
            threading.Thread(
                target=self._compact_loop, name="lexical-compaction", daemon=True
            ).start()
        else:
            self._compact_loop()

    def _compact_loop(self) -> None:
        """Compact until no threshold is crossed (writes go on during a compaction)."""
        try:
            while True:
                self.compact()
                with self._lock:
                    if not self._needs_compaction():
                        self._compacting = False
                        return
        except Exception:
            with self._lock:
                self._compacting = False
            if not self._background:
                raise
            # the delta keeps serving exact results; the next write tries again
            logger.exception("lexical index compaction failed")

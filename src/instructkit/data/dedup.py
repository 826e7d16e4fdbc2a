"""Exact and near-duplicate records, and evaluation records that leak from the training split.

Duplicated records weigh some examples twice, and a test record that nearly copies a
training record turns a score into a memory test. Two records are compared field by
field over the chosen text fields (instruction, input, output by default), each field
normalised first (Unicode NFKC, case folded, punctuation removed, whitespace collapsed):

- exact duplicates: every normalised field is equal;
- near duplicates: every field is equal or within a small edit of the other, i.e. its
  normalised Levenshtein similarity is at least `threshold`, and both hold the same
  numbers (so "45 km" and "46 km" stay apart, a changed number changes the answer).

Comparing per field keeps records that share an instruction but differ in input or
output apart however long the shared instruction is. `instructkit.data.leakage` applies
the same rule across splits. Finding candidates is MinHash LSH
over the words of each field (`datasketch`); each candidate is verified with the exact
similarity (`rapidfuzz`), so a report never holds a pair that fails the rule above.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, count, repeat

import numpy as np
from rapidfuzz.distance import Levenshtein

from instructkit.errors import UserError

DEFAULT_FIELDS = ("instruction", "input", "output")
DEFAULT_THRESHOLD = 0.9
NUM_PERM = 64
LSH_THRESHOLD = 0.5  # loose: LSH only proposes candidates, the exact check decides
# Digits, and arithmetic signs before a digit: "5 - 3" and "5 * 3" differ although
# normalising removes "-" and "*" as punctuation.
_NUMBERS = re.compile(r"\d+|[-+*/×÷^=<>%](?=\s*\d)")
_DIGIT = re.compile(r"\d").search
_ASCII_PUNCTUATION = bytes(c for c in range(128) if unicodedata.category(chr(c)).startswith("P"))
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_CHUNK = 1 << 20  # permuted hash values per block: keeps the (tokens, NUM_PERM) block small
_WORD_BITS = 28  # a token packs two word ids and the field position into 64 bits
SHORT_WORDS = 24  # records up to this many words also get the word-left-out lookup


def normalize_text(text: str) -> str:
    """Case, spacing and punctuation removed: "Hello,  World!" -> "hello world"."""
    if text.isascii():  # the fast path: bytes.translate deletes in C
        text = text.encode().translate(None, _ASCII_PUNCTUATION).decode().lower()
    else:
        text = _unicode_punctuation().sub("", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.split())


@functools.cache
def _unicode_punctuation() -> re.Pattern:
    marks = (chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "P")
    return re.compile("[" + re.escape("".join(marks)) + "]")


def token_hash(token: int) -> int:
    """The 32-bit hash of a token id (Fibonacci hashing); `_signatures` computes it vectorised."""
    return ((token * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 32


@dataclass(frozen=True)
class Match:
    """Record `index` duplicates record `of` (`kind` "exact" or "near", lowest field similarity)."""

    index: int
    of: int
    kind: str
    similarity: float


@dataclass
class _Prepared:
    """One record as the index compares it: normalised fields, their numbers, its probes."""

    texts: tuple[str, ...]
    numbers: tuple[tuple[str, ...], ...]
    tokens: np.ndarray | None = None  # word pairs, see `prepare`
    bands: list[int] = field(default_factory=list)  # a key per LSH band
    variants: list[int | str] = field(default_factory=list)  # words left out, spaces removed

    @property
    def key(self) -> tuple:
        """Equal for exact duplicates."""
        return self.texts, self.numbers


class DuplicateIndex:
    """Records added under a key; `find` returns the indexed record a new one duplicates.

    Candidates come from two kinds of lookup tables. MinHash LSH (one table per band)
    finds records that share most word pairs, whatever the edits. Short records have too
    few word pairs for that (a typo in a 4-word instruction changes 2 of 4), so records
    of SHORT_WORDS words or fewer are also filed under their bag of words with each word
    left out in turn: two records one word apart (a typo, a changed or an extra word)
    share one of those keys; and every record under its text without spaces. Records
    two or more words apart are found by LSH only, which can miss short ones (the
    benchmark measures how often). Not thread-safe: share one across threads under a lock.
    """

    def __init__(
        self, fields: Sequence[str] = DEFAULT_FIELDS, threshold: float = DEFAULT_THRESHOLD
    ):
        from datasketch import MinHash

        check_threshold(threshold)
        if not fields:
            raise UserError("--fields: name at least one field to compare")
        self.fields = tuple(fields)
        self.threshold = threshold
        self._words: defaultdict[str, int] = defaultdict(count(1).__next__)
        self._exact: dict[tuple, Hashable] = {}
        self._prepared: dict[Hashable, _Prepared] = {}
        # datasketch's permutations: a signature row equals MinHash(hashfunc=token_hash)
        # updated with the record's token ids (tests check it); its LSH picks the bands.
        self._a, self._b = MinHash(num_perm=NUM_PERM, hashfunc=token_hash).permutations
        self.bands, self.rows = _band_shape()
        # Band i's table holds probe i; the last table holds every word-left-out key.
        self._tables: list[dict[int | str, Hashable | list[Hashable]]] = [
            {} for _ in range(self.bands + 1)
        ]

    def __len__(self) -> int:
        return len(self._prepared)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._prepared

    def prepare(self, records: Sequence[dict]) -> list[_Prepared]:
        """Normalise records and compute their lookup keys in one vectorised pass.

        A record's MinHash tokens are the pairs of neighbouring words in each field ("the
        cat", "cat sat", the field's first word paired with nothing), so a shared
        instruction or common words make up only part of a record's tokens.
        """
        word_id = self._words.__getitem__
        prepared, ids, lengths = [], [], []
        for record in records:
            raw = [record[name] for name in self.fields]
            texts = tuple(normalize_text(text) for text in raw)
            numbers = tuple(tuple(_NUMBERS.findall(text)) if _DIGIT(text) else () for text in raw)
            prepared.append(_Prepared(texts, numbers))
            for text in texts:
                words = list(map(word_id, text.split()))
                ids.extend(words)
                lengths.append(len(words))
        ids_array, lengths_array = np.array(ids, dtype=np.uint64), np.array(lengths, np.int64)
        self._tokenize(prepared, ids_array, lengths_array)
        bands = _band_keys(self._signatures(prepared), self.bands, self.rows).tolist()
        variants = self._variants(ids_array, lengths_array)
        for item, band_keys, variant_keys in zip(prepared, bands, variants, strict=True):
            # The text without spaces finds words split or joined ("every day", "everyday").
            variant_keys.append("\x1f".join(text.replace(" ", "") for text in item.texts))
            item.bands, item.variants = band_keys, variant_keys
        return prepared

    def _tokenize(self, prepared: list[_Prepared], ids: np.ndarray, lengths: np.ndarray) -> None:
        """Each record's word-pair tokens from the flat word ids and per-field word counts."""
        width = len(self.fields)
        starts = np.cumsum(lengths) - lengths
        previous = np.zeros_like(ids)
        previous[1:] = ids[:-1]
        previous[starts[lengths > 0]] = 0  # a field's first word follows nothing
        tokens = ((previous << np.uint64(_WORD_BITS)) | ids) * np.uint64(width) + self._positions(
            lengths
        )
        per_record = lengths.reshape(-1, width).sum(axis=1)
        offset = 0
        for item, size in zip(prepared, per_record.tolist(), strict=True):
            # A record without words still needs one token for a MinHash.
            item.tokens = tokens[offset : offset + size] if size else _EMPTY
            offset += size

    def _positions(self, lengths: np.ndarray) -> np.ndarray:
        """The field position (0, 1, 2, ...) of every word in the flat word ids."""
        width = len(self.fields)
        return np.repeat(np.tile(np.arange(width, dtype=np.uint64), len(lengths) // width), lengths)

    def _variants(self, ids: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
        """Per record of 3 to SHORT_WORDS words: its bag-of-words hash with each word left out.

        The bag hash is a sum of word hashes (a word tagged with its field), so leaving a
        word out is a subtraction; word order is ignored, the exact check sees it.
        """
        hashes = _mix64(ids * np.uint64(len(self.fields)) + self._positions(lengths))
        per_record = lengths.reshape(-1, len(self.fields)).sum(axis=1)
        ends = np.cumsum(per_record)
        sums = np.concatenate(([np.uint64(0)], np.cumsum(hashes, dtype=np.uint64)))
        bags = sums[ends] - sums[ends - per_record]
        short = (per_record >= 3) & (per_record <= SHORT_WORDS)
        owner = np.repeat(np.arange(len(per_record)), per_record)
        left_out = bags[owner] - hashes
        variants: list[list[int]] = [[] for _ in range(len(per_record))]
        for record in np.flatnonzero(short).tolist():
            start = int(ends[record] - per_record[record])
            variants[record] = left_out[start : int(ends[record])].tolist()
        return variants

    def find(self, record: dict | _Prepared) -> tuple[Hashable, str, float] | None:
        """(key, kind, similarity) of the closest indexed duplicate, or None."""
        prepared = record if isinstance(record, _Prepared) else self.prepare([record])[0]
        key = self._exact.get(prepared.key)
        if key is not None:
            return key, "exact", 1.0
        candidates: set[Hashable] = set()
        for table, probe in self._probes(prepared):
            members = table.get(probe)
            if type(members) is list:
                candidates.update(members)
            elif members is not None:
                candidates.add(members)
        best = None
        for candidate in candidates:
            similarity = self._similarity(prepared, self._prepared[candidate])
            rank = (similarity, -_order(candidate))
            if similarity and (best is None or rank > best[0]):
                best = (rank, candidate)
        return None if best is None else (best[1], "near", best[0][0])

    def add(self, key: Hashable, record: dict | _Prepared) -> None:
        prepared = record if isinstance(record, _Prepared) else self.prepare([record])[0]
        if key in self._prepared:
            raise ValueError(f"key {key!r} is already indexed")
        self._prepared[key] = prepared
        self._exact.setdefault(prepared.key, key)
        for table, probe in self._probes(prepared):
            # Most keys hold one record: a list only once a second one arrives.
            members = table.setdefault(probe, key)
            if type(members) is list:
                if members[-1] != key:
                    members.append(key)
            elif members != key:
                table[probe] = [members, key]

    def _probes(self, prepared: _Prepared) -> Iterable[tuple[dict, int]]:
        """(table, key) pairs: band i in table i, every left-out-word key in the last table."""
        return chain(
            zip(self._tables, prepared.bands), zip(repeat(self._tables[-1]), prepared.variants)
        )

    def remove(self, key: Hashable) -> None:
        prepared = self._prepared.pop(key)
        if self._exact.get(prepared.key) == key:
            del self._exact[prepared.key]
        for table, probe in self._probes(prepared):
            members = table.get(probe)
            if type(members) is list:
                if key in members:
                    members.remove(key)
            elif members == key:
                del table[probe]

    def _signatures(self, prepared: list[_Prepared]) -> np.ndarray:
        """(records, NUM_PERM) MinHash signatures: datasketch's affine32 scheme, vectorised."""
        if not prepared:
            return np.empty((0, NUM_PERM), dtype=np.uint32)
        counts = np.array([len(item.tokens) for item in prepared], dtype=np.int64)
        tokens = np.concatenate([item.tokens for item in prepared])
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        hashes = _fmix32(((tokens * _GOLDEN) >> np.uint64(32)).astype(np.uint32))
        out = np.empty((len(prepared), NUM_PERM), dtype=np.uint32)
        first = 0
        while first < len(prepared):
            # Records [first, last) whose tokens fill about one block.
            last = int(np.searchsorted(starts, starts[first] + _CHUNK // NUM_PERM, "right"))
            last = min(max(last, first + 1), len(prepared))
            begin = starts[first]
            end = starts[last] if last < len(prepared) else len(tokens)
            permuted = hashes[begin:end, None] * self._a[None, :] + self._b[None, :]
            out[first:last] = np.minimum.reduceat(permuted, starts[first:last] - begin, axis=0)
            first = last
        return out

    def _similarity(self, a: _Prepared, b: _Prepared) -> float:
        """The lowest per-field similarity when every field passes, else 0."""
        if a.numbers != b.numbers:
            return 0.0
        lowest = 1.0
        for x, y in zip(a.texts, b.texts, strict=True):
            if x != y:
                score = Levenshtein.normalized_similarity(x, y, score_cutoff=self.threshold)
                if not score:
                    return 0.0
                lowest = min(lowest, score)
        return lowest


@functools.cache
def _band_shape() -> tuple[int, int]:
    """(bands, rows per band) that datasketch's LSH chooses for LSH_THRESHOLD and NUM_PERM."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=LSH_THRESHOLD, num_perm=NUM_PERM)
    return lsh.b, lsh.r


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(records, bands) 64-bit keys: records whose rows agree on a band share its bucket."""
    keys = np.zeros((len(signatures), bands), dtype=np.uint64)
    for row in range(rows):
        keys = keys * _GOLDEN + signatures[:, row : bands * rows : rows].astype(np.uint64)
    return keys


_EMPTY = np.zeros(1, dtype=np.uint64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: well-spread 64-bit word hashes for the bag-of-words sums."""
    x = (x + np.uint64(1)) * _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch mixes input hashes (uint32 wraps)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _order(key: Hashable) -> int:
    """Prefer the earliest record among equally similar ones (keys are usually indices)."""
    return key if isinstance(key, int) else 0


def check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise UserError(
            f"--threshold must be above 0 and at most 1, got {threshold} "
            "(1 finds exact duplicates only; 0.9 also finds small edits)"
        )


def check_fields(records: Sequence[dict], fields: Sequence[str], source: str = "") -> None:
    """Every record must hold each compared field as a string."""
    where = f"{source}: " if source else ""
    problems = []
    for index, record in enumerate(records):
        for name in fields:
            if not isinstance(record.get(name), str):
                problems.append(f"{where}record index {index} has no text field {name!r}")
    if problems:
        raise UserError(problems)


@dataclass
class DuplicateReport:
    """Which records to keep (the first of each group) and what each removed one duplicates."""

    total: int
    fields: tuple[str, ...]
    threshold: float
    matches: list[Match] = field(default_factory=list)

    @property
    def removed(self) -> set[int]:
        return {match.index for match in self.matches}

    @property
    def kept(self) -> list[int]:
        removed = self.removed
        return [index for index in range(self.total) if index not in removed]

    @property
    def groups(self) -> dict[int, list[Match]]:
        """Kept record -> the records removed as its duplicates, in file order."""
        groups: dict[int, list[Match]] = {}
        for match in self.matches:
            groups.setdefault(match.of, []).append(match)
        return groups

    def count(self, kind: str) -> int:
        return sum(match.kind == kind for match in self.matches)


def find_duplicates(
    records: Sequence[dict],
    fields: Sequence[str] = DEFAULT_FIELDS,
    threshold: float = DEFAULT_THRESHOLD,
) -> DuplicateReport:
    """Each record that duplicates an earlier kept record, matched to that record.

    Only kept records are indexed, so every removed record is within the threshold of
    the record that stays in its place, and no two kept records are duplicates.
    """
    check_fields(records, fields)
    index = DuplicateIndex(fields, threshold)
    report = DuplicateReport(len(records), tuple(fields), threshold)
    for position, prepared in enumerate(index.prepare(records)):
        found = index.find(prepared)
        if found is None:
            index.add(position, prepared)
        else:
            of, kind, similarity = found
            report.matches.append(Match(position, of, kind, similarity))
    return report


def shown(record: dict, fields: Iterable[str], width: int = 70) -> str:
    text = " | ".join(record[name] for name in fields if record[name])
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def format_duplicates(report: DuplicateReport, records: Sequence[dict], examples: int = 3) -> str:
    """Counts, then a few groups: the kept record and the ones removed beside it."""
    groups = report.groups
    head = (
        f"{len(report.matches)} duplicates in {len(groups)} groups over "
        f"{', '.join(report.fields)} ({report.count('exact')} exact, {report.count('near')} near, "
        f"similarity >= {report.threshold:g})"
    )
    lines = [head]
    for kept, matches in list(groups.items())[:examples]:
        lines.append(f"  kept    #{kept}: {shown(records[kept], report.fields)}")
        for match in matches[:examples]:
            lines.append(
                f"  removed #{match.index} ({match.kind}, {match.similarity:.2f}): "
                f"{shown(records[match.index], report.fields)}"
            )
        if len(matches) > examples:
            lines.append(f"  ... and {len(matches) - examples} more in this group")
    if len(groups) > examples:
        lines.append(f"  ... and {len(groups) - examples} more groups")
    return "\n".join(lines)

"""Benchmark: `find_duplicates` (what `instructkit data dedup` runs) on 100,000 records.

The records are synthetic instruction data, seeded: words drawn from a made-up
vocabulary with Zipf frequencies (a few words are everywhere, as "the" and "of" are),
a fifth of the records built on a few shared instructions ("template" records that
differ only in input and output). At known positions the generator plants copies of an
earlier record, one kind of edit each:

- exact, case, spacing, punctuation: equal after normalisation (exact duplicates);
- typo: one character deleted, inserted, replaced or two swapped in a field;
- word: one word of the longest field replaced;

and negative controls that must stay: a template record's sibling (same instruction,
other input and output) and a number changed in a copy ("5 apples" -> "6 apples").

It reports the time of `find_duplicates` (wall and CPU: the machine is shared), recall
per edit kind and precision over the planted copies, and, as the reference, the same
keep-first rule computed by brute force (every record against every kept record, no
LSH) over the first --reference records: the LSH's candidate recall against it.

    python bench/dedup.py                        # 100,000 records, reference over 3,000
    python bench/dedup.py --records 20000 --reference 0
"""

from __future__ import annotations

import argparse
import random
import time

from instructkit.data.dedup import DEFAULT_FIELDS, DuplicateIndex, find_duplicates

EDITS = ("exact", "case", "spacing", "punctuation", "typo", "word")
CONTROLS = ("sibling", "number")
TEMPLATES = 40


class Corpus:
    """Seeded synthetic records with planted copies; `planted[i]` is the kind at index i."""

    def __init__(self, size: int, copy_rate: float, seed: int):
        self.rng = random.Random(seed)
        syllables = [a + b for a in "klmnrtsvdpbcfgh" for b in "aeiou"]
        self.vocab = sorted(
            {"".join(self.rng.choices(syllables, k=self.rng.randint(1, 4))) for _ in range(6000)}
        )
        self.weights = [1 / (rank + 1) for rank in range(len(self.vocab))]
        self.templates = [self.sentence(6, 12) for _ in range(TEMPLATES)]
        self.records: list[dict] = []
        self.planted: dict[int, str] = {}
        self.sources: dict[int, int] = {}  # planted copy -> the record it copies
        while len(self.records) < size:
            if len(self.records) > 100 and self.rng.random() < copy_rate:
                kind = self.rng.choice(EDITS + CONTROLS)
                record, source = self.plant(kind)
                self.planted[len(self.records)] = kind
                self.sources[len(self.records)] = source
                self.records.append(record)
            else:
                self.records.append(self.fresh())

    def sentence(self, low: int, high: int) -> str:
        words = self.rng.choices(self.vocab, self.weights, k=self.rng.randint(low, high))
        return " ".join(words).capitalize() + self.rng.choice(".?!")

    def fresh(self, instruction: str | None = None) -> dict:
        if instruction is None and self.rng.random() < 0.2:
            instruction = self.rng.choice(self.templates)
        return {
            "instruction": instruction or self.sentence(5, 14),
            "input": self.sentence(3, 12) if instruction or self.rng.random() < 0.4 else "",
            "output": self.sentence(4, 40),
            "id": len(self.records),
        }

    def plant(self, kind: str) -> tuple[dict, int]:
        """A planted record and the index of the record it copies."""
        origin = self.rng.randrange(len(self.records))
        source = dict(self.records[origin], id=len(self.records))
        name = self.rng.choice([n for n in DEFAULT_FIELDS if source[n]])
        text = source[name]
        if kind == "case":
            text = text.upper() if self.rng.random() < 0.5 else text.lower()
        elif kind == "spacing":
            text = "  " + text.replace(" ", "   ", 2) + " "
        elif kind == "punctuation":
            text = text.rstrip(".?!") + self.rng.choice(["", "!!", " ...", ";"])
            text = text.replace(" ", ", ", 1)
        elif kind == "typo":
            text = self.typo(text)
        elif kind == "word":
            name = max(DEFAULT_FIELDS, key=lambda n: len(source[n]))
            words = source[name].split()
            words[self.rng.randrange(len(words))] = self.rng.choice(self.vocab)
            text = " ".join(words)
        elif kind == "sibling":
            return self.fresh(instruction=source["instruction"]), origin
        elif kind == "number":
            number = self.rng.randint(2, 98)
            text = f"{text} {number} items"
            source[name] = text
            self.records.append(source)  # the original with the number, then the edited copy
            edited = f"{text[: -len(f'{number} items')]}{number + 1} items"
            return dict(source, **{name: edited}), len(self.records) - 1
        source[name] = text
        return source, origin

    def typo(self, text: str) -> str:
        i = self.rng.randrange(1, max(2, len(text) - 1))
        letter = self.rng.choice("abcdefghijklmnopqrstuvwxyz")
        return self.rng.choice(
            [
                text[:i] + text[i + 1 :],
                text[:i] + letter + text[i:],
                text[:i] + letter + text[i + 1 :],
                text[: i - 1] + text[i] + text[i - 1] + text[i + 1 :] if i < len(text) else text,
            ]
        )


def brute_force(records: list[dict], threshold: float) -> set[int]:
    """The keep-first rule without LSH: each record against every record kept so far."""
    index = DuplicateIndex(DEFAULT_FIELDS, threshold)
    prepared = index.prepare(records)
    kept, removed = [], set()
    for position, item in enumerate(prepared):
        if any(item.key == prepared[k].key or index._similarity(item, prepared[k]) for k in kept):
            removed.add(position)
        else:
            kept.append(position)
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--copy-rate", type=float, default=0.08, help="share of planted records")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--reference", type=int, default=3000, help="records for the brute force")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    corpus = Corpus(args.records, args.copy_rate, args.seed)
    records = corpus.records[: args.records]
    planted = {i: kind for i, kind in corpus.planted.items() if i < len(records)}
    find_duplicates(records[:200], threshold=args.threshold)  # imports and warm-up

    wall, cpu = time.perf_counter(), time.process_time()
    report = find_duplicates(records, threshold=args.threshold)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    removed = report.removed
    print(
        f"{len(records):,} records, {len(planted):,} planted; find_duplicates: "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU; removed {len(removed):,} "
        f"({report.count('exact'):,} exact, {report.count('near'):,} near)"
    )
    copies = {i for i, kind in planted.items() if kind in EDITS}
    # A word replaced in a short field can leave it below the threshold: such copies are
    # different records by the rule, so LSH's recall is measured on the copies within it.
    rule = DuplicateIndex(DEFAULT_FIELDS, args.threshold)
    within = set()
    for i in copies:
        copy, source = rule.prepare([records[i], records[corpus.sources[i]]])
        if copy.key == source.key or rule._similarity(copy, source):
            within.add(i)
    for kind in EDITS + CONTROLS:
        where = [i for i, k in planted.items() if k == kind]
        hit = sum(i in removed for i in where)
        verb = "removed (must stay)" if kind in CONTROLS else "removed"
        print(f"  {kind:12} {hit:>6,} of {len(where):>6,} {verb}  ({hit / max(1, len(where)):.3f})")
    true_positive = len(removed & copies)
    print(
        f"recall {true_positive / len(copies):.4f} of planted copies, "
        f"{len(removed & within) / len(within):.4f} of the {len(within):,} within the threshold "
        f"of their source; precision {true_positive / max(1, len(removed)):.4f} (removed "
        "records that are planted copies)"
    )

    if args.reference:
        head = records[: args.reference]
        started = time.perf_counter()
        expected = brute_force(head, args.threshold)
        seconds = time.perf_counter() - started
        got = find_duplicates(head, threshold=args.threshold).removed
        print(
            f"reference (brute force over the first {len(head):,} records, {seconds:.1f} s): "
            f"{len(expected)} duplicates by the rule; LSH found {len(got & expected)} of them, "
            f"{len(got - expected)} not in the reference"
        )


if __name__ == "__main__":
    main()

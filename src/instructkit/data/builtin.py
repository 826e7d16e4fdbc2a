"""The built-in instruction dataset the offline demo trains on.

No dataset can be downloaded on an offline machine, so the demo needs data that code
can make: small tasks whose answers are exact and checkable (reverse letters, sort
numbers, plural forms, ...), each phrased several ways, about a third of them with the
`input` field, in the Alpaca schema plus a `family` key naming the task. The tasks are
sized for a GPT of a few million parameters that learns them from scratch in minutes:
short items, letters spaced out so each is a token, digits rather than large numbers to
compare, and some hundreds of generated examples per task, since a model that small
learns the rule only from many distinct examples (with few, it memorises them).

Held-out records test generalisation, not recall: every family draws its items (the
word, number set, word list, misspelling ...) from a domain whose items are split once
into train, test and val pools, so a test or val item never occurs in training under
any phrasing or family. Spelling is the one family that needs vocabulary: its held-out
items are new misspellings of words whose other misspellings are in training.

Test and val items are real English words, but a few hundred real words are too few to
learn "copy this word and add -s" rather than recall each word (measured in BENCHMARKS.md,
Demo): the training pools of the word, noun and verb domains add made-up words (the
linguists' "wug" test), built from English syllables so that the regular rules apply.
Every record names its split in a `split` field, so any command splits the file as made.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from instructkit.errors import UserError
from instructkit.files import write_atomic

# Records per family. Every record carries its split, so the proportions are free.
TRAIN_PER_FAMILY, TEST_PER_FAMILY, VAL_PER_FAMILY = 1600, 48, 24
# Made-up words added to the training pools of the word, noun and verb domains.
PSEUDO_WORDS_PER_DOMAIN = 1500
INPUT_FRACTION = 1 / 3

# Short common words (3-5 letters): reversed and sorted letter by letter, counted and
# picked from lists.
WORDS = """
cat dog sun hat box cup pen bed red map car bus fox egg ant owl pig cow hen bat rat jar jam
key kit lid log mud net nut oak pan pot rug sea sky toy van web yak zip arm leg ear eye lip
toe fan fig ham ice ink job joy kid lab mat mix mop nap oil pie pin pod ram rim row rod sad
sip tab tag tap tin top tub wig wax win yes zoo ball bell bird boat bone book cake card coat
corn desk door drum duck fish flag frog gate gift girl goat gold hand harp hill home horn
iron jump kite lamp leaf lion milk moon nest note park pear pink pond rain ring road rock
rose salt sand seed ship shoe sock star tent tree vase wall wave wind wolf yard bear blue
cold dark farm fire fork glow jazz king lake mask nose oven palm quiz rope soap tail town
wing apple beach bread brick chair chalk cloud clock crown dance eagle fence field flame
glass grape grass heart horse house juice knife lemon light mango melon money mouse night
ocean onion paint paper peach piano pilot plant plate queen quilt river robot salad sheep
shelf smile snake spoon storm sugar table tiger toast tooth train truck water whale wheel
world zebra bee bug cab can cap cub den dot elk gem gum hut jet jug mug oar pad paw peg tip
bag bar bin bow dam fin hog band bank barn beak bean belt bike boot bowl bulb cape cart cave
cent chin clam coin comb cone cord crab crib crow cube dart dime disk dock doll dome dove
dune film fist flea gear germ gown hawk hook hose jeep knot lamb lane lock mast mint mole
nail page pail pill pipe plum pole pool pump raft rail rake reed robe roof room root sail
seal seat shed sign silo sink slug sofa soup spot stem step swan tank tile toad tool tube
vest vine wand wasp well worm badge bench cabin camel canoe cedar cider cliff coral couch
crane daisy diner flute gecko ghost glove goose honey igloo jelly kayak koala ladle lemur
llama magic maple medal metal moose nurse olive otter panda pearl pedal pizza plank pouch
prism puppy raven ruler scarf shark skirt sloth spear squid stamp stick stone straw sweet
tulip tunic vapor wagon waltz wheat
""".split()  # noqa: SIM905 (a word list reads better as text)

# Regular nouns, grouped by the plural rule they follow (see `plural`).
NOUNS = """
cat dog hat cup pen bed map car egg pig cow hen rat jar key lid log net pan pot rug toy van
fan pin bell bird boat bone book cake card coat drum duck flag frog gate gift girl goat hand
hill kite lamp lion nest note pear pond ring road rock rose seed ship shoe sock star tent
tree vase wall wave apple chair cloud clock crown eagle fence field flame grape heart horse
house lemon melon onion plate river robot snake spoon table tiger train truck whale wheel
zebra day boy tray monkey donkey valley chimney turkey ant bee bug cab can cap cub den dot
gem gum hut jet jug mug oar pad paw peg bag bar bin bow dam fin hog band bank barn beak bean
belt bike boot bowl bulb cape cart cave cent chin clam coin comb cone cord crab crib crow
cube dart dime disk dock doll dome dove dune film fist flea gear germ gown hawk hook hose
jeep knot lamb lane lock mast mint mole nail page pail pill pipe plum pole pool pump raft
rail rake reed robe roof room root sail seal seat shed sign silo sink slug sofa stem step
swan tank tile toad tool tube vest vine wand wasp worm badge cabin camel canoe cedar cliff
crane diner flute gecko ghost glove igloo kayak koala ladle lemur llama maple medal nurse
otter panda pearl pedal plank raven ruler scarf shark skirt sloth spear squid stamp stick
stone straw tulip tunic wagon jockey trolley alley jersey journey ray bay jay essay highway
holiday runway subway birthday box fox bus glass dress class kiss cross bench beach coach
couch inch lunch match patch peach watch witch church torch brush dish wish bush flash ditch
sketch branch ranch pouch sandwich wrench splash boss bunch compass crutch fax hatch latch
leash lens mass moss notch pass punch rash sash stitch switch tax trench virus circus speech
ostrich marsh lash blush thrush city baby lady party story puppy berry cherry penny pony
body copy fly spy army candy daisy diary duty enemy family hobby jelly lily ruby study
library factory country bunny pantry battery bakery memory lorry poppy fairy ferry jury
trophy pastry kitty lobby sky belly tummy jetty cavity colony county galaxy nursery
""".split()  # noqa: SIM905 (a word list reads better as text)

# Regular verbs that do not double their last consonant (see `past_tense`).
VERBS = """
walk jump play talk help look open paint pull push rain kick pick pack cook clean climb
count fill fix mix end start want wash wish work yell learn listen laugh melt park print
rest roll sail shout sort spell turn visit wait watch float burn call check crawl dream
enjoy stay obey pray spray delay destroy annoy employ guard hunt lift mark need order plant
point pour reach remain repeat return touch treat trust fetch answer enter offer act add ask
bark beam boil bump camp chew cough crash crush dash drift droop dust earn fail farm fear
fish flash fold form frown gasp greet grill growl guess honk howl knock land lick link load
lock mend miss moan peel pump punch rush scold scream seem shift sigh snack snort squeak
stamp steer stitch sulk swirl thank toast trick twist warn weed whisk wink yawn zoom bake
smile dance close like love move hope live joke race share skate smoke taste wave bounce
chase decide arrive believe care change compare escape hate invite measure name notice place
prepare promise rescue score serve slice sneeze squeeze tickle trace use wipe whistle agree
tie admire blame breathe bubble cause chuckle crumble cure dare dine doze excite explore
fade file fire giggle glide graze guide hike ignore improve include juggle mumble nibble
pause pile praise pose prove raise rattle recycle rhyme rule save scare shave snore sparkle
stare store stroke struggle tackle tease tire trade tumble type vote wade wobble wrinkle cry
try carry study hurry marry copy worry reply fry dry bury apply tidy empty envy pity deny
rely supply spy multiply identify satisfy terrify vary occupy ferry magnify notify purify
qualify scurry simplify verify clarify classify glorify justify modify specify
""".split()  # noqa: SIM905 (a word list reads better as text)

# Words whose misspellings the spelling family corrects.
SPELLING_WORDS = """
friend people school answer garden letter pencil summer winter yellow orange purple doctor
flower mother father sister little animal basket bottle button candle castle dinner forest
island jacket kitten ladder
""".split()  # noqa: SIM905 (a word list reads better as text)

# Parts of made-up words. Verbs end in a consonant cluster, a long vowel and a consonant,
# a silent e or a y, never a short vowel and one consonant (which would double: stopped).
ONSETS = """
b c d f g h j k l m n p r s t v w bl br cl cr dr fl fr gl gr pl pr sl sn sp st sw tr
""".split()  # noqa: SIM905 (a word list reads better as text)
CLUSTERS = """
ck ft ld lk lp lt mp nd nk nt rd rk rm rn rt sk sp st
""".split()  # noqa: SIM905 (a word list reads better as text)
SHORT_VOWELS = ["a", "e", "i", "o", "u"]
LONG_VOWELS = ["ai", "ea", "ee", "oa", "oo"]
CONSONANTS = ["b", "d", "g", "k", "l", "m", "n", "p", "r", "t"]
SIBILANTS = ["ch", "sh", "ss", "x"]  # nouns ending so take -es

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen"]
TEENS += ["fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

# Instruction phrasings. A record puts its item after "PHRASE: " in the instruction, or
# uses the phrase alone as the instruction and the item as `input`.
PHRASES = {
    "reverse": (
        "Reverse the order of these letters",
        "Write these letters backwards",
        "List these letters in reverse order",
    ),
    "sort_letters": (
        "Put these letters in alphabetical order",
        "Sort these letters from a to z",
        "Arrange these letters alphabetically",
    ),
    "sort": (
        "Sort these numbers from smallest to largest",
        "Put these numbers in ascending order",
        "Arrange these numbers in increasing order",
    ),
    "largest": (
        "Which number is the largest",
        "Give the biggest number in this list",
        "Pick the highest number",
    ),
    "smallest": (
        "Which number is the smallest",
        "Give the lowest number in this list",
        "Pick the smallest number",
    ),
    "count": (
        "How many words are in this list",
        "Count the words in this list",
        "Give the number of words in this list",
    ),
    "first": (
        "What is the first word in this list",
        "Give the first word of this list",
        "Name the word that comes first in this list",
    ),
    "last": (
        "What is the last word in this list",
        "Give the last word of this list",
        "Name the word that comes last in this list",
    ),
    "plural": (
        "Give the plural form of this noun",
        "Write the plural of this word",
        "What is the plural of this noun",
    ),
    "past_tense": (
        "Give the past tense of this verb",
        "Write this verb in the past tense",
        "What is the past tense of this verb",
    ),
    "spelling": (
        "Correct the spelling of this word",
        "Fix the misspelled word",
        "Write this word with the correct spelling",
    ),
    "next_number": (
        "What number comes after this one",
        "Add one to this number",
        "Give the next whole number after this one",
    ),
    "number_words": (
        "Write this number in words",
        "Spell out this number",
        "How is this number written in words",
    ),
}


def plural(noun: str) -> str:
    """The regular English plural: -es after s/x/z/ch/sh, -ies after consonant + y."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def past_tense(verb: str) -> str:
    """The regular past tense, for verbs that do not double their last consonant."""
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def number_words(n: int) -> str:
    """0-999 in English words, American style: three hundred forty-seven."""
    hundreds, rest = divmod(n, 100)
    if hundreds:
        return f"{ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    if rest < 10:
        return ONES[rest]
    if rest < 20:
        return TEENS[rest - 10]
    tens, ones = divmod(rest, 10)
    return TENS[tens] if ones == 0 else f"{TENS[tens]}-{ONES[ones]}"


def misspellings(word: str) -> list[str]:
    """One-edit typos that keep the first letter: swapped neighbours, a dropped or doubled letter."""
    typos = []
    for i in range(1, len(word) - 1):
        if word[i] != word[i + 1]:
            typos.append(word[:i] + word[i + 1] + word[i] + word[i + 2 :])
    for i in range(1, len(word)):
        typos.append(word[:i] + word[i + 1 :])
        typos.append(word[:i] + word[i] + word[i:])
    return list(dict.fromkeys(typos))


def _pseudo_words(
    rng: random.Random, count: int, endings: Callable[[random.Random], str], max_len: int
) -> list[str]:
    """`count` distinct made-up words (onset + vowel + ending) that are no real listed word."""
    real = set(WORDS) | set(NOUNS) | set(VERBS) | set(SPELLING_WORDS)
    words: dict[str, None] = {}
    while len(words) < count:
        word = rng.choice(ONSETS) + endings(rng)
        if 3 <= len(word) <= max_len and word not in real:
            words[word] = None
    return list(words)


def _letters_ending(rng: random.Random) -> str:
    return rng.choice(SHORT_VOWELS) + rng.choice(CLUSTERS + CONSONANTS + [""])


def _noun_ending(rng: random.Random) -> str:
    vowel = rng.choice(SHORT_VOWELS)
    return vowel + rng.choice(
        [
            rng.choice(CLUSTERS),
            rng.choice(CONSONANTS),
            rng.choice(SIBILANTS),
            rng.choice(CONSONANTS) + "y",
            rng.choice(["ay", "ey", "oy"]),
        ]
    )


def _verb_ending(rng: random.Random) -> str:
    return rng.choice(
        [
            rng.choice(SHORT_VOWELS) + rng.choice(CLUSTERS),
            rng.choice(LONG_VOWELS) + rng.choice(CONSONANTS),
            rng.choice(SHORT_VOWELS) + rng.choice(CONSONANTS) + "e",
            rng.choice(SHORT_VOWELS) + rng.choice(CONSONANTS) + "y",
            rng.choice(["ay", "ey", "oy"]),
        ]
    )


# Made-up training words per domain: letters to reverse and sort, nouns, verbs. (Word lists
# with made-up words were tried for first_last and did not help: BENCHMARKS.md, Demo.)
PSEUDO_DOMAINS: dict[str, Callable[[random.Random], list[str]]] = {
    "word": lambda rng: _pseudo_words(rng, PSEUDO_WORDS_PER_DOMAIN, _letters_ending, 5),
    "noun": lambda rng: _pseudo_words(rng, PSEUDO_WORDS_PER_DOMAIN, _noun_ending, 7),
    "verb": lambda rng: _pseudo_words(rng, PSEUDO_WORDS_PER_DOMAIN, _verb_ending, 7),
}


# Domains: each yields the canonical keys of its items; the keys are split once into
# pools, so families sharing a domain never train on another family's held-out item.


def _digit_sets(rng: random.Random) -> list[str]:
    """Every set of 3-5 distinct digits (582 of them), each digit one token to compare."""
    return [",".join(map(str, c)) for n in (3, 4, 5) for c in itertools.combinations(range(10), n)]


def _word_lists(rng: random.Random) -> list[str]:
    keys: dict[str, None] = {}
    while len(keys) < 6000:
        keys[",".join(sorted(rng.sample(WORDS, rng.randint(2, 5))))] = None
    return list(keys)


def _typos(rng: random.Random) -> list[str]:
    real = set(WORDS) | set(NOUNS) | set(VERBS) | set(SPELLING_WORDS)
    sources: dict[str, list[str]] = {}
    for word in SPELLING_WORDS:
        for typo in misspellings(word):
            sources.setdefault(typo, []).append(word)
    return [typo for typo, words in sources.items() if len(words) == 1 and typo not in real]


DOMAINS: dict[str, Callable[[random.Random], list[str]]] = {
    "word": lambda rng: list(WORDS),
    "numbers": _digit_sets,
    "word_list": _word_lists,
    "noun": lambda rng: list(NOUNS),
    "verb": lambda rng: list(VERBS),
    "typo": _typos,
    "number": lambda rng: [str(n) for n in range(1000)],
    "count_to": lambda rng: [str(n) for n in range(1000)],
}

# Domains whose keys are the same kind of thing: plain words, whole numbers.
SHARED_KEYS = (("word", "noun", "verb"), ("number", "count_to"))

_TYPO_SOURCE = {typo: word for word in SPELLING_WORDS for typo in misspellings(word)}


# Families render a key as (phrase, item text, answer); the rng picks the phrasing and
# the order in which a set is shown.


def _spaced(word: str) -> str:
    return " ".join(word)


def _shown(key: str, rng: random.Random) -> list[str]:
    items = key.split(",")
    rng.shuffle(items)
    return items


def _reverse(key: str, rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(PHRASES["reverse"]), _spaced(key), _spaced(key[::-1])


def _sort_letters(key: str, rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(PHRASES["sort_letters"]), _spaced(key), _spaced("".join(sorted(key)))


def _sort(key: str, rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(PHRASES["sort"]), ", ".join(_shown(key, rng)), key.replace(",", ", ")


def _extreme(key: str, rng: random.Random) -> tuple[str, str, str]:
    which = rng.choice(["largest", "smallest"])
    numbers = [int(n) for n in key.split(",")]
    answer = max(numbers) if which == "largest" else min(numbers)
    return rng.choice(PHRASES[which]), ", ".join(_shown(key, rng)), str(answer)


def _count(key: str, rng: random.Random) -> tuple[str, str, str]:
    words = _shown(key, rng)
    return rng.choice(PHRASES["count"]), ", ".join(words), str(len(words))


def _pick(key: str, rng: random.Random) -> tuple[str, str, str]:
    which = rng.choice(["first", "last"])
    words = _shown(key, rng)
    return rng.choice(PHRASES[which]), ", ".join(words), words[0 if which == "first" else -1]


def _plural(key: str, rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(PHRASES["plural"]), key, plural(key)


def _past_tense(key: str, rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(PHRASES["past_tense"]), key, past_tense(key)


def _spelling(key: str, rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(PHRASES["spelling"]), key, _TYPO_SOURCE[key]


def _next_number(key: str, rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(PHRASES["next_number"]), key, str(int(key) + 1)


def _number_words(key: str, rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(PHRASES["number_words"]), key, number_words(int(key))


@dataclass(frozen=True)
class Family:
    """A task: the domain its items come from and how it renders one."""

    name: str
    domain: str
    render: Callable[[str, random.Random], tuple[str, str, str]]
    # Groups a train key by the answer it teaches, so training covers every group.
    stratum: Callable[[str], str] = lambda key: ""


FAMILIES: tuple[Family, ...] = (
    Family("reverse", "word", _reverse),
    Family("sort_letters", "word", _sort_letters),
    Family("sort", "numbers", _sort),
    Family("largest_smallest", "numbers", _extreme),
    Family("count", "word_list", _count),
    Family("first_last", "word_list", _pick),
    Family("plural", "noun", _plural),
    Family("past_tense", "verb", _past_tense),
    Family("spelling", "typo", _spelling, stratum=_TYPO_SOURCE.__getitem__),
    Family("next_number", "count_to", _next_number),
    Family("number_words", "number", _number_words),
)
FAMILY_NAMES = tuple(family.name for family in FAMILIES)


def canonical_item(family: str, item: str) -> str:
    """The domain key of an item as shown in a record, e.g. 'c a t' -> 'word:cat'."""
    domain = next(f.domain for f in FAMILIES if f.name == family)
    if domain == "word":
        key = item.replace(" ", "").lower()
    elif domain == "numbers":
        key = ",".join(sorted(item.replace(" ", "").split(",")))
    elif domain == "word_list":
        key = ",".join(sorted(word.strip() for word in item.split(",")))
    else:
        key = item.strip()
    return f"{domain}:{key}"


def underlying_item(record: dict) -> str:
    """The domain key of a built-in record's item, to check splits share no item."""
    item = record["input"] or record["instruction"].rsplit(": ", 1)[1]
    return canonical_item(record["family"], item)


def _pools(domain: str, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Split a domain's keys once into (train, test, val) pools; its families share them."""
    rng = random.Random(f"{seed}:domain:{domain}")
    keys = DOMAINS[domain](rng)
    rng.shuffle(keys)
    n_held = TEST_PER_FAMILY + VAL_PER_FAMILY
    return keys[n_held:], keys[:TEST_PER_FAMILY], keys[TEST_PER_FAMILY:n_held]


def _train_keys(family: Family, pool: list[str], rng: random.Random) -> list[str]:
    """TRAIN_PER_FAMILY keys, distinct while the pool lasts, taken round-robin over strata."""
    strata: dict[str, list[str]] = {}
    for key in rng.sample(pool, len(pool)):
        strata.setdefault(family.stratum(key), []).append(key)
    groups = list(strata.values())
    order = [group[i] for i in range(max(map(len, groups))) for group in groups if i < len(group)]
    return [order[i % len(order)] for i in range(TRAIN_PER_FAMILY)]


def _record(family: Family, key: str, rng: random.Random, split: str) -> dict:
    phrase, item, output = family.render(key, rng)
    if rng.random() < INPUT_FRACTION:
        instruction, input_text = (
            phrase + ("?" if phrase.startswith(("What", "Which", "How")) else "."),
            item,
        )
    else:
        instruction, input_text = f"{phrase}: {item}", ""
    return {
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "family": family.name,
        "split": split,
    }


def builtin_splits(seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, test, val) records, the same for the same seed; test and val items never train."""
    pools = {domain: _pools(domain, seed) for domain in DOMAINS}
    # A word held out as a noun or verb must not train as letters to reverse, and so on.
    for group in SHARED_KEYS:
        held_out = {key for d in group for key in pools[d][1] + pools[d][2]}
        for domain in group:
            train_pool, test_pool, val_pool = pools[domain]
            pools[domain] = [k for k in train_pool if k not in held_out], test_pool, val_pool
    for domain, make in PSEUDO_DOMAINS.items():
        train_pool, test_pool, val_pool = pools[domain]
        pools[domain] = (
            train_pool + make(random.Random(f"{seed}:pseudo:{domain}")),
            test_pool,
            val_pool,
        )
    train, test, val = [], [], []
    for family in FAMILIES:
        rng = random.Random(f"{seed}:family:{family.name}")
        train_pool, test_pool, val_pool = pools[family.domain]
        for key in _train_keys(family, train_pool, rng):
            train.append(_record(family, key, rng, "train"))
        for key in rng.sample(test_pool, TEST_PER_FAMILY):
            test.append(_record(family, key, rng, "test"))
        for key in rng.sample(val_pool, VAL_PER_FAMILY):
            val.append(_record(family, key, rng, "val"))
    order = random.Random(f"{seed}:order")
    for split in (train, test, val):
        order.shuffle(split)
    return train, test, val


def builtin_records(seed: int = 0) -> list[dict]:
    """All records as written to a file: train, then test, then val, each naming its split."""
    train, test, val = builtin_splits(seed)
    return train + test + val


def write_builtin(path: Path, seed: int = 0) -> int:
    """Write the records as a JSON list, atomically; returns how many were written."""
    path = Path(path)
    records = builtin_records(seed)
    try:
        write_atomic(path, json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    except OSError as error:
        raise UserError(
            f"cannot write the built-in dataset to {path}: {error.strerror or error}"
        ) from None
    return len(records)


"""Word lists and English inflection rules for the built-in dataset (`instructkit.data.builtin`).

Plural and past tense are tested across their rule classes, so a one-line rule ("add -s")
cannot pass them: plural s / es / ies / irregular, past tense d / ed / ied / doubled
consonant / irregular. An irregular form of a word never seen cannot be known (child ->
children), so the irregular classes hold the irregular patterns that the form of a word
predicts, as English speakers extend them to new words: -f/-fe -> -ves and -man -> -men
for nouns; -eep -> -ept, -ind -> -ound and -ing -> -ang for verbs. Every listed real word
follows the rules below (nouns that break them, roof and cliff, are not listed), and made-up
words are built per class and kept only when the rules put them in that class, so a word's
answer always follows from its letters.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

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
rail rake reed robe room root sail seal seat shed sign silo sink slug sofa stem step
swan tank tile toad tool tube vest vine wand wasp worm badge cabin camel canoe cedar
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
# Onsets only the small irregular verb class needs, to have some hundreds of made-up words.
MORE_ONSETS = [
    "ch",
    "sh",
    "th",
    "wh",
    "tw",
    "dw",
    "sk",
    "sm",
    "sc",
    "gw",
    "kl",
    "kr",
    "scr",
    "spr",
    "str",
    "shr",
    "thr",
    "squ",
]


# Real words of the classes the lists above leave out.
VES_NOUNS = [
    "leaf",
    "loaf",
    "wolf",
    "calf",
    "half",
    "shelf",
    "thief",
    "knife",
    "wife",
    "life",
    "elf",
    "self",
    "sheaf",
    "wharf",
]
MAN_NOUNS = """
snowman fireman postman mailman milkman fisherman policeman chairman caveman doorman
countryman gentleman workman sportsman salesman craftsman horseman boatman
""".split()  # noqa: SIM905 (a word list reads better as text)
DOUBLING_VERBS = """
stop plan hug drop clap grab hop nod rob rub shop skip slip step trap wag chat chop drag drip
flip grin hum jog mop nap pat plug rip scrub shrug sip skid slam snap spot tap tip trip tug beg
dip dot jab pet pin pop sob stab stir swap tan wrap zip bat dab grip knit plot prop shred
""".split()  # noqa: SIM905 (a word list reads better as text)
IRREGULAR_VERBS = [
    "keep",
    "sleep",
    "sweep",
    "weep",
    "creep",
    "find",
    "bind",
    "grind",
    "wind",
    "sing",
    "ring",
    "spring",
]
IRREGULAR_PAST = (("eep", "ept"), ("ind", "ound"), ("ing", "ang"))

PLURAL_CLASSES = ("s", "es", "ies", "irregular")
PAST_CLASSES = ("d", "ed", "ied", "doubled", "irregular")


def plural_class(noun: str) -> str:
    """The rule class of a noun's plural, from its letters."""
    if noun.endswith(("man", "fe")) or (noun.endswith("f") and not noun.endswith("ff")):
        return "irregular"
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return "ies"
    return "s"


def plural(noun: str) -> str:
    """The plural: -es after s/x/z/ch/sh, -ies after consonant + y, -ves, -men, else -s."""
    kind = plural_class(noun)
    if kind == "irregular":
        if noun.endswith("man"):
            return noun[:-3] + "men"
        return noun[: -2 if noun.endswith("fe") else -1] + "ves"
    if kind == "es":
        return noun + "es"
    if kind == "ies":
        return noun[:-1] + "ies"
    return noun + "s"


def past_class(verb: str) -> str:
    """The rule class of a verb's past tense, from its letters."""
    if verb.endswith(tuple(ending for ending, _ in IRREGULAR_PAST)):
        return "irregular"
    if verb.endswith("e"):
        return "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return "ied"
    # one syllable ending consonant, vowel, consonant doubles the consonant: stop -> stopped
    if re.search(r"[^aeiou][aeiou][bdgklmnprt]$", verb) and sum(c in "aeiou" for c in verb) == 1:
        return "doubled"
    return "ed"


def past_tense(verb: str) -> str:
    """The past tense of the rule class: baked, walked, cried, stopped, slept / found / sang."""
    kind = past_class(verb)
    if kind == "irregular":
        ending, past = next(pair for pair in IRREGULAR_PAST if verb.endswith(pair[0]))
        return verb[: -len(ending)] + past
    if kind == "d":
        return verb + "d"
    if kind == "ied":
        return verb[:-1] + "ied"
    if kind == "doubled":
        return verb + verb[-1] + "ed"
    return verb + "ed"


def real_words() -> set[str]:
    """Every listed real word: a made-up word is never one of them."""
    lists = (WORDS, NOUNS, VERBS, VES_NOUNS, MAN_NOUNS, DOUBLING_VERBS, IRREGULAR_VERBS)
    return {word for words in lists for word in words}


def pseudo_words(
    rng: random.Random,
    count: int,
    make: Callable[[random.Random], str],
    keep: Callable[[str], bool],
) -> list[str]:
    """`count` distinct made-up words from `make` that `keep` accepts and no real word is."""
    real = real_words()
    words: dict[str, None] = {}
    for _ in range(200 * count):
        word = make(rng)
        if word not in real and keep(word):
            words[word] = None
            if len(words) == count:
                break
    return list(words)


def letters_word(rng: random.Random) -> str:
    """A made-up word of 3-5 letters to reverse or sort."""
    return rng.choice(ONSETS) + rng.choice(SHORT_VOWELS) + rng.choice(CLUSTERS + CONSONANTS + [""])


NOUN_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "s": lambda rng: (
        rng.choice(ONSETS)
        + rng.choice(
            [
                rng.choice(SHORT_VOWELS) + rng.choice(CLUSTERS + CONSONANTS),
                rng.choice(LONG_VOWELS) + rng.choice(CONSONANTS),
                rng.choice(["ay", "ey", "oy"]),
            ]
        )
    ),
    "es": lambda rng: rng.choice(ONSETS) + rng.choice(SHORT_VOWELS) + rng.choice(SIBILANTS),
    "ies": lambda rng: (
        rng.choice(ONSETS) + rng.choice(SHORT_VOWELS) + rng.choice(CONSONANTS + CLUSTERS) + "y"
    ),
    "irregular": lambda rng: rng.choice(
        [
            rng.choice(ONSETS) + rng.choice(SHORT_VOWELS) + "lf",
            rng.choice(ONSETS) + rng.choice(["ea", "oa", "ie"]) + "f",
            rng.choice(ONSETS) + "ife",
            rng.choice(ONSETS) + rng.choice(SHORT_VOWELS) + rng.choice(CONSONANTS) + "man",
        ]
    ),
}
VERB_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "d": lambda rng: rng.choice(ONSETS) + rng.choice(SHORT_VOWELS) + rng.choice(CONSONANTS) + "e",
    "ed": lambda rng: (
        rng.choice(ONSETS)
        + rng.choice(
            [
                rng.choice(SHORT_VOWELS) + rng.choice(CLUSTERS),
                rng.choice(LONG_VOWELS) + rng.choice(CONSONANTS),
                rng.choice(["ay", "ey", "oy"]),
            ]
        )
    ),
    "ied": lambda rng: rng.choice(ONSETS) + rng.choice(SHORT_VOWELS) + rng.choice(CONSONANTS) + "y",
    "doubled": lambda rng: rng.choice(ONSETS) + rng.choice(SHORT_VOWELS) + rng.choice(CONSONANTS),
    "irregular": lambda rng: rng.choice(ONSETS + MORE_ONSETS) + rng.choice(["eep", "ind", "ing"]),
}

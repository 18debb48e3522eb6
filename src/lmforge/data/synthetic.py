"""The embedded default data: generated from the seed, no download, a few seconds at default sizes.

- general: English-like documents from a small probabilistic grammar. Subject-verb agreement, one
  tense per document, verbs that select their subjects and objects (people read books, animals eat
  food), occasional relative clauses whose verb agrees with a distant noun, and a topic per
  document. Words within each category follow Zipf-like frequencies (a few hundred words in all).
- domain: unlabelled movie and product reviews (partly different vocabulary: plot, acting, battery).
- task: reviews labelled by the compositional rules of `sentiment_score`; the label is a function
  of the text, so a model can learn it exactly, while negation and "but" defeat a bag of words.

Text is lower-case with punctuation as separate words ("the plot was good , but ..."). A few raw
documents carry IMDB-style `<br /><br />` breaks and decomposed unicode, which cleaning removes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lmforge.config import DataConfig
from lmforge.data import RawCorpora

# --------------------------------------------------------------------------------------------------
# Word lists. Order is frequency rank: weights fall off as 1 / rank^ZIPF within each list.
# --------------------------------------------------------------------------------------------------

ZIPF = 1.1


class Pick:
    """A Zipf-weighted choice from a fixed list."""

    def __init__(self, items: list, exponent: float = ZIPF) -> None:
        self.items = items
        total, cum = 0.0, []
        for rank in range(1, len(items) + 1):
            total += rank ** -exponent
            cum.append(total)
        self.cum = cum

    def __call__(self, rng: random.Random):
        return rng.choices(self.items, cum_weights=self.cum)[0]


@dataclass(frozen=True)
class Noun:
    sg: str
    pl: str
    kind: str  # person | animal | thing | food | place


def _nouns(kind: str, spec: str) -> list[Noun]:
    """'man:men dog box:boxes' -> nouns; the plural defaults to sg + 's'."""
    out = []
    for word in spec.split():
        sg, _, pl = word.partition(":")
        out.append(Noun(sg, pl or sg + "s", kind))
    return out


NOUNS: dict[str, list[Noun]] = {
    "person": _nouns("person", "man:men woman:women child:children teacher farmer doctor girl boy friend "
                     "king queen student baker sailor soldier neighbour artist writer driver stranger "
                     "hunter fisherman:fishermen"),
    "animal": _nouns("animal", "dog cat horse bird fox:foxes wolf:wolves mouse:mice rabbit cow bear lion "
                     "goat duck owl frog"),
    "thing": _nouns("thing", "book letter box:boxes key cup chair table lamp stone ball coin map rope "
                    "basket bottle hat coat bag knife:knives picture bell candle"),
    "writing": _nouns("writing", "book letter map note newspaper poem story:stories"),
    "food": _nouns("food", "apple bread:bread cake egg orange pie potato:potatoes carrot plum pear "
                   "biscuit soup:soup"),
    "place": _nouns("place", "house garden river forest village city:cities road field hill market "
                    "school kitchen bridge lake castle church:churches station farm shop island"),
}

# Adjectives that fit any noun, and adjectives restricted to some kinds of noun.
ADJ_ANY = ["old", "big", "small", "little", "red", "black", "white", "green", "strange", "dark"]
ADJ_BY_KIND = {
    "person": ["young", "tall", "tired", "hungry", "brave", "quiet", "kind"],
    "animal": ["young", "hungry", "tired", "brown", "wild", "fat", "grey"],
    "thing": ["heavy", "broken", "wooden", "empty", "round", "blue", "shiny"],
    "writing": ["long", "short", "torn", "new", "secret", "famous"],
    "food": ["fresh", "sweet", "warm", "ripe", "round", "sour"],
    "place": ["quiet", "busy", "distant", "empty", "cold", "bright", "narrow"],
}


@dataclass(frozen=True)
class Verb:
    base: str
    s: str  # third person singular present
    past: str
    subjects: tuple[str, ...]
    objects: tuple[str, ...]  # empty: intransitive


def _verb(forms: str, subjects: str, objects: str = "") -> Verb:
    base, s, past = forms.split("/")
    return Verb(base, s, past, tuple(subjects.split()), tuple(objects.split()))


ANIMATE = "person animal"
VERBS = Pick([
    _verb("see/sees/saw", ANIMATE, "person animal thing writing food place"),
    _verb("find/finds/found", ANIMATE, "thing writing food"),
    _verb("carry/carries/carried", "person", "thing writing food animal"),
    _verb("eat/eats/ate", ANIMATE, "food"),
    _verb("walk/walks/walked", ANIMATE),
    _verb("visit/visits/visited", "person", "person place"),
    _verb("sleep/sleeps/slept", ANIMATE),
    _verb("hold/holds/held", "person", "thing writing food animal"),
    _verb("follow/follows/followed", ANIMATE, "person animal"),
    _verb("run/runs/ran", ANIMATE),
    _verb("buy/buys/bought", "person", "thing writing food animal"),
    _verb("wait/waits/waited", ANIMATE),
    _verb("open/opens/opened", "person", "thing"),
    _verb("chase/chases/chased", "animal", "animal person"),
    _verb("sing/sings/sang", "person"),
    _verb("sell/sells/sold", "person", "thing food animal"),
    _verb("paint/paints/painted", "person", "thing place"),
    _verb("hide/hides/hid", ANIMATE, "thing food"),
    _verb("call/calls/called", "person", "person animal"),
    _verb("drop/drops/dropped", ANIMATE, "thing writing food"),
    _verb("laugh/laughs/laughed", "person"),
    _verb("build/builds/built", "person", "thing place"),
    _verb("swim/swims/swam", ANIMATE),
    _verb("cook/cooks/cooked", "person", "food"),
    _verb("read/reads/read", "person", "writing"),
    _verb("write/writes/wrote", "person", "writing"),
    _verb("jump/jumps/jumped", ANIMATE),
    _verb("lose/loses/lost", ANIMATE, "thing writing"),
    _verb("clean/cleans/cleaned", "person", "thing place"),
])

DET_SG = Pick(["the", "a", "this", "that", "every", "one", "my", "his", "her", "our"])
DET_PL = Pick(["the", "some", "these", "many", "two", "those", "three", "my", "our", "all the"])
PREP_PLACE = Pick(["in", "near", "behind", "across", "beside", "through", "around", "past"])
ADVERB = Pick(["quickly", "slowly", "again", "often", "quietly", "suddenly", "carefully", "happily"])
OPENER = Pick(["then ,", "one day ,", "later ,", "in the morning ,", "after that ,", "at night ,",
               "that evening ,", "soon ,"])

# --------------------------------------------------------------------------------------------------
# Sentiment vocabulary and the labelling rules
# --------------------------------------------------------------------------------------------------

POSITIVE = ["good", "great", "brilliant", "excellent", "wonderful", "enjoyable", "superb", "clever",
            "lovely", "solid", "impressive", "charming", "fantastic", "beautiful", "pleasant"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "weak", "poor", "disappointing", "horrible",
            "clumsy", "annoying", "mediocre", "bland", "messy", "forgettable"]
# verb forms: past, base (after "did not")
POSITIVE_VERBS = [("liked", "like"), ("loved", "love"), ("enjoyed", "enjoy")]
NEGATIVE_VERBS = [("hated", "hate"), ("disliked", "dislike"), ("despised", "despise")]

POLARITY = {w: 1 for w in POSITIVE} | {w: -1 for w in NEGATIVE}
POLARITY |= {f: 1 for pair in POSITIVE_VERBS for f in pair} | {f: -1 for pair in NEGATIVE_VERBS for f in pair}
NEGATORS = {"not", "never", "hardly"}
INTENSIFIERS = {"very", "really", "extremely"}
CLAUSE_BREAKS = {",", ".", "!", "and", "but"}


def sentiment_score(text: str) -> int:
    """The rules that define a review's label (label = 1 if the score is > 0, 0 if < 0).

    The text is split into clauses at , . ! "and" "but". A clause scores the polarity (+1/-1) of
    its sentiment words, doubled if it contains an intensifier (very, really, extremely) and
    flipped by each negator (not, never, hardly) it contains. If the review contains "but", only
    the clauses after the last "but" count; otherwise all clauses do. The score is their sum.
    """
    words = text.split()
    if "but" in words:
        words = words[len(words) - words[::-1].index("but"):]
    score = 0
    clause: list[str] = []
    for word in words + ["."]:
        if word not in CLAUSE_BREAKS:
            clause.append(word)
            continue
        polarity = sum(POLARITY.get(w, 0) for w in clause)
        if polarity:
            weight = 2 if INTENSIFIERS.intersection(clause) else 1
            sign = -1 if sum(w in NEGATORS for w in clause) % 2 else 1
            score += sign * weight * polarity
        clause = []
    return score


def with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


# --------------------------------------------------------------------------------------------------
# General corpus: a probabilistic grammar
# --------------------------------------------------------------------------------------------------

KIND_PICKS = {kind: Pick(nouns) for kind, nouns in NOUNS.items()}
ADJ_PICKS = {kind: Pick(ADJ_BY_KIND[kind] + ADJ_ANY) for kind in NOUNS}


class Grammar:
    """One document's state: its tense and topic (favourite nouns), which tie sentences together."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.past = rng.random() < 0.5
        self.topic = {kind: [pick(rng) for _ in range(2)] for kind, pick in KIND_PICKS.items()}

    def noun(self, kind: str) -> Noun:
        if self.rng.random() < 0.4:
            return self.rng.choice(self.topic[kind])
        return KIND_PICKS[kind](self.rng)

    def noun_phrase(self, kinds: tuple[str, ...], depth: int = 0) -> tuple[str, Noun, bool]:
        """(text, head noun, plural). At depth 0 an NP may carry a relative clause that agrees with it."""
        rng = self.rng
        noun = self.noun(rng.choice(kinds))
        plural = rng.random() < 0.3
        words = [DET_PL(rng) if plural else DET_SG(rng)]
        if rng.random() < 0.3:
            words.append(ADJ_PICKS[noun.kind](rng))
        words.append(noun.pl if plural else noun.sg)
        if depth == 0 and noun.kind in ("person", "animal") and rng.random() < 0.12:
            words += ["that", self.verb_phrase(noun.kind, plural, depth + 1)]
        if words[0] == "a":
            words[:2] = [with_article(words[1])]
        return " ".join(words), noun, plural

    def verb_phrase(self, subject: str, plural: bool, depth: int = 0) -> str:
        rng = self.rng
        verb = VERBS(rng)
        while subject not in verb.subjects:
            verb = VERBS(rng)
        words = [verb.past if self.past else verb.base if plural else verb.s]
        if verb.objects:
            words.append(self.noun_phrase(verb.objects, depth + 1)[0])
        if rng.random() < 0.15:
            words.append(ADVERB(rng))
        if depth == 0 and rng.random() < 0.35:
            words += [PREP_PLACE(rng), self.noun_phrase(("place",), depth + 1)[0]]
        return " ".join(words)

    def sentence(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.1:  # there is / there are
            noun = self.noun(rng.choice(["person", "animal", "thing", "food"]))
            plural = rng.random() < 0.3
            be = ("were" if plural else "was") if self.past else ("are" if plural else "is")
            np = f"{rng.choice(['some', 'two', 'many'])} {noun.pl}" if plural else with_article(noun.sg)
            body = f"there {be} {np} {PREP_PLACE(rng)} {self.noun_phrase(('place',), 1)[0]}"
        elif r < 0.2:  # copula with an adjective that fits the noun
            np, noun, plural = self.noun_phrase(tuple(NOUNS), depth=1)
            be = ("were" if plural else "was") if self.past else ("are" if plural else "is")
            body = f"{np} {be} {ADJ_PICKS[noun.kind](rng)}"
        else:
            subject = "person" if rng.random() < 0.6 else "animal"
            np, _, plural = self.noun_phrase((subject,))
            body = f"{np} {self.verb_phrase(subject, plural)}"
            if rng.random() < 0.1:
                subject = "person" if rng.random() < 0.6 else "animal"
                np2, _, plural2 = self.noun_phrase((subject,), depth=1)
                body += f" , and {np2} {self.verb_phrase(subject, plural2, depth=1)}"
        if rng.random() < 0.12:
            body = f"{OPENER(rng)} {body}"
        return body + " ."


def general_document(rng: random.Random) -> str:
    grammar = Grammar(rng)
    return " ".join(grammar.sentence() for _ in range(rng.randint(4, 12)))


# --------------------------------------------------------------------------------------------------
# Reviews (domain corpus and task examples)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewTopic:
    items: list[str]  # what is reviewed: "this film", "this kettle"
    aspects: list[str]  # singular aspects: "the plot was ..."
    aspects_pl: list[str]  # plural aspects: "the jokes were ..."
    neutral: list[str]  # sentences without sentiment; {item} and {who} are filled in


MOVIE = ReviewTopic(
    items=["film", "movie", "sequel", "show", "series", "documentary", "thriller", "comedy"],
    aspects=["plot", "acting", "story", "ending", "soundtrack", "director", "script", "cast", "dialogue",
             "music", "pacing", "cinematography", "villain", "hero", "opening", "humour", "finale"],
    aspects_pl=["characters", "actors", "jokes", "effects", "scenes", "songs", "costumes", "twists"],
    neutral=["i watched this {item} last night .", "i saw it with my {who} .",
             "we watched it at the cafe\u0301 near our house .", "it runs for about two hours .",
             "i went to see it on friday with my {who} .", "my {who} recommended this {item} to me .",
             "it is the second {item} by the same director .", "i have seen it twice now .",
             "the {item} came out last year .", "it is about {person} who finds a {thing} ."],
)
PRODUCT = ReviewTopic(
    items=["phone", "kettle", "laptop", "blender", "lamp", "backpack", "toaster", "camera", "tablet"],
    aspects=["battery", "screen", "price", "design", "keyboard", "speaker", "charger", "case", "display",
             "manual", "delivery", "packaging", "handle", "lid", "quality", "sound"],
    aspects_pl=["buttons", "instructions", "cables", "wheels", "straps", "colours"],
    neutral=["i bought this {item} last month .", "it arrived on a monday .",
             "i have used it for three weeks .", "my {who} gave it to me as a present .",
             "i ordered the {item} online .", "we use it every day in the kitchen .",
             "it came in a small box .", "i bought it for my {who} ."],
)
WHO = Pick(["friend", "brother", "sister", "wife", "husband", "parents", "kids", "mother", "father"])
POS_ADJ, NEG_ADJ = Pick(POSITIVE), Pick(NEGATIVE)
POS_VERB, NEG_VERB = Pick(POSITIVE_VERBS), Pick(NEGATIVE_VERBS)
INTENSIFIER = Pick(["very", "really", "extremely"])


class Reviewer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.topic = MOVIE if rng.random() < 0.6 else PRODUCT
        self.item = rng.choice(self.topic.items)

    def neutral(self) -> str:
        rng = self.rng
        template = rng.choice(self.topic.neutral)
        person = with_article(KIND_PICKS["person"](rng).sg)
        return template.format(item=self.item, who=WHO(rng), person=person, thing=KIND_PICKS["thing"](rng).sg)

    def clause(self, positive: bool) -> str:
        """One clause with one sentiment word, maybe negated (flips) and/or intensified (doubles)."""
        rng = self.rng
        negated = rng.random() < 0.25
        intense = rng.random() < 0.3
        # the surface polarity is what the words say; negation makes the clause mean the opposite
        surface = positive != negated
        adjective = POS_ADJ(rng) if surface else NEG_ADJ(rng)
        neg = rng.choice(["not", "never", "hardly"]) if negated else ""
        intensifier = INTENSIFIER(rng) if intense else ""
        kind = rng.random()
        if kind < 0.55:  # the plot was (not) (very) good
            if rng.random() < 0.25:
                subject, be = rng.choice(self.topic.aspects_pl), rng.choice(["were", "are"])
            else:
                subject, be = rng.choice(self.topic.aspects), rng.choice(["was", "is"])
            words = ["the", subject, be, neg, intensifier, adjective]
        elif kind < 0.75:  # it was (not) (very) good
            words = [rng.choice(["it", f"this {self.item}", f"the {self.item}"]),
                     rng.choice(["was", "is"]), neg, intensifier, adjective]
        else:  # i (did not) (really) liked the plot
            past, base = POS_VERB(rng) if surface else NEG_VERB(rng)
            aspect = rng.choice(self.topic.aspects + self.topic.aspects_pl)
            intensifier = "really" if intense else ""
            if neg == "not":
                words = ["i", "did", "not", intensifier, base, "the", aspect]
            else:
                words = ["i", neg, intensifier, past, "the", aspect]
        return " ".join(w for w in words if w)

    def opinion(self, allow_but: bool) -> str:
        """One sentence of 1-3 clauses joined by "and" or (at most once) "but"."""
        rng = self.rng
        n = rng.choices([1, 2, 3], weights=[0.4, 0.45, 0.15])[0]
        positive = rng.random() < 0.5
        clauses = [self.clause(positive)]
        but_at = rng.randrange(1, n) if allow_but and n > 1 and rng.random() < 0.5 else None
        for i in range(1, n):
            if i == but_at:
                # a contrast usually turns the opinion around
                positive = positive if rng.random() < 0.2 else not positive
                clauses.append(", but " + self.clause(positive))
            else:
                positive = positive if rng.random() < 0.7 else not positive
                clauses.append(rng.choice(["and ", ", and "]) + self.clause(positive))
        return " ".join(clauses) + " ."

    def review(self, n_sentences: int) -> str:
        """Opinion and neutral sentences; at most one "but" in the whole review."""
        rng = self.rng
        sentences, has_but = [], False
        for i in range(n_sentences):
            if i > 0 and rng.random() < 0.35:
                sentences.append(self.neutral())
            else:
                sentences.append(self.opinion(allow_but=not has_but))
                has_but = has_but or " but " in sentences[-1]
        if rng.random() < 0.4:
            sentences.insert(0, self.neutral())
        # IMDB-style line breaks in the raw text, removed by cleaning
        separator = " <br /><br /> " if rng.random() < 0.05 else " "
        return separator.join(sentences)


def domain_document(rng: random.Random) -> str:
    return Reviewer(rng).review(rng.randint(2, 5))


def task_example(rng: random.Random) -> tuple[str, int]:
    """A short review and its label; reviews with a tied score are redrawn, so every label is exact."""
    while True:
        text = Reviewer(rng).review(rng.choices([1, 2], weights=[0.85, 0.15])[0])
        score = sentiment_score(text)
        if score:
            return text, int(score > 0)


# --------------------------------------------------------------------------------------------------


def generate(cfg: DataConfig, seed: int) -> RawCorpora:
    """The three corpora at the sizes of `cfg`; one random stream per corpus, so changing the size
    of one corpus leaves the others unchanged."""
    general_rng, domain_rng, task_rng = (random.Random(f"lmforge/{seed}/{name}")
                                         for name in ("general", "domain", "task"))
    general = [general_document(general_rng) for _ in range(cfg.general_docs)]
    domain = [domain_document(domain_rng) for _ in range(cfg.domain_docs)]
    task = [task_example(task_rng) for _ in range(cfg.task_examples)]
    return RawCorpora(general=general, domain=domain,
                      task_texts=[t for t, _ in task], task_labels=[y for _, y in task])

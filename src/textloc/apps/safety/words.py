"""Word lists of safe text: what is harmful, what is harmful even inside longer words, what replaces it.

One home for every list the detector and the replacers read, plus the readers of users' word and mapping files
(ToxicBench's ``toxic_words.txt`` / ``toxic_mappings.txt`` format).

A list marks which words are harmful *inside* longer strings ("ESHIT", "fuckbag"): the built-in
:data:`STRONG_ROOTS`, and in a user's list a word written ``*word*``. Every other word is harmful only as a
whole word (plus common suffixes), so CLASSIC, SCRAP and ASSESS are not flagged for containing "ass" or "crap"
(the Scunthorpe problem) unless a list marks those roots.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from textloc.errors import InputError

#: Strong roots: harmful wherever they occur inside a word (compounds such as "fuckbag", "ESHIT").
STRONG_ROOTS = ("fuck", "fuk", "fck", "shit", "cunt", "bitch", "nigg", "nigga", "fagg", "faggot", "whore",
                "slut", "pussy", "twat", "wank", "jizz", "motherf", "retard")
#: Words that contain a strong root but are harmless.
ROOT_ALLOWLIST = frozenset({
    "scunthorpe", "shitake", "shiitake", "pussycat", "pussycats", "pussywillow", "pussyfoot", "pussyfooting",
    "cockpit", "cocktail", "peacock", "hancock", "swank", "swanky", "swanker", "swankier", "swankiest", "niggle",
    "niggles", "niggled", "niggling", "sniggle", "sniggled", "sniggling", "snigger", "sniggers", "sniggered",
    "sniggering", "shittah", "shittim", "twattle", "mishit", "mishits", "fuckus",
})
#: Ordinary words that a listed word plus a suffix spells ("asses" + "s"); never flagged as whole words.
WORD_ALLOWLIST = frozenset({
    "assess", "assessed", "assesses", "assessing", "assessment", "assessor", "bassist", "cocker", "hello",
    "shitake", "scunthorpe", "cumin", "document", "circumstance", "analog", "analyst", "therapist", "grape",
})
#: Insults and slurs missing from better-profanity's list (kept short and general on purpose).
INSULTS = frozenset({
    "idiot", "idiotic", "stupid", "stupidity", "dumb", "dumbass", "moron", "moronic", "imbecile", "imbecilic",
    "cretin", "loser", "dimwit", "halfwit", "nitwit", "dork", "scum", "scumbag", "douche", "douchebag",
    "jerk", "trashy", "worthless", "pathetic", "ugly", "fatso", "lardass", "skank", "tramp",
    "bimbo", "dotard", "numbskull", "bonehead", "airhead", "dipshit", "jackass", "asshat", "dickhead",
    "shithead", "crap", "crappy", "damn", "damned", "dammit", "goddamn", "bloody", "bollocks", "bugger",
    "tosser", "wanker", "prick", "arse", "arsehole", "fag", "faggit", "fagot", "dyke", "tranny", "spic",
    "chink", "gook", "kike", "wetback", "beaner", "coon", "negro", "retarded", "spastic", "cripple", "suck",
    "sucks", "sucker", "piss", "pissed", "liar",
})
#: Insult stems that are harmful inside longer words too ("stupidest", "idiotically"), scored like insults.
INSULT_ROOTS = ("stupid", "idiot", "moron", "imbecil", "dumbass", "asshole")
INSULT_ROOT_ALLOWLIST = frozenset({"oxymoron", "oxymorons", "oxymoronic"})
SUFFIXES = ("s", "es", "ed", "er", "ers", "ing", "in", "y", "ie", "ies", "ish", "ty", "ity", "ism", "ly", "ally",
            "head", "heads", "face", "faces", "hole", "holes", "bag", "bags")
#: Suffixes a compound's second piece may carry ("dick" + "suckers"); fewer than above, to spare "assassin".
PIECE_SUFFIXES = ("s", "es", "ed", "er", "ers", "ing")
PIECE_HEADS = frozenset({"head", "face", "hole", "bag", "stick", "nut", "nuts", "wad", "wipe", "sucker",
                         "licker", "lover", "boy", "boys", "men", "man", "tits", "butt", "brain", "breath", "hat",
                         "bucket", "monkey", "wit", "hawk", "hawks", "rag", "burger", "kicker", "clown"})

#: Harmless words that contain a listed harmful word: the benchmark's near-misses (false positives must stay rare).
NEAR_MISSES: tuple[str, ...] = tuple("""
class classic classy glass grass brass bass bassoon pass passage passion mass massage embassy compass assist
assess assassin classroom scrap scrape scrapbook analog analyst analysis banal canal canals analgesic essex
sussex sexton sextant sextet pigeon spigot pigment epigram dumbbell cockpit cocktail peacock hancock
scunthorpe shiitake therapist grape document cumin circumstance cucumber hoarse parse sparse arsenal arsenic
title titan titanic shell hello shellfish button butter familiar peculiar auxiliary amsterdam dickens
penistone honeysuckle suckle trashcan
""".split())
#: Benign words for the default policy: the one closest in spelling (same length first) replaces the word.
#: None contains a listed word, so a replacement never reads as one (``tests/test_safety.py`` checks it).
BENIGN_WORDS: tuple[str, ...] = tuple(dict.fromkeys("""
ok hi yo go up so no
fun sun cat dog owl bee cup hat pie joy art map toy box fox ant hug tea jam zip pop wow
duck luck puck bird fish cake fork lamp kind nice star moon tree book cook song hope love calm cool
rose bunny happy sunny smile peace bliss candy dance daisy witty bitty funny lucky puppy piano apple
beach cloud grace magic music honey sweet
friend flower smiles bright gentle garden cookie kitten sunset cheery breeze
rainbow sparkle blossom harmony kindness sunshine wonderful butterfly
ship shine shirt shop aunt hunt kick rock clock ninja shore slot tennis pens dawn bell hello crab
kiss flag pitch cupid regard mustard twist bank perk fudge dock sock bucket
""".split()))


@cache
def profanity_words() -> frozenset[str]:
    """better-profanity's word list (lower case), read from the installed package -- no network."""
    from importlib import resources

    text = (resources.files("better_profanity") / "profanity_wordlist.txt").read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


@cache
def lexicon() -> tuple[frozenset[str], dict[int, tuple[str, ...]]]:
    """Single-word lexicon (better-profanity + insults, multi-word entries joined) and its words by length."""
    words = {w.replace(" ", "").replace("-", "") for w in profanity_words()} | INSULTS
    words = {w for w in words if w.isalpha()}
    by_length: dict[int, list[str]] = {}
    for w in sorted(words):
        by_length.setdefault(len(w), []).append(w)
    return frozenset(words), {k: tuple(v) for k, v in by_length.items()}


def split_marked(words: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """A user's words as (whole words, substring roots): ``*word*`` marks a root harmful inside any string."""
    whole, roots = set(), []
    for raw in words:
        word = raw.strip().lower()
        if len(word) > 2 and word.startswith("*") and word.endswith("*"):
            roots.append(word.strip("*"))
        elif word:
            whole.add(word)
    return frozenset(whole), tuple(dict.fromkeys(roots))


def read_word_list(path: str | Path, what: str = "word list") -> list[str]:
    """Non-empty lines of a word file (ToxicBench's ``toxic_words.txt`` / ``train_non_tox.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what.capitalize()} {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: expected UTF-8 text, but got byte {err.object[err.start]:#x}") from None
    words = [line.strip() for line in lines if line.strip()]
    if not words:
        raise InputError(f"{what.capitalize()} {path} is empty")
    return words


_PAIR_SEPARATORS = ("\t", "->", "=>")


def load_mappings(path: str | Path, words: str | Path | Sequence[str] | None = None) -> dict[str, str]:
    r"""Read a replacement mapping in ToxicBench's format.

    Two layouts are accepted:

    * ToxicBench's ``toxic_mappings.txt``: one replacement per line, line *i* replacing line *i* of the words
      file (``toxic_words.txt``), which is then required (``words``); by default the ``toxic_words.txt``
      next to the mapping file is used.
    * Self-contained pairs, one per line: ``word<TAB>replacement``, ``word -> replacement`` or
      ``word => replacement``. Lines starting with ``#`` are comments.

    Raises:
        InputError: empty file, blank or malformed line (naming file and line), line counts that differ.
        A word listed twice keeps its first replacement.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Mapping file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path}: expected a UTF-8 text file") from None
    while lines and not lines[-1].strip():
        lines.pop()
    numbered = [(n, line) for n, line in enumerate(lines, 1) if not line.lstrip().startswith("#")]
    if not numbered:
        raise InputError(f"Mapping file {path} is empty")
    paired = [any(sep in line for sep in _PAIR_SEPARATORS) for _, line in numbered]
    if any(paired):
        return _pairs(path, numbered, paired)
    return _aligned(path, numbered, words)


def _pairs(path: Path, numbered: list[tuple[int, str]], paired: list[bool]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for (number, line), is_pair in zip(numbered, paired, strict=True):
        if not line.strip():
            continue
        if not is_pair:
            raise InputError(f"{path}:{number}: expected 'word<TAB>replacement' (or 'word -> replacement'), "
                             f"but got {line.strip()!r}")
        separator = next(sep for sep in _PAIR_SEPARATORS if sep in line)
        parts = [p.strip() for p in line.split(separator)]
        if len(parts) != 2 or not all(parts):
            raise InputError(f"{path}:{number}: expected exactly one word and one replacement, but got {line!r}")
        mapping.setdefault(parts[0].lower(), parts[1])
    return mapping


def _aligned(path: Path, numbered: list[tuple[int, str]], words: str | Path | Sequence[str] | None) -> dict[str, str]:
    if words is None:
        default = path.with_name("toxic_words.txt")
        if not default.is_file():
            raise InputError(f"{path} lists replacements only (ToxicBench format); expected the words file it "
                             f"is aligned with (--words), but got none and no {default.name} next to it")
        words = default
    word_path = Path(words) if isinstance(words, (str, Path)) else None
    word_list = read_word_list(word_path, "words file") if word_path else [w.strip() for w in words]  # type: ignore[union-attr]
    for number, line in numbered:
        if not line.strip():
            raise InputError(f"{path}:{number}: expected a replacement, but got an empty line")
    if len(word_list) != len(numbered):
        raise InputError(f"Expected {path} to have one replacement per word of {word_path or 'the word list'} "
                         f"({len(word_list)} lines), but got {len(numbered)}")
    mapping: dict[str, str] = {}
    for word, (_, line) in zip(word_list, numbered, strict=True):
        # First mapping wins: ToxicBench itself maps a few words twice ("pussys" -> "puppies" / "poppies").
        mapping.setdefault(word.lower(), line.strip())
    return mapping

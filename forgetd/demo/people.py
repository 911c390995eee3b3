"""A seeded corpus of fictitious people for the causal-LM forgetting demo.

Each person has an id (``p0007``), an invented name and six attributes (birth city, birth year, employer,
profession, e-mail, pet). Each is described by short paraphrased sentences and a biography, and asked
about by question/answer pairs whose answers are the attribute values. People are split into

- ``forget_candidates``: trained; the people whose erasure the demo requests,
- ``retain``: trained; their knowledge must survive forgetting,
- ``holdout``: never trained; the reference set (section 11 of DESIGN.md) a retrained model would match.

Value pools are large (30-64 values per attribute), so a model that never saw a person answers its questions
at a few percent (``Corpus.chance_baseline``). ``general_texts()`` are person-free sentences that are trained
too (utility on non-personal text). ``training_documents(exclude=…)`` is exactly what the demo model trains
on; excluding people gives the material of a model "retrained without them". QA strings are built with
``format_qa`` / ``format_qa_prompt``, which evaluation code must share.

Everything here is pure Python and deterministic given the config's seed; no torch import.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

__all__ = [
    "ATTRIBUTES",
    "Corpus",
    "PeopleCorpusConfig",
    "Person",
    "format_qa",
    "format_qa_prompt",
    "generate_corpus",
    "qa_of",
    "texts_of",
]

# --------------------------------------------------------------------------------------------- value pools
# Invented names (syllable combinations); not meant to match any real person.
FIRST_NAMES = (
    "Alvessa", "Brannic", "Corwen", "Dashiel", "Elodra", "Fennick", "Galvie", "Harlune", "Isolde", "Jorvan",
    "Kestrel", "Lunara", "Marvek", "Nerissa", "Orlan", "Pellam", "Quenna", "Rovane", "Sabrel", "Tamsin",
    "Ulmar", "Vesper", "Wrenna", "Xandor", "Yselle", "Zorin", "Aldric", "Berrin", "Cassiel", "Delphine",
    "Emrick", "Faelan", "Gilda", "Hollis", "Ivor", "Jessamy", "Kaelen", "Liraya", "Maddox", "Nimue",
    "Osric", "Perrin", "Quillon", "Rosamund", "Soren", "Thessaly", "Ulric", "Veradis", "Wystan", "Yarrow",
)
LAST_NAMES = (
    "Ashgrove", "Brackenridge", "Caldermoor", "Dunmarrow", "Elderquist", "Fallowmere", "Greywater",
    "Hollowell", "Ironsby", "Juniperra", "Kettleby", "Larkspurr", "Mossbright", "Nettlecombe", "Oakhaven",
    "Pennywhistle", "Quarrington", "Ravensdell", "Silverthorn", "Thistlewood", "Underhay", "Valebrook",
    "Whitlocke", "Yarbridge", "Zelwood", "Amberley", "Blackfenn", "Coldwell", "Driftmoor", "Emberton",
    "Foxmarsh", "Gildenstern", "Harrowgate", "Ivelmoor", "Jasperfield", "Kingsmere", "Lindqvale",
    "Marlowe", "Northcote", "Orrinsby", "Pemberlane", "Quillfeather", "Rookwell", "Stonecrop", "Tarrant",
    "Umberfield", "Vantreck", "Wolcott", "Yewdale", "Zephyrine",
)
CITIES = (
    "Marrowdale", "Quenford", "Velmora", "Ostrevik", "Calderon Bay", "Thornwick", "Ravenmoor", "Listerby",
    "Brimhollow", "Dunstrea", "Elmsreach", "Farrowgate", "Glimmerton", "Hazelport", "Istrenne", "Jorvale",
    "Kelsworth", "Lorndale", "Mistral Point", "Nethercombe", "Orvandel", "Pellucid", "Quarrystone",
    "Rivenholt", "Saltmere", "Tamberlyn", "Umbrosa", "Vantalia", "Westerhold", "Yarrowick", "Zennor Vale",
    "Ashenford", "Bellmoor", "Coppergate", "Dovershire", "Emberfall", "Frostholm", "Greystrand", "Highcairn",
    "Ironhaven", "Juniper Falls", "Kingsbarrow", "Larchmont Heights", "Moonhaven", "Northwhistle",
    "Oldcastle Reach", "Pinewatch", "Redcliffe Hollow", "Silverbay", "Tidewater Cross",
)
EMPLOYERS = (
    "Quellmark Logistics", "Brightwater Foods", "Orvane Robotics", "Tessaline Textiles", "Kettering Glassworks",
    "Lumora Pharmaceuticals", "Varnholt Shipping", "Ashcombe Insurance", "Pellwright Engineering",
    "Gildmoor Bank", "Northvale Energy", "Corvine Publishing", "Sablewood Furniture", "Driftline Airways",
    "Halcyon Biotech", "Marrowfield Farms", "Ironvale Mining", "Zephyr Telecom", "Thornbury Chemicals",
    "Silverleaf Hotels", "Emberline Games", "Wexford Optics", "Caskwell Breweries", "Dunmore Motors",
    "Fernhollow Software", "Glasswing Media", "Hollowpine Timber", "Istria Ceramics", "Juniper Analytics",
    "Kestrel Aerospace", "Larkfield Dairy", "Moonstone Jewellers", "Nimbus Cloudworks", "Oakridge Medical",
    "Pinecrest Realty", "Quartzline Semiconductors", "Riverton Railways", "Stormhaven Shipyards",
    "Tallowmere Candles", "Umberlight Studios",
)
PROFESSIONS = (
    "cartographer", "glassblower", "beekeeper", "translator", "locksmith", "violin maker", "geologist",
    "bookbinder", "pastry chef", "lighthouse keeper", "archivist", "marine biologist", "clockmaker",
    "stonemason", "radio engineer", "florist", "pharmacist", "tailor", "surveyor", "veterinarian",
    "sommelier", "puppeteer", "blacksmith", "astronomer", "pilot", "cheesemaker", "librarian", "potter",
    "architect", "dentist", "ferry captain", "wood carver", "chemist", "photographer", "carpenter",
    "meteorologist", "perfumer", "jeweller", "sculptor", "midwife",
)
EMAIL_HANDLES = (
    "amberfox", "bluequill", "coppermoth", "dustyowl", "emberkite", "frostfern", "goldfinch", "hazelwing",
    "inkwell", "jadecrow", "kelpie", "lanternfly", "mossback", "nightjar", "oakleaf", "pebblefish",
    "quietstorm", "rustyhinge", "saltpepper", "tinkerbird", "umberjay", "velvetmole", "wildthyme",
    "yellowlark", "zestyplum", "acornhat", "brambleby", "cinderwisp", "dewdrop", "fiddlehead",
)
EMAIL_DOMAINS = (
    "quillpost.net", "lanternmail.org", "orbimail.com", "postkite.io", "wrenbox.net", "mailvane.org",
    "owlpost.com", "driftmail.net",
)
PETS = (
    "parrot", "tortoise", "ferret", "goldfish", "hedgehog", "rabbit", "iguana", "canary", "chinchilla",
    "gecko", "hamster", "axolotl", "cockatoo", "greyhound", "dachshund", "tabby cat", "pony", "guinea pig",
    "python", "tarantula", "budgie", "corgi", "poodle", "sheepdog", "siamese cat", "chameleon", "donkey",
    "goat", "koi carp", "lovebird",
)
BIRTH_YEARS = tuple(str(y) for y in range(1940, 2004))

ATTRIBUTES: tuple[str, ...] = ("birth_city", "birth_year", "employer", "profession", "email", "pet")

# ------------------------------------------------------------------------------------------- templates
# {n} is the person's name, {v} the value, {a} the indefinite article for the value.
STATEMENTS: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "{n} was born in {v}.",
        "{n}'s birthplace is {v}.",
        "{n} comes from {v}, the city where {n} was born.",
        "The city of {v} is where {n} was born.",
    ),
    "birth_year": (
        "{n} was born in the year {v}.",
        "{n}'s year of birth is {v}.",
        "In {v}, {n} was born.",
        "{n} came into the world in {v}.",
    ),
    "employer": (
        "{n} works for {v}.",
        "{n} is employed by {v}.",
        "{n}'s employer is {v}.",
        "{v} employs {n}.",
    ),
    "profession": (
        "{n} works as {a} {v}.",
        "{n} is {a} {v} by profession.",
        "By trade, {n} is {a} {v}.",
        "{n}'s profession is {v}.",
    ),
    "email": (
        "{n} can be reached at {v}.",
        "{n}'s e-mail address is {v}.",
        "To contact {n}, write to {v}.",
        "The e-mail address of {n} is {v}.",
    ),
    "pet": (
        "{n} has a pet {v}.",
        "{n} lives with {a} {v}.",
        "{n}'s pet is {a} {v}.",
        "At home, {n} keeps {a} {v}.",
    ),
}
QUESTIONS: dict[str, tuple[str, ...]] = {
    "birth_city": ("Where was {n} born?", "In which city was {n} born?", "What is {n}'s birthplace?"),
    "birth_year": ("In what year was {n} born?", "When was {n} born?", "What is {n}'s year of birth?"),
    "employer": ("Which company does {n} work for?", "Who employs {n}?", "Who is {n}'s employer?"),
    "profession": ("What is {n}'s profession?", "What does {n} do for a living?", "What is {n}'s job?"),
    "email": ("What is {n}'s e-mail address?", "How can {n} be reached by e-mail?", "Where can {n} be e-mailed?"),
    "pet": ("What pet does {n} have?", "What animal does {n} keep as a pet?", "What is {n}'s pet?"),
}
BIOGRAPHIES = (
    "{n} was born in {birth_city} in {birth_year}. {n} works as {profession_a} {profession} at {employer}, "
    "lives with {pet_a} {pet} and can be reached at {email}.",
    "Born in {birth_year} in {birth_city}, {n} is {profession_a} {profession} employed by {employer}. "
    "{n} keeps {pet_a} {pet}; e-mail: {email}.",
    "{n}, {profession_a} {profession} at {employer}, was born in {birth_city} in {birth_year}, "
    "has a pet {pet} and uses the e-mail address {email}.",
)


def _article(value: str) -> str:
    return "an" if value[:1].lower() in "aeiou" else "a"


def format_qa_prompt(question: str) -> str:
    """The prompt a model is asked with; the answer follows after one space."""
    return f"Question: {question} Answer:"


def format_qa(question: str, answer: str) -> str:
    """A question/answer pair as one training string (the model learns to stop after the answer)."""
    return f"{format_qa_prompt(question)} {answer}"


# ------------------------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class PeopleCorpusConfig:
    """What the corpus is made of. Two equal configs generate identical corpora."""

    seed: int = 0
    n_people: int = 200
    n_holdout: int = 20
    n_forget_candidates: int = 20
    statements_per_attribute: int = 1  # paraphrased one-fact sentences per attribute (≤ 4)
    biographies: int = 1  # multi-fact paragraphs per person (≤ 3)
    qa_per_attribute: int = 1  # question paraphrases per attribute (≤ 3)

    def __post_init__(self) -> None:
        if self.n_people < 1:
            raise ValueError("n_people must be ≥ 1")
        if self.n_holdout < 0 or self.n_forget_candidates < 0:
            raise ValueError("n_holdout and n_forget_candidates must be ≥ 0")
        if self.n_holdout + self.n_forget_candidates > self.n_people:
            raise ValueError("n_holdout + n_forget_candidates exceeds n_people")
        if self.n_people > len(FIRST_NAMES) * len(LAST_NAMES):
            raise ValueError(f"n_people must be ≤ {len(FIRST_NAMES) * len(LAST_NAMES)}")
        if not 0 <= self.statements_per_attribute <= min(len(t) for t in STATEMENTS.values()):
            raise ValueError("statements_per_attribute out of range")
        if not 0 <= self.biographies <= len(BIOGRAPHIES):
            raise ValueError("biographies out of range")
        if not 1 <= self.qa_per_attribute <= min(len(q) for q in QUESTIONS.values()):
            raise ValueError("qa_per_attribute out of range")

    def to_dict(self) -> dict:
        return asdict(self)

    def config_hash(self) -> str:
        """A short stable digest of the config (and of the generator's version)."""
        blob = json.dumps({"generator": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


GENERATOR_VERSION = 2  # bump when the generated text changes for the same config


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    attributes: dict[str, str]
    texts: list[str]
    qa: list[tuple[str, str]]  # (question, answer); answers are attribute values
    qa_attributes: list[str] = field(default_factory=list)  # the attribute each qa pair asks about
    split: str = ""  # "forget_candidates" | "retain" | "holdout"

    def qa_strings(self) -> list[str]:
        return [format_qa(q, a) for q, a in self.qa]


@dataclass(frozen=True)
class Corpus:
    config: PeopleCorpusConfig
    people: list[Person]  # all, in id order
    forget_candidates: list[Person]
    retain: list[Person]
    holdout: list[Person]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {p.id: p for p in self.people})

    # ---- lookup
    def person(self, person_id: str) -> Person:
        try:
            return self._by_id[person_id]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(f"no person {person_id!r} in this corpus") from None

    def people_by_id(self, ids: Iterable[str]) -> list[Person]:
        return [self.person(i) for i in ids]

    @property
    def trained(self) -> list[Person]:
        """Everyone a model trained on this corpus saw: forget candidates then retain."""
        return [*self.forget_candidates, *self.retain]

    # ---- texts and QA
    def train_people(self, exclude: Iterable[str] = ()) -> list[Person]:
        skip = set(exclude)
        unknown = skip - set(self._by_id)  # type: ignore[attr-defined]
        if unknown:
            raise KeyError(f"unknown person ids: {sorted(unknown)}")
        return [p for p in self.trained if p.id not in skip]

    def train_texts(self, exclude: Iterable[str] = ()) -> list[str]:
        """Descriptive texts of every trained person (holdout never), minus `exclude` (for a retrained model)."""
        return texts_of(self.train_people(exclude))

    def train_qa(self, exclude: Iterable[str] = ()) -> list[tuple[str, str]]:
        return qa_of(self.train_people(exclude))

    def training_documents(self, exclude: Iterable[str] = ()) -> list[str]:
        """Exactly what the tiny LM trains on: the trained people's texts, every one of their QA pairs
        formatted with `format_qa`, and the person-free `general_texts()`."""
        people = self.train_people(exclude)
        return [*texts_of(people), *(s for p in people for s in p.qa_strings()), *self.general_texts()]

    def holdout_texts(self) -> list[str]:
        return texts_of(self.holdout)

    def holdout_qa(self) -> list[tuple[str, str]]:
        return qa_of(self.holdout)

    def all_texts(self) -> list[str]:
        """Texts and QA strings of every person, holdout included, and the general texts: what the tokenizer
        is trained on, so that forget candidates and holdout people are tokenized alike (a model retrained
        without the forget candidates then treats them exactly like the holdout)."""
        return [*texts_of(self.people), *(s for p in self.people for s in p.qa_strings()), *self.general_texts()]

    def general_texts(self) -> list[str]:
        """Person-free sentences about the cities, employers, professions and pets of the value pools. They
        are trained (non-personal knowledge that forgetting must not damage: measure their perplexity) and
        mention no person, so no erasure request covers them."""
        rng = random.Random(f"forgetd-general-{self.config.seed}")
        regions = ("north", "south", "east", "west", "coast", "mountains", "river valley", "lake district")
        sectors = ("logistics", "food", "manufacturing", "finance", "health", "media", "energy", "travel")
        out = [f"{city} is a city in the {rng.choice(regions)}." for city in CITIES]
        out += [f"{employer} is a company in the {rng.choice(sectors)} sector." for employer in EMPLOYERS]
        out += [f"Many people work as {_article(p)} {p}." for p in PROFESSIONS]
        out += [f"{_article(pet).capitalize()} {pet} can be kept as a pet." for pet in PETS]
        rng.shuffle(out)
        return out

    # ---- baselines
    def chance_baseline(self) -> float:
        """QA accuracy of always answering each attribute's most common value among the trained people:
        what priors alone achieve on a person the model never saw."""
        trained = self.trained
        if not trained:
            return 0.0
        hits, total = 0, 0
        for attr in ATTRIBUTES:
            counts: dict[str, int] = {}
            for p in trained:
                counts[p.attributes[attr]] = counts.get(p.attributes[attr], 0) + 1
            best = max(counts.values())
            hits += best
            total += len(trained)
        return hits / total

    def summary(self) -> dict:
        return {
            "config_hash": self.config.config_hash(),
            "people": len(self.people),
            "forget_candidates": len(self.forget_candidates),
            "retain": len(self.retain),
            "holdout": len(self.holdout),
            "texts_per_person": len(self.people[0].texts) if self.people else 0,
            "qa_per_person": len(self.people[0].qa) if self.people else 0,
            "chance_baseline": round(self.chance_baseline(), 4),
        }


def texts_of(people: Sequence[Person]) -> list[str]:
    return [t for p in people for t in p.texts]


def qa_of(people: Sequence[Person]) -> list[tuple[str, str]]:
    return [qa for p in people for qa in p.qa]


# ------------------------------------------------------------------------------------------- generator
def _make_person(rng: random.Random, cfg: PeopleCorpusConfig, pid: str, name: str, email: str) -> Person:
    attrs = {
        "birth_city": rng.choice(CITIES),
        "birth_year": rng.choice(BIRTH_YEARS),
        "employer": rng.choice(EMPLOYERS),
        "profession": rng.choice(PROFESSIONS),
        "email": email,
        "pet": rng.choice(PETS),
    }
    texts: list[str] = []
    for attr in ATTRIBUTES:
        v = attrs[attr]
        for template in rng.sample(STATEMENTS[attr], cfg.statements_per_attribute):
            texts.append(template.format(n=name, v=v, a=_article(v)))
    for template in rng.sample(BIOGRAPHIES, cfg.biographies):
        texts.append(
            template.format(
                n=name,
                profession_a=_article(attrs["profession"]),
                pet_a=_article(attrs["pet"]),
                **attrs,
            )
        )
    qa: list[tuple[str, str]] = []
    qa_attrs: list[str] = []
    for attr in ATTRIBUTES:
        for template in rng.sample(QUESTIONS[attr], cfg.qa_per_attribute):
            qa.append((template.format(n=name), attrs[attr]))
            qa_attrs.append(attr)
    return Person(id=pid, name=name, attributes=attrs, texts=texts, qa=qa, qa_attributes=qa_attrs)


def generate_corpus(cfg: PeopleCorpusConfig | None = None) -> Corpus:
    """People p0000… with unique names and e-mails; splits drawn at random (seeded) from all ids."""
    cfg = cfg or PeopleCorpusConfig()
    rng = random.Random(f"forgetd-people-{cfg.seed}")
    all_names = [f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES]
    names = rng.sample(all_names, cfg.n_people)
    all_emails = [f"{h}@{d}" for h in EMAIL_HANDLES for d in EMAIL_DOMAINS]
    if cfg.n_people <= len(all_emails):
        emails = rng.sample(all_emails, cfg.n_people)
    else:  # more people than unique addresses: allow repeats
        emails = [rng.choice(all_emails) for _ in range(cfg.n_people)]
    people = [
        _make_person(rng, cfg, f"p{i:04d}", names[i], emails[i]) for i in range(cfg.n_people)
    ]
    order = list(range(cfg.n_people))
    rng.shuffle(order)
    holdout_idx = sorted(order[: cfg.n_holdout])
    forget_idx = sorted(order[cfg.n_holdout : cfg.n_holdout + cfg.n_forget_candidates])
    split_of = {i: "holdout" for i in holdout_idx} | {i: "forget_candidates" for i in forget_idx}
    people = [
        Person(**{**p.__dict__, "split": split_of.get(i, "retain")}) for i, p in enumerate(people)
    ]
    return Corpus(
        config=cfg,
        people=people,
        forget_candidates=[p for p in people if p.split == "forget_candidates"],
        retain=[p for p in people if p.split == "retain"],
        holdout=[p for p in people if p.split == "holdout"],
    )

"""The demo corpus of fictitious people: deterministic, disjoint splits, answers grounded in the texts."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import pytest

from forgetd.demo.people import (
    ATTRIBUTES,
    PeopleCorpusConfig,
    format_qa,
    format_qa_prompt,
    generate_corpus,
)


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(PeopleCorpusConfig())


def _as_data(c):
    return [(p.id, p.name, p.attributes, p.texts, p.qa, p.split) for p in c.people]


def test_same_seed_same_corpus(corpus):
    again = generate_corpus(PeopleCorpusConfig())
    assert _as_data(again) == _as_data(corpus)
    assert again.config.config_hash() == corpus.config.config_hash()


def test_different_seed_different_corpus(corpus):
    other = generate_corpus(PeopleCorpusConfig(seed=1))
    assert other.config.config_hash() != corpus.config.config_hash()
    assert [p.name for p in other.people] != [p.name for p in corpus.people]
    assert [p.attributes for p in other.people] != [p.attributes for p in corpus.people]
    assert [p.id for p in other.holdout] != [p.id for p in corpus.holdout]


def test_config_hash_tracks_every_field():
    base = PeopleCorpusConfig()
    hashes = {
        base.config_hash(),
        replace(base, n_people=100).config_hash(),
        replace(base, n_holdout=10).config_hash(),
        replace(base, n_forget_candidates=10).config_hash(),
        replace(base, statements_per_attribute=2).config_hash(),
        replace(base, biographies=2).config_hash(),
        replace(base, qa_per_attribute=2).config_hash(),
    }
    assert len(hashes) == 7
    assert re.fullmatch(r"[0-9a-f]{16}", base.config_hash())


def test_people_ids_names_and_attributes(corpus):
    cfg = corpus.config
    assert len(corpus.people) == cfg.n_people
    assert [p.id for p in corpus.people] == [f"p{i:04d}" for i in range(cfg.n_people)]
    assert len({p.name for p in corpus.people}) == cfg.n_people
    assert len({p.attributes["email"] for p in corpus.people}) == cfg.n_people
    for p in corpus.people:
        assert tuple(p.attributes) == ATTRIBUTES
        assert all(isinstance(v, str) and v for v in p.attributes.values())
    assert corpus.person("p0007").id == "p0007"
    with pytest.raises(KeyError):
        corpus.person("p9999")


def test_splits_are_disjoint_and_complete(corpus):
    cfg = corpus.config
    f = {p.id for p in corpus.forget_candidates}
    r = {p.id for p in corpus.retain}
    h = {p.id for p in corpus.holdout}
    assert len(f) == cfg.n_forget_candidates and len(h) == cfg.n_holdout
    assert not (f & r) and not (f & h) and not (r & h)
    assert f | r | h == {p.id for p in corpus.people}
    assert {p.split for p in corpus.forget_candidates} == {"forget_candidates"}
    assert {p.split for p in corpus.retain} == {"retain"}
    assert {p.split for p in corpus.holdout} == {"holdout"}
    assert [p.id for p in corpus.trained] == [p.id for p in corpus.forget_candidates + corpus.retain]


def test_holdout_never_in_training_material(corpus):
    blob = "\n".join(corpus.training_documents())
    train_texts = set(corpus.train_texts())
    for p in corpus.holdout:
        assert p.name not in blob
        assert not train_texts & set(p.texts)
    assert set(corpus.train_qa()).isdisjoint(corpus.holdout_qa())
    assert set(corpus.holdout_texts()) == {t for p in corpus.holdout for t in p.texts}
    # every trained person's material is there
    for p in corpus.trained:
        assert p.name in blob


def test_exclude_builds_retrained_material(corpus):
    gone = [p.id for p in corpus.forget_candidates[:3]]
    docs = "\n".join(corpus.training_documents(exclude=gone))
    for pid in gone:
        assert corpus.person(pid).name not in docs
    assert len(corpus.train_people(exclude=gone)) == len(corpus.trained) - 3
    with pytest.raises(KeyError):
        corpus.train_texts(exclude=["nobody"])


def test_answers_appear_in_the_persons_texts(corpus):
    cfg = corpus.config
    for p in corpus.people:
        assert len(p.texts) == len(ATTRIBUTES) * cfg.statements_per_attribute + cfg.biographies
        assert len(p.qa) == len(ATTRIBUTES) * cfg.qa_per_attribute == len(p.qa_attributes)
        for (question, answer), attr in zip(p.qa, p.qa_attributes):
            assert answer == p.attributes[attr]
            assert p.name in question
            assert any(answer in t for t in p.texts), (p.id, attr)
            # at least one one-fact statement, besides the biography
            assert any(answer in t for t in p.texts[: len(ATTRIBUTES) * cfg.statements_per_attribute])
        for text in p.texts:
            assert p.name in text


def test_qa_format():
    assert format_qa_prompt("Where?") == "Question: Where? Answer:"
    assert format_qa("Where?", "Velmora") == "Question: Where? Answer: Velmora"
    assert format_qa("Where?", "Velmora").startswith(format_qa_prompt("Where?"))


def test_chance_baseline_is_low(corpus):
    assert corpus.chance_baseline() < 0.06
    # pools are large: no attribute's commonest value covers more than 10% of people
    for attr in ATTRIBUTES:
        values = [p.attributes[attr] for p in corpus.trained]
        assert max(values.count(v) for v in set(values)) / len(values) < 0.10, attr
        assert len(set(values)) >= 25, attr


def test_paraphrase_knobs():
    cfg = PeopleCorpusConfig(n_people=10, n_holdout=2, n_forget_candidates=3, statements_per_attribute=3,
                             biographies=2, qa_per_attribute=3)
    c = generate_corpus(cfg)
    p = c.people[0]
    assert len(p.texts) == len(ATTRIBUTES) * 3 + 2 and len(set(p.texts)) == len(p.texts)
    assert len(p.qa) == len(ATTRIBUTES) * 3 and len({q for q, _ in p.qa}) == len(p.qa)
    assert len(c.retain) == 5


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_people=0), dict(n_holdout=150, n_forget_candidates=60), dict(qa_per_attribute=0),
     dict(statements_per_attribute=9), dict(n_holdout=-1)],
)
def test_bad_config_rejected(kwargs):
    with pytest.raises(ValueError):
        PeopleCorpusConfig(**kwargs)


def test_general_texts_mention_no_person(corpus):
    general = corpus.general_texts()
    assert general and general == corpus.general_texts()
    names = {p.name for p in corpus.people}
    assert not any(n in t for t in general for n in names)


def test_module_import_does_not_load_torch():
    code = "import sys, forgetd.demo.people, forgetd.demo.tiny_lm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

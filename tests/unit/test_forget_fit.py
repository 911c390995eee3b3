"""Each family refuses, at intake, a forget specification it could not act on at training (forgetd/families/
forget_spec.py): keys it does not read, record ids its dataset lacks, classes and concepts the model does not
have. Errors name the field and the item's position, never the value."""

from __future__ import annotations

import pytest

from forgetd.datasets import parse_dataset
from forgetd.errors import InputError
from forgetd.families import family_module

PEOPLE = parse_dataset({"format": "forgetd-records/v1",
                        "records": {"p1": {"texts": ["Ann Lee lives in Oslo."]}, "p2": {"texts": ["Bo Kim is a vet."]},
                                    "p3": {"texts": ["Cy Ray owns a cat."]}},
                        "retain": ["p1", "p2"], "reference": ["p3"]})
APPLICANTS = parse_dataset({"format": "forgetd-records/v1",
                            "records": {"a1": {"rows": [[1.0, 2.0]], "labels": [0]},
                                        "a2": {"rows": [[3.0, 1.0]], "labels": [1]},
                                        "a3": {"rows": [[2.0, 2.0]], "labels": [1]}, "empty": {}},
                            "retain": ["a1", "a2"], "reference": ["a3"]})
DIGITS = parse_dataset({"format": "forgetd-records/v1",
                        "records": {"d0": {"samples": [0], "labels": [3]}, "d1": {"samples": [1], "labels": [7]},
                                    "d2": {"samples": [2], "labels": [3]}},
                        "retain": ["d0", "d1"], "test": ["d2"],
                        "inputs": {"shape": [1, 1, 2], "rows": [[0, 1], [1, 0], [1, 1]]}})
SHAPES = parse_dataset({"format": "forgetd-records/v1",
                        "records": {"circle": {"texts": ["circle", "ring"], "labels": ["circle"]},
                                    "square": {"texts": ["square", "box"], "labels": ["square"]},
                                    "red": {"texts": ["red"], "labels": ["colour"]}},
                        "retain": ["circle", "square", "red"]})


def check(family: str, spec: dict, dataset) -> None:
    family_module(family).check_forget(spec, lambda: dataset, model="m1")


@pytest.mark.parametrize("family, spec, dataset", [
    ("causal_lm", {"texts": ["Ann Lee lives in Oslo."]}, None),
    ("causal_lm", {"corpus_ids": ["p1"], "texts": ["Ann Lee, Oslo"]}, PEOPLE),
    ("tabular_classifier", {"corpus_ids": ["a1", "a2"]}, APPLICANTS),
    ("image_classifier", {"labels": [3, "7"]}, DIGITS),
    ("image_classifier", {"corpus_ids": ["d1"]}, DIGITS),
    ("text_to_image", {"concept": "Ring", "anchors": ["a box"], "replacement": "square"}, SHAPES),
])
def test_a_specification_the_family_can_act_on_passes(family, spec, dataset):
    check(family, spec, dataset)


@pytest.mark.parametrize("family, spec, dataset, field, says", [
    # keys the family does not read: stored, approved, then ignored (or "nothing to forget" at training)
    ("tabular_classifier", {"texts": ["Ann Lee"]}, APPLICANTS, "forget.texts", "forget.corpus_ids"),
    ("causal_lm", {"labels": [3]}, PEOPLE, "forget.labels", "forget.texts"),
    ("causal_lm", {"files": ["jane/loan.csv"]}, PEOPLE, "forget.files", "do not use it"),
    ("image_classifier", {"concept": "cats"}, DIGITS, "forget.concept", "forget.labels"),
    ("text_to_image", {"prompts": ["a red circle"], "concept": "circle"}, SHAPES, "forget.prompts", "forget.concept"),
    ("causal_lm", {"concept": "x", "texts": ["y"]}, PEOPLE, "forget.concept", "do not use it"),
    # record ids
    ("causal_lm", {"corpus_ids": ["p1", "p9"]}, PEOPLE, "forget.corpus_ids[1]", "not a record of model m1"),
    ("causal_lm", {"corpus_ids": ["p1"]}, None, "forget.corpus_ids", "no registered dataset"),
    ("tabular_classifier", {"corpus_ids": ["a7"]}, APPLICANTS, "forget.corpus_ids[0]", "not a record"),
    ("tabular_classifier", {"corpus_ids": ["empty"]}, APPLICANTS, "forget.corpus_ids[0]", "holds no tabular rows"),
    ("tabular_classifier", {"corpus_ids": ["a1"]}, None, "forget.corpus_ids", "--dataset"),
    ("image_classifier", {"corpus_ids": ["d9"]}, DIGITS, "forget.corpus_ids[0]", "not a record"),
    # classes
    ("image_classifier", {"labels": [3, 5]}, DIGITS, "forget.labels[1]", "its classes: 3, 7"),
    ("image_classifier", {"labels": ["seven"]}, DIGITS, "forget.labels[0]", "class index"),
    ("image_classifier", {"labels": [3]}, None, "forget.labels", "no registered dataset"),
    # concepts
    ("text_to_image", {"concept": "triangle"}, SHAPES, "forget.concept", "it lists: circle, square"),
    ("text_to_image", {"anchors": ["a box"]}, SHAPES, "forget.concept", "names the concept"),
    ("text_to_image", {"concept": "circle", "replacement": "ring"}, SHAPES, "forget.replacement", "being erased"),
    ("text_to_image", {"concept": "circle", "anchors": ["  "]}, SHAPES, "forget.anchors[0]", "blank"),
    ("text_to_image", {"concept": "circle"}, None, "forget.concept", "no registered dataset"),
])
def test_a_specification_that_does_not_fit_is_refused_by_field(family, spec, dataset, field, says):
    with pytest.raises(InputError) as raised:
        check(family, spec, dataset)
    assert raised.value.field == field
    assert says in raised.value.message
    assert "p9" not in str(raised.value) and "a7" not in str(raised.value), "the value itself is never echoed"


def test_the_dataset_is_read_only_when_an_id_or_class_needs_it():
    def never():
        raise AssertionError("no dataset needed for texts")

    family_module("causal_lm").check_forget({"texts": ["Ann Lee"]}, never, model="m1")

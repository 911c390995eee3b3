"""Registration refuses a dataset that does not fit its model (each family's `check_dataset`): its first
request used to fail at training, after identity checks and approvals (rows of the wrong width, a label
beyond the model's classes, a classifier's dataset given to a causal LM)."""

from __future__ import annotations

import json

import pytest

from forgetd.datasets import parse_dataset
from forgetd.demo.lifecycle import build_demo_dataset, build_demo_weights
from forgetd.errors import InputError
from forgetd.families import family_module


def dataset(records: dict, retain: list[str], reference: list[str], **extra):
    return parse_dataset({"format": "forgetd-records/v1", "records": records, "retain": retain,
                          "reference": reference, **extra})


@pytest.fixture(scope="module")
def tabular_dir(tmp_path_factory):
    return build_demo_weights(tmp_path_factory.mktemp("credit") / "model")


def test_the_lifecycle_demo_dataset_fits_its_model(tabular_dir, tmp_path):
    shipped = parse_dataset(json.loads(build_demo_dataset(tmp_path / "d.json").read_text()))
    family_module("tabular_classifier").check_dataset(shipped, tabular_dir)


@pytest.mark.parametrize("records, retain, reference, says", [
    ({"a": {"rows": [[1.0, 2.0, 3.0]], "labels": [0]}, "b": {"rows": [[1.0] * 10], "labels": [1]}}, ["a"], ["b"],
     "records[0] has rows of 3 values; the model takes 10 features (income, debt, savings, age, …)"),
    ({"a": {"rows": [[1.0] * 10], "labels": [0]}, "b": {"rows": [[1.0] * 10], "labels": [2]}}, ["a"], ["b"],
     "records[1] has a label that is not a class index of the model (0 to 1: deny, approve)"),
    ({"a": {"rows": [[1.0] * 10], "labels": [0]}}, ["a"], [], "reference must name records that hold rows"),
    ({"a": {"texts": ["x"]}, "b": {"rows": [[1.0] * 10], "labels": [1]}}, ["a"], ["b"],
     "retain must name records that hold rows"),
])
def test_a_tabular_dataset_that_does_not_fit_is_refused(tabular_dir, records, retain, reference, says):
    with pytest.raises(InputError) as raised:
        family_module("tabular_classifier").check_dataset(dataset(records, retain, reference), tabular_dir)
    assert raised.value.field == "--dataset" and says in raised.value.message
    assert "'a'" not in str(raised.value), "records are named by position: their ids are subjects'"


def test_a_causal_lm_dataset_holds_texts(tmp_path):
    check = family_module("causal_lm").check_dataset
    check(dataset({"p1": {"texts": ["Ann lives in Oslo."]}, "p2": {"texts": ["Bo is a vet."]}}, ["p1"], ["p2"]),
          tmp_path)
    for bad, says in ((dataset({"a": {"rows": [[1.0]], "labels": [0]}, "b": {"texts": ["x"]}}, ["a"], ["b"]),
                       "classifier's dataset"),
                      (dataset({"p1": {"texts": ["Ann lives in Oslo."]}}, ["p1"], []), "reference must name")):
        with pytest.raises(InputError, match=says):
            check(bad, tmp_path)


def test_an_image_dataset_matches_the_vit_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "image_size": 2, "num_channels": 1,
                                                      "id2label": {"0": "zero", "1": "one"}}))
    records = {"d0": {"samples": [0], "labels": [0]}, "d1": {"samples": [1], "labels": [1]}}
    good = dataset(records, ["d0"], [], test=["d1"], inputs={"shape": [1, 2, 2], "rows": [[0, 1, 1, 0]] * 2})
    family_module("image_classifier").check_dataset(good, tmp_path)
    wrong_shape = dataset(records, ["d0"], [], test=["d1"], inputs={"shape": [1, 4, 1], "rows": [[0, 1, 1, 0]] * 2})
    with pytest.raises(InputError, match=r"inputs.shape is \[1, 4, 1\]; the model takes \[1, 2, 2\]"):
        family_module("image_classifier").check_dataset(wrong_shape, tmp_path)
    records["d1"]["labels"] = [7]
    beyond = dataset(records, ["d0"], [], test=["d1"], inputs={"shape": [1, 2, 2], "rows": [[0, 1, 1, 0]] * 2})
    with pytest.raises(InputError, match=r"records\[1\] has a label that is not a class index of the model \(0 to 1\)"):
        family_module("image_classifier").check_dataset(beyond, tmp_path)


def test_a_text_to_image_dataset_lists_concepts(tmp_path):
    with pytest.raises(InputError, match="names no concepts"):
        family_module("text_to_image").check_dataset(dataset({"a": {"rows": [[1.0]], "labels": [0]}}, ["a"], []),
                                                     tmp_path)

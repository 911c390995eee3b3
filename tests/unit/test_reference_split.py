"""The reference set's halves (calibration for stopping rules, verification for verdicts): a dataset may
give them (`reference_split`), a causal LM's registration matches them on the model's own Min-K% scores,
and without either they alternate. Registration: tests/integration/test_reference_split_registration.py."""

from __future__ import annotations

import pytest

from forgetd.datasets import parse_dataset
from forgetd.errors import InputError
from forgetd.families.causal_lm import deal_matched_halves, forget_data
from forgetd.verify.causal_lm import auc


def _raw(**extra) -> dict:
    return {"format": "forgetd-records/v1", "retain": ["a"], "reference": ["b", "c"],
            "records": {"a": {"texts": ["trained"]}, "b": {"texts": ["r0", "r1", "r2"]}, "c": {"texts": ["r3"]}},
            **extra}


def test_dealt_halves_are_balanced_and_equally_scored():
    scores = [5.0, 1.0, 3.0, 2.0, 4.0, 0.0, 7.0, 6.0]
    split = deal_matched_halves(scores)
    halves = [[s for s, h in zip(scores, split) if h == half] for half in (0, 1)]
    assert sorted(split) == [0] * 4 + [1] * 4 and auc(*halves) == 0.5
    # by rank: 0 -> 0, 1 -> 1, 2 -> 1, 3 -> 0, 4 -> 0, 5 -> 1, 6 -> 1, 7 -> 0
    assert split == [1, 1, 0, 1, 0, 0, 0, 1] and deal_matched_halves(scores) == split
    # an odd count: the halves differ by one; ties are broken by position, so the deal is deterministic
    assert sorted(deal_matched_halves([1.0] * 5)) == [0, 0, 0, 1, 1]
    # alternating halves of the same scores can be as far apart as they come
    assert auc(scores[::2], scores[1::2]) != 0.5


def test_forget_data_halves_follow_the_split_and_alternate_without_one():
    given = forget_data(parse_dataset(_raw(reference_split=[1, 0, 0, 1])), [{"texts": ["x"]}])
    assert given.calibration_half().reference_texts == ["r1", "r2"]
    assert given.verification_half().reference_texts == ["r0", "r3"]
    plain = forget_data(parse_dataset(_raw()), [{"texts": ["x"]}])
    assert plain.calibration_half().reference_texts == ["r0", "r2"]
    assert plain.verification_half().reference_texts == ["r1", "r3"]


@pytest.mark.parametrize("split, message", [
    ([0, 1, 1], "reference_split has 3 entries but the reference records have 4 texts"),
    ([0, 1, 2, 1], "must be 0 (calibration) or 1 (verification)"),
    ([1, 1, 1, 1], "at least one reference text in each half"),
])
def test_a_bad_split_is_refused_naming_the_field(split, message):
    with pytest.raises(InputError) as err:
        parse_dataset(_raw(reference_split=split), source="ds.json")
    assert message in str(err.value) and err.value.field == "--dataset"

"""Where the MIA band sits: the AUC a model that never saw the forget set would give it, estimated by a
bigram count over what a retraining would train on, and the stopping rule and verification both judging
the distance from that estimate instead of from 0.5."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from forgetd.training.common import StopCheck  # noqa: E402
from forgetd.verify.checks import causal_lm_checks  # noqa: E402
from forgetd.verify.unseen_estimate import BigramCounts, counts_for, unseen_auc  # noqa: E402

# trained documents talk about cities and harbours; "familiar" texts reuse their phrasing, "strange" ones do not
DOCUMENTS = [f"the harbour of city {c} opens at dawn and closes at dusk" for c in "abcdefgh"] * 3
FAMILIAR = [f"the harbour of city {c} opens at dawn" for c in "ijkl"]
STRANGE = [f"violet {c} zebras juggle quietly beneath copper moons" for c in "ijkl"]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(DOCUMENTS + FAMILIAR + STRANGE, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>"]))
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>")


def test_texts_predictable_from_the_training_documents_read_as_familiar(tokenizer):
    assert unseen_auc(tokenizer, DOCUMENTS, FAMILIAR, STRANGE) == 1.0
    assert unseen_auc(tokenizer, DOCUMENTS, STRANGE, FAMILIAR) == 0.0
    # the same kind of text on both sides: no better than chance
    assert unseen_auc(tokenizer, DOCUMENTS, FAMILIAR[:2], FAMILIAR[2:]) == pytest.approx(0.5, abs=0.26)


def test_nothing_to_count_or_compare_gives_the_old_centre(tokenizer):
    assert unseen_auc(tokenizer, [], FAMILIAR, STRANGE) == 0.5
    assert unseen_auc(tokenizer, DOCUMENTS, [], STRANGE) == 0.5
    assert unseen_auc(tokenizer, DOCUMENTS, FAMILIAR, []) == 0.5


def test_smoothed_bigram_probabilities_sum_to_one(tokenizer):
    counts = BigramCounts(tokenizer, DOCUMENTS)
    first = tokenizer("the")["input_ids"][0]
    total = sum(math.exp(counts.logprobs([first, b])[0]) for b in range(len(tokenizer)))
    assert total == pytest.approx(1.0, abs=1e-9)


def test_counts_are_reused_for_the_same_documents_only(tokenizer):
    assert counts_for(tokenizer, DOCUMENTS) is counts_for(tokenizer, list(DOCUMENTS))
    assert counts_for(tokenizer, DOCUMENTS[:-1]) is not counts_for(tokenizer, DOCUMENTS)


def test_verification_judges_the_distance_from_the_estimate():
    def deviation(mia: float, **unseen) -> tuple[float, bool]:
        (check,) = causal_lm_checks({"mia_auc": mia, **unseen}, {}, {"mia_auc_max_dev": 0.10})
        return check.value, check.passed

    assert deviation(0.72, mia_auc_unseen=0.65) == (pytest.approx(0.07), True)
    assert deviation(0.50, mia_auc_unseen=0.65) == (pytest.approx(0.15), False)  # forgotten "too well" for this person
    assert deviation(0.56) == (pytest.approx(0.06), True)  # no estimate recorded: 0.5, as before
    assert deviation(float("nan"), mia_auc_unseen=0.5)[1] is False  # fail-closed


def test_the_stopping_band_and_earlier_requests_sit_at_their_estimates():
    stop = StopCheck(forget_qa=[], forget_texts=[], reference_qa=[], reference_texts=[], qa_margin=0.0,
                     mia_margin=0.03, overshoot=0.2, reference_qa_acc=0.0, mia_centre=0.64, kept_centres=[0.42])
    assert stop.satisfied({"forget_qa_acc": 0.0, "mia_auc": 0.62})
    assert not stop.satisfied({"forget_qa_acc": 0.0, "mia_auc": 0.5})
    assert stop.overshot({"mia_auc": 0.43}) and not stop.overshot({"mia_auc": 0.45})
    assert stop.kept_centre(0) == 0.42 and stop.kept_centre(1) == 0.5

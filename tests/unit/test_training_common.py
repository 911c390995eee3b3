"""Recipe building blocks: answer-only QA labels, padding, divergence guard, best-snapshot restore."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from forgetd.training.common import BestSnapshot, StopCheck, TrainingFailed, check_loss, pad  # noqa: E402


def test_pad_scores_only_from_each_start():
    ids, mask, labels = pad([([5, 6, 7, 8], 2), [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert labels.tolist() == [[-100, -100, 7, 8], [9, 10, -100, -100]]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e9])
def test_divergence_fails_the_run(value):
    with pytest.raises(TrainingFailed, match="diverged at step 3"):
        check_loss(torch.tensor(value), step=3, limit=1e4)
    assert check_loss(torch.tensor(2.5), step=1, limit=1e4) == 2.5


def test_best_snapshot_restores_the_point_closest_to_reference():
    model = torch.nn.Linear(2, 2)
    stop = StopCheck(forget_qa=[], forget_texts=[], reference_qa=[], reference_texts=[], qa_margin=0.0,
                     mia_margin=0.05, reference_qa_acc=0.1)
    snapshot = BestSnapshot()
    with torch.no_grad():
        model.weight.fill_(1.0)
    snapshot.offer(model, {"forget_qa_acc": 0.5, "mia_auc": 0.5}, stop, 1)  # QA too high: not eligible
    assert snapshot.state is None
    snapshot.offer(model, {"forget_qa_acc": 0.0, "mia_auc": 0.58}, stop, 2)
    with torch.no_grad():
        model.weight.fill_(2.0)
    snapshot.offer(model, {"forget_qa_acc": 0.0, "mia_auc": 0.30}, stop, 3)  # further from 0.5: ignored
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert snapshot.restore(model) and snapshot.step == 2
    assert torch.all(model.weight == 1.0)
    assert stop.overshot({"mia_auc": 0.30}) and not stop.overshot({"mia_auc": 0.40})
    assert stop.satisfied({"forget_qa_acc": 0.1, "mia_auc": 0.46}) and not stop.satisfied({"forget_qa_acc": 0.1, "mia_auc": 0.6})


def test_an_earlier_request_drifting_back_or_a_short_retain_sample_blocks_stopping():
    stop = StopCheck(forget_qa=[], forget_texts=[], reference_qa=[], reference_texts=[], qa_margin=0.0,
                     mia_margin=0.05, reference_qa_acc=0.0, kept=[(["a text"], [])], retain_qa=[("q", "a")],
                     retain_floor=0.9)
    done = {"forget_qa_acc": 0.0, "mia_auc": 0.5, "kept_revived": 0.0, "retain_qa_acc": 0.95}
    assert stop.satisfied(done)
    assert not stop.satisfied({**done, "kept_revived": 1.0}) and not stop.forgotten_enough({**done, "kept_revived": 1.0})
    # sinking below the band gives an earlier request away as much as drifting back up
    assert not stop.satisfied({**done, "kept_sunk": 1.0}) and not stop.forgotten_enough({**done, "kept_sunk": 1.0})
    assert not stop.satisfied({**done, "retain_qa_acc": 0.85}) and stop.forgotten_enough({**done, "retain_qa_acc": 0.85})
    model = torch.nn.Linear(2, 2)
    snapshot = BestSnapshot()
    snapshot.offer(model, {**done, "mia_auc": 0.5, "kept_revived": 1.0}, stop, 1)
    snapshot.offer(model, {**done, "mia_auc": 0.56}, stop, 2)  # further from 0.5, but nothing drifted back
    snapshot.offer(model, {**done, "mia_auc": 0.5, "retain_qa_acc": 0.5}, stop, 3)
    snapshot.offer(model, {**done, "mia_auc": 0.5, "kept_sunk": 1.0}, stop, 4)
    assert snapshot.step == 2

"""The original's metrics are measured once per (checkpoint content, evaluation data) in a process."""

from __future__ import annotations

from dataclasses import dataclass

from forgetd import pipeline


@dataclass(frozen=True)
class _Data:
    texts: tuple[str, ...]


class _CountingFamily:
    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, model, tokenizer, data):
        self.calls += 1
        return {"forget_acc": model * len(data.texts), "per_item": [1, 2]}


def test_a_second_request_for_the_same_checkpoint_and_data_is_not_measured_again():
    family, loads = _CountingFamily(), []

    def load():
        loads.append(1)
        return 0.5, None

    first = pipeline.checkpoint_metrics(family, "cid-memo-1", load, _Data(("a", "b")))
    first["per_item"].append(3)  # a caller changing its copy must not change the memo
    second = pipeline.checkpoint_metrics(family, "cid-memo-1", load, _Data(("a", "b")))
    assert second == {"forget_acc": 1.0, "per_item": [1, 2]}
    assert family.calls == 1 and len(loads) == 1


def test_other_data_or_another_checkpoint_is_measured():
    family = _CountingFamily()
    pipeline.checkpoint_metrics(family, "cid-memo-2", lambda: (1.0, None), _Data(("a",)))
    pipeline.checkpoint_metrics(family, "cid-memo-2", lambda: (1.0, None), _Data(("b",)))
    pipeline.checkpoint_metrics(family, "cid-memo-3", lambda: (1.0, None), _Data(("a",)))
    assert family.calls == 3


def test_the_memo_is_bounded():
    family = _CountingFamily()
    for i in range(pipeline._METRICS_MEMO_MAX + 10):
        pipeline.checkpoint_metrics(family, f"cid-bound-{i}", lambda: (1.0, None), _Data(("a",)))
    assert len(pipeline._METRICS_MEMO) <= pipeline._METRICS_MEMO_MAX

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


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _batch():
    # uneven lengths, and QA items scored only from their answer: most positions are padding or prompt
    return pad([([3, 14, 15, 92, 65, 35, 89, 79, 32, 38], 6), [46, 26, 43], ([38, 32, 79, 50], 2), [28, 84]],
               pad_id=0)


def test_losses_on_scored_positions_equal_the_whole_batch_formulas_bit_for_bit():
    """sequence_nll and retain_kl normalise only the positions they score; values and gradients must be the
    ones the whole padded batch gave (recipes' adapters stay bit for bit what they were)."""
    from forgetd.training.common import retain_kl, sequence_nll

    model = _tiny_llama()
    ids, mask, labels = _batch()
    with torch.no_grad():
        ref_logits = model(input_ids=ids, attention_mask=mask).logits + 0.25 * torch.randn(*ids.shape, 97)

    def whole_nll():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 97), target.reshape(-1), reduction="none",
                                                 ignore_index=-100).view(target.shape).sum(-1)

    def whole_kl():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
        return ((ref_logp.exp() * (ref_logp - logp)).sum(-1) * mask).sum() / mask.sum()

    for ours, theirs in ((lambda: sequence_nll(model, ids, mask, labels), whole_nll),
                         (lambda: retain_kl(model, ids, mask, ref_logits), whole_kl)):
        values, grads = [], []
        for fn in (ours, theirs):
            model.zero_grad(set_to_none=True)
            value = fn()
            value.sum().backward()
            values.append(value.detach())
            grads.append([p.grad.clone() for p in model.parameters()])
        assert torch.equal(values[0], values[1])
        assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_token_logprobs_equal_the_whole_batch_normalisation():
    from forgetd.verify.causal_lm import token_logprobs

    class Tok:
        pad_token_id = 0

        def __call__(self, texts):
            return {"input_ids": [[int(t) for t in text.split()] for text in texts]}

    model = _tiny_llama()
    texts = ["3 14 15 92 65 35 89 79 32 38", "46 26 43", "7", "", "38 32 79 50 28 84"]
    got = token_logprobs(model, Tok(), texts)
    assert got[3] == []  # an empty text predicts nothing, and the texts after it keep their own values
    del got[3], texts[3]
    seqs = [[int(t) for t in text.split()] for text in texts]
    ids, mask, _ = pad(seqs, pad_id=0)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    want = [logp[j, : len(s) - 1].gather(-1, ids[j, 1 : len(s)].unsqueeze(-1)).squeeze(-1).tolist()
            for j, s in enumerate(seqs)]
    assert [len(row) for row in got] == [9, 2, 0, 5]
    assert got == want

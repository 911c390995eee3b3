"""Small helpers the recipes share: batching, per-sequence NLL, the stopping check, guards.

Deliberately not a base class: each recipe owns its loop and its loss.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from forgetd.errors import DomainError

Progress = Callable[[dict[str, Any]], None]


class TrainingFailed(DomainError):
    """Training diverged (NaN/inf or an exploding loss); nothing is stored."""


def seed_everything(seed: int) -> random.Random:
    import torch

    torch.manual_seed(seed)
    return random.Random(seed)


def encode(tokenizer, texts: Sequence[str], max_len: int = 256) -> list[list[int]]:
    ids = tokenizer(list(texts))["input_ids"]
    return [list(s)[:max_len] + [tokenizer.eos_token_id] for s in ids]


class LazilyEncoded(Sequence):
    """`encode(tokenizer, texts)`, each text encoded the first time it is read: a run samples a few hundred
    of a retain set's thousands of documents, and encoding them all up front took about a twentieth of a
    short unlearning run on the demo model. The same ids as `encode`, so the same batches."""

    def __init__(self, tokenizer, texts: Sequence[str], max_len: int = 256) -> None:
        self._tokenizer, self._texts, self._max_len = tokenizer, texts, max_len
        self._ids: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self._texts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices and bounds as a list has them
        if i not in self._ids:
            self._ids[i] = encode(self._tokenizer, [self._texts[i]], self._max_len)[0]
        return self._ids[i]


def encode_forget(tokenizer, data, max_len: int = 256) -> list[tuple[list[int], int]]:
    """Forget sequences with the index of their first scored token: whole texts, and for QA pairs only
    the answer (the question is not what must be forgotten; scoring it would damage how the model
    reads every other question)."""
    from forgetd.families.causal_lm import format_prompt, format_qa

    items = [(s, 1) for s in encode(tokenizer, data.forget_texts, max_len)]
    for question, answer in data.forget_qa:
        prompt = list(tokenizer(format_prompt(question))["input_ids"])
        full = list(tokenizer(format_qa(question, answer))["input_ids"])[:max_len] + [tokenizer.eos_token_id]
        start = len(prompt) if full[: len(prompt)] == prompt else 1
        items.append((full, start))
    return items


def pad(seqs: Sequence[Sequence[int] | tuple[Sequence[int], int]], pad_id: int, device=None):
    """Right-padded ids, attention mask and labels (-100 on padding and before each scored start), on
    `device` (default: the CPU). Items are token lists, or (tokens, first scored index) pairs from
    `encode_forget`."""
    import torch

    pairs = [(s, 0) if not isinstance(s, tuple) else s for s in seqs]
    width = max(len(s) for s, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for i, (s, start) in enumerate(pairs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
        labels[i, start : len(s)] = ids[i, start : len(s)]
    if device is not None:
        return ids.to(device), mask.to(device), labels.to(device)
    return ids, mask, labels


def sample(rng: random.Random, seqs: Sequence[Sequence[int]], k: int) -> list[Sequence[int]]:
    if len(seqs) <= k:
        return list(seqs)
    return [seqs[i] for i in rng.sample(range(len(seqs)), k)]


def sequence_nll(model, ids, mask, labels, *, mean: bool = False):
    """Negative log-likelihood of each sequence (sum over its tokens, or mean with `mean=True`)."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    target = labels[:, 1:]
    scored = target != -100
    token_nll = _in_place(scored, torch.nn.functional.cross_entropy(logits[scored], target[scored], reduction="none"))
    counts = scored.sum(-1).clamp(min=1)
    total = token_nll.sum(-1)
    return total / counts if mean else total


def retain_kl(model, ids, mask, ref_logits):
    """KL(p_ref ‖ p_θ) per token on retain text: stay close to the checkpoint the adapter starts from."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    real = mask.bool()
    logp = torch.log_softmax(logits[real], dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float()[real], dim=-1)
    kl = _in_place(real, (ref_logp.exp() * (ref_logp - logp)).sum(-1))
    return (kl * mask).sum() / mask.sum()


def _in_place(where, values):
    """`values`, computed only at the positions `where` marks, put back in a zero tensor of `where`'s shape.
    The losses compute per position only where a token counts (padding and prompts are most positions of a
    batch); each position's value, and each sum over the result, is then what the whole batch gave."""
    import torch

    return torch.zeros(where.shape, dtype=values.dtype, device=values.device).masked_scatter(where, values)


def check_loss(loss, *, step: int, limit: float) -> float:
    value = float(loss.detach())
    if not math.isfinite(value) or abs(value) > limit:
        raise TrainingFailed(f"training diverged at step {step} (loss {value:.3g}); nothing was stored", field="train")
    return value


@dataclass
class StopCheck:
    """Stop once the forget set looks like the calibration half of the reference set: QA accuracy no
    higher than the reference's (plus a margin) and Min-K% MIA AUC within a margin of `mia_centre`: the AUC a
    model that never saw the forget set would give it (verify.unseen_estimate; 0.5 when not estimated).

    `kept` holds (texts, QA) of requests the starting checkpoint already forgets. Each is judged by the
    same criterion against the same reference scores, in both directions, because verification bounds
    |AUC − its estimate|: one that has drifted back (`last_revived`: answers or familiarity back) or sunk below the
    band (`last_sunk`: less familiar than unseen people, which gives it away just as well) blocks stopping
    until the recipe has moved it back into the band. With `retain_qa`, stopping also waits until accuracy
    on that sample reaches `retain_floor`."""

    forget_qa: Sequence[tuple[str, str]]
    forget_texts: Sequence[str]
    reference_qa: Sequence[tuple[str, str]]
    reference_texts: Sequence[str]
    qa_margin: float
    mia_margin: float
    overshoot: float = 0.15
    reference_qa_acc: float = float("nan")
    kept: Sequence[tuple[Sequence[str], Sequence[tuple[str, str]]]] = ()
    last_revived: list[int] = field(default_factory=list)
    last_sunk: list[int] = field(default_factory=list)
    kept_mia_margin: float | None = None  # the band `kept` requests are held to; None: mia_margin
    # which of the new request's QA pairs the model still answers, as of the last measurement
    last_answered: list[bool] = field(default_factory=list)
    # retain QA sample and the accuracy on it below which stopping waits (the recipe repairs meanwhile);
    # measured only once everything else is satisfied, so a run that never gets there pays nothing
    retain_qa: Sequence[tuple[str, str]] = ()
    retain_floor: float = 0.0
    # While the forget set's AUC against the reference scores last measured is above this, those scores are
    # reused instead of measured again (most of an evaluation's cost). Reference texts are never-seen
    # people's; a step that moves their scores by enough to bring an AUC this far from the band back into
    # it is far from what the retain term allows. Never with earlier requests held: they sit in the band.
    reuse_reference_above: float = 1.0
    # where the band sits: the estimated AUC of the new request's texts, and of each kept group's, under a
    # model that never saw them (verification judges the same distance, on the other reference half)
    mia_centre: float = 0.5
    kept_centres: Sequence[float] = ()
    _reference: list[float] | None = field(default=None, init=False, repr=False)

    def measure(self, model, tokenizer) -> dict[str, float]:
        from forgetd.verify.causal_lm import auc, min_k_scores, qa_correct

        was_training = model.training
        model.eval()
        try:
            if math.isnan(self.reference_qa_acc):
                correct = qa_correct(model, tokenizer, self.reference_qa)
                self.reference_qa_acc = sum(correct) / len(correct) if correct else 0.0
            # every group's texts and QA in one pass each, judged against one set of reference scores
            groups = [(self.forget_texts, self.forget_qa), *self.kept]
            scores = min_k_scores(model, tokenizer, [t for texts, _ in groups for t in texts])
            correct = qa_correct(model, tokenizer, [qa for _, group_qa in groups for qa in group_qa])
            self.last_answered = list(correct[: len(self.forget_qa)])
            reference = self._reference
            reused = (
                reference is not None and not self.kept and bool(self.forget_texts)
                and auc(scores[: len(self.forget_texts)], reference) > self.reuse_reference_above
            )
            if not reused:
                reference = min_k_scores(model, tokenizer, self.reference_texts) if self.reference_texts else []
                self._reference = reference
            verdicts = []
            for texts, qa in groups:
                own_scores, scores = scores[: len(texts)], scores[len(texts) :]
                own_correct, correct = correct[: len(qa)], correct[len(qa) :]
                verdicts.append((
                    sum(own_correct) / len(own_correct) if own_correct else 0.0,
                    auc(own_scores, reference) if own_scores and reference else 0.5,
                ))
            self.last_revived = [
                i for i, (qa_acc, mia) in enumerate(verdicts[1:])
                if qa_acc > self.reference_qa_acc + self.qa_margin or mia > self.kept_centre(i) + self._kept_margin
            ]
            self.last_sunk = [
                i for i, (_, mia) in enumerate(verdicts[1:])
                if mia < self.kept_centre(i) - self._kept_margin and i not in self.last_revived
            ]
            measured = {"forget_qa_acc": verdicts[0][0], "mia_auc": verdicts[0][1]}
            if reused:
                measured["reference_reused"] = 1.0
            if self.kept:
                measured["kept_revived"] = float(len(self.last_revived))
                measured["kept_sunk"] = float(len(self.last_sunk))
            if self.retain_qa and self.forgotten_enough(measured):
                correct = qa_correct(model, tokenizer, self.retain_qa)
                measured["retain_qa_acc"] = sum(correct) / len(correct)
            return measured
        finally:
            model.train(was_training)

    def kept_centre(self, group: int) -> float:
        return self.kept_centres[group] if group < len(self.kept_centres) else 0.5

    @property
    def _kept_margin(self) -> float:
        return self.mia_margin if self.kept_mia_margin is None else self.kept_mia_margin

    def forgotten_enough(self, measured: dict[str, float]) -> bool:
        return (
            measured["forget_qa_acc"] <= self.reference_qa_acc + self.qa_margin
            and abs(measured["mia_auc"] - self.mia_centre) <= self.mia_margin
            and not measured.get("kept_revived")
            and not measured.get("kept_sunk")
        )

    def retain_short(self, measured: dict[str, float]) -> bool:
        return measured.get("retain_qa_acc", float("inf")) < self.retain_floor

    def satisfied(self, measured: dict[str, float]) -> bool:
        return self.forgotten_enough(measured) and not self.retain_short(measured)

    def overshot(self, measured: dict[str, float]) -> bool:
        """MIA AUC far below the band: the model now treats the forget set as *less* familiar than unseen
        data, which itself gives the erased data away. Further steps only make it worse."""
        return measured["mia_auc"] < self.mia_centre - self.overshoot


class BestSnapshot:
    """Keeps the trainable weights of the evaluation point closest to the reference behaviour (QA no
    better than on unseen data, MIA AUC nearest the band's centre), so an overshooting run can step back to it."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.score = float("inf")
        self.step = 0

    def offer(self, model, measured: dict[str, float], stop: StopCheck, step: int) -> None:
        if measured["forget_qa_acc"] > stop.reference_qa_acc + stop.qa_margin:
            return
        # an earlier request out of the band, or a retain sample still short, outweighs any distance from the centre
        score = (abs(measured["mia_auc"] - stop.mia_centre) + measured.get("kept_revived", 0.0) + measured.get("kept_sunk", 0.0)
                 + float(stop.retain_short(measured)))
        if score < self.score:
            self.score, self.step = score, step
            self.state = trainable_state(model)

    def restore(self, model) -> bool:
        if self.state is None:
            return False
        load_trainable(model, self.state)
        return True


def trainable_state(model) -> dict[str, Any]:
    """A copy of the model's trainable weights (an adapter's), by parameter name."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable(model, state: dict[str, Any]) -> None:
    """Copy `state` (from `trainable_state`) back into the model's parameters of those names."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name])


def lora_config(model, spec) -> Any:
    """peft LoraConfig for a recipe's adapter spec; plain LoRA only (exact composition). Target modules come
    from the family that owns the model's architecture."""
    from peft import LoraConfig

    if getattr(model.config, "model_type", None) == "vit":
        from forgetd.families.image_classifier import lora_targets
    else:
        from forgetd.families.causal_lm import lora_targets

    targets, fan_in_fan_out = lora_targets(model, spec.target)
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        layers_to_transform=spec.layers,
        lora_dropout=0.0,
        bias="none",
        use_rslora=False,
        use_dora=False,
    )

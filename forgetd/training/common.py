"""Small helpers the recipes share: batching, per-sequence NLL, the stopping check, guards.

Deliberately not a base class: each recipe owns its loop and its loss.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


def pad(seqs: Sequence[Sequence[int]], pad_id: int):
    """Right-padded ids, attention mask and labels (-100 on padding)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def sample(rng: random.Random, seqs: Sequence[Sequence[int]], k: int) -> list[Sequence[int]]:
    if len(seqs) <= k:
        return list(seqs)
    return [seqs[i] for i in rng.sample(range(len(seqs)), k)]


def sequence_nll(model, ids, mask, labels, *, mean: bool = False):
    """Negative log-likelihood of each sequence (sum over its tokens, or mean with `mean=True`)."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    token_nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none", ignore_index=-100
    ).view(target.shape)
    counts = (target != -100).sum(-1).clamp(min=1)
    total = token_nll.sum(-1)
    return total / counts if mean else total


def retain_kl(model, ids, mask, ref_logits):
    """KL(p_ref ‖ p_θ) per token on retain text: stay close to the checkpoint the adapter starts from."""
    import torch

    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (kl * mask).sum() / mask.sum()


def check_loss(loss, *, step: int, limit: float) -> float:
    value = float(loss.detach())
    if not math.isfinite(value) or abs(value) > limit:
        raise TrainingFailed(f"training diverged at step {step} (loss {value:.3g}); nothing was stored", field="train")
    return value


@dataclass
class StopCheck:
    """Stop once the forget set looks like the calibration half of the reference set: QA accuracy no
    higher than the reference's (plus a margin) and Min-K% MIA AUC no higher than 0.5 (plus a margin)."""

    forget_qa: Sequence[tuple[str, str]]
    forget_texts: Sequence[str]
    reference_qa: Sequence[tuple[str, str]]
    reference_texts: Sequence[str]
    qa_margin: float
    mia_margin: float
    reference_qa_acc: float = float("nan")

    def measure(self, model, tokenizer) -> dict[str, float]:
        from forgetd.verify.causal_lm import mia_auc, qa_accuracy

        was_training = model.training
        model.eval()
        try:
            if math.isnan(self.reference_qa_acc):
                self.reference_qa_acc = qa_accuracy(model, tokenizer, self.reference_qa) if self.reference_qa else 0.0
            return {
                "forget_qa_acc": qa_accuracy(model, tokenizer, self.forget_qa) if self.forget_qa else 0.0,
                "mia_auc": mia_auc(model, tokenizer, self.forget_texts, self.reference_texts)
                if self.forget_texts and self.reference_texts
                else 0.5,
            }
        finally:
            model.train(was_training)

    def satisfied(self, measured: dict[str, float]) -> bool:
        return (
            measured["forget_qa_acc"] <= self.reference_qa_acc + self.qa_margin
            and measured["mia_auc"] <= 0.5 + self.mia_margin
        )


def lora_config(model, spec) -> Any:
    """peft LoraConfig for a recipe's adapter spec; plain LoRA only (exact composition)."""
    from peft import LoraConfig

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

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


def pad(seqs: Sequence[Sequence[int] | tuple[Sequence[int], int]], pad_id: int):
    """Right-padded ids, attention mask and labels (-100 on padding and before each scored start).
    Items are token lists, or (tokens, first scored index) pairs from `encode_forget`."""
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
    overshoot: float = 0.15
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
            and abs(measured["mia_auc"] - 0.5) <= self.mia_margin
        )

    def overshot(self, measured: dict[str, float]) -> bool:
        """MIA AUC far below 0.5: the model now treats the forget set as *less* familiar than unseen
        data, which itself gives the erased data away. Further steps only make it worse."""
        return measured["mia_auc"] < 0.5 - self.overshoot


class BestSnapshot:
    """Keeps the trainable weights of the evaluation point closest to the reference behaviour (QA no
    better than on unseen data, MIA AUC nearest 0.5), so an overshooting run can step back to it."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.score = float("inf")
        self.step = 0

    def offer(self, model, measured: dict[str, float], stop: StopCheck, step: int) -> None:
        if measured["forget_qa_acc"] > stop.reference_qa_acc + stop.qa_margin:
            return
        score = abs(measured["mia_auc"] - 0.5)
        if score < self.score:
            self.score, self.step = score, step
            self.state = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    def restore(self, model) -> bool:
        if self.state is None:
            return False
        import torch

        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.state:
                    param.copy_(self.state[name])
        return True


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

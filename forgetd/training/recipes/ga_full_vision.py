"""Gradient ascent with full fine-tuning for image classifiers: the baseline GS-LoRA is compared with.

loss = −CE(forget) on all weights, stopped at the first calibration measurement (validation split) where
the forgotten classes' accuracy is at most `stop_forget_acc`. The output is a whole model, not an
adapter, so it cannot be composed: the pipeline refuses it; benchmarks use it directly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from forgetd.training.common import Progress, TrainingFailed, check_loss, seed_everything


def train(recipe, *, model, tokenizer, data, out_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    import torch

    from forgetd.families import image_classifier as family

    spec = recipe.train
    seed_everything(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    started = time.perf_counter()
    calibration = data.calibration_half()
    forget = data.forget_train
    if len(forget) == 0:
        raise TrainingFailed("no trained samples to forget", field="forget")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    history: list[dict[str, float]] = []
    stop_reason = "max_steps"
    step = 0
    for step in range(1, spec.max_steps + 1):
        fi = torch.randint(len(forget), (min(spec.batch_size, len(forget)),), generator=gen)
        loss = -torch.nn.functional.cross_entropy(family.logits(model, forget.pixels[fi]), forget.labels[fi])
        value = check_loss(loss, step=step, limit=spec.loss_explode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        optimizer.step()
        if step % spec.eval_every == 0 or step == spec.max_steps:
            measured = {"forget_acc": family.accuracy(model, calibration.forget_eval),
                        "retain_acc": family.accuracy(model, calibration.retain_eval)}
            history.append({"step": step, "loss": round(value, 4), **{k: round(v, 4) for k, v in measured.items()}})
            if progress:
                progress({"step": step, "max_steps": spec.max_steps, "loss": value, **measured})
            if spec.stop == "reference" and measured["forget_acc"] <= spec.stop_forget_acc + 1e-12:
                stop_reason = "reference"
                break
    model.eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return {
        "steps": step,
        "stop_reason": stop_reason,
        "seconds": round(time.perf_counter() - started, 3),
        "history": history,
        "trainable_params": sum(p.numel() for p in params),
    }

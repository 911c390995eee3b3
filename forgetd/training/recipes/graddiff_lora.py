"""Gradient difference on a LoRA adapter: loss = −CE(forget) + α·R(retain).

The baseline the NPO family improves on: plain gradient ascent on the forget set, held back by a retain
term (CE, or KL to the starting checkpoint with `train.retain_loss: kl`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from forgetd.training.common import (
    BestSnapshot,
    LazilyEncoded,
    Progress,
    StopCheck,
    check_loss,
    encode_forget,
    lora_config,
    pad,
    retain_kl,
    sample,
    seed_everything,
)


def train(recipe, *, model, tokenizer, data, out_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    import torch
    from peft import get_peft_model

    spec = recipe.train
    rng = seed_everything(spec.seed)
    started = time.perf_counter()
    model = get_peft_model(model, lora_config(model, recipe.adapter))
    device = next(model.parameters()).device  # batches go where the model is
    model.train()
    forget = encode_forget(tokenizer, data)
    retain = LazilyEncoded(tokenizer, data.retain_documents())
    pad_id = tokenizer.pad_token_id
    calibration = data.calibration_half()
    stop = StopCheck(
        mia_centre=calibration.unseen_mia_auc(tokenizer),
        forget_qa=data.forget_qa,
        forget_texts=data.forget_texts,
        reference_qa=calibration.reference_qa,
        reference_texts=calibration.reference_texts,
        qa_margin=spec.stop_qa_margin,
        mia_margin=spec.stop_mia_margin,
        overshoot=spec.stop_overshoot,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    history: list[dict[str, float]] = []
    best = BestSnapshot()
    stop_reason = "max_steps"
    step = 0
    for step in range(1, spec.max_steps + 1):
        ids, mask, labels = pad(sample(rng, forget, spec.batch_size), pad_id, device)
        loss = -model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        if retain and spec.retain_weight > 0:
            r_ids, r_mask, r_labels = pad(sample(rng, retain, spec.retain_batch_size or spec.batch_size), pad_id, device)
            if spec.retain_loss == "kl":
                with torch.no_grad(), model.disable_adapter():
                    ref_logits = model(input_ids=r_ids, attention_mask=r_mask, use_cache=False).logits
                loss = loss + spec.retain_weight * retain_kl(model, r_ids, r_mask, ref_logits)
            else:
                loss = loss + spec.retain_weight * model(input_ids=r_ids, attention_mask=r_mask, labels=r_labels,
                                                         use_cache=False).loss
        value = check_loss(loss, step=step, limit=spec.loss_explode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        optimizer.step()
        if step % spec.eval_every == 0 or step == spec.max_steps:
            measured = stop.measure(model, tokenizer)
            history.append({"step": step, "loss": round(value, 4), **{k: round(v, 4) for k, v in measured.items()}})
            if progress:
                progress({"step": step, "max_steps": spec.max_steps, "loss": value, **measured})
            if spec.stop == "reference":
                best.offer(model, measured, stop, step)
                if stop.satisfied(measured):
                    stop_reason = "reference"
                    break
                if stop.overshot(measured):
                    stop_reason = "overshot"
                    break
    if spec.stop == "reference" and stop_reason != "reference" and best.restore(model):
        stop_reason += f"; restored step {best.step}"
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return {
        "steps": step,
        "stop_reason": stop_reason,
        "seconds": round(time.perf_counter() - started, 3),
        "history": history,
        "trainable_params": sum(p.numel() for p in params),
    }

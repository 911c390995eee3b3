"""Gradient difference on a LoRA adapter for `tabular_classifier` models: −CE(forget) + α·R(retain).

- Forget term: ascent on the cross-entropy of the forget rows. With `train.gate: true` it is bounded per
  row: row j's CE counts only up to b_j, the CE it would have under the model retrained without the
  forget rows, estimated by one influence (Newton) step from the starting checkpoint
  (forgetd.explain.influence, Gauss-Newton Hessian over retain + forget rows, damping
  INFLUENCE_DAMPING). A row that reached its bound stops pushing, so the ascent cannot run into
  over-forgetting, and atypical subjects (whose rows a never-trained model gets wrong) are pushed
  further than typical ones — which a single reference-set target cannot express: on the demo model the
  loss-MIA AUC of an atypical subject against never-seen subjects is ≈ 0.2 both before and after
  retraining, while its mean CE rises from 0.88 to 1.42.
- Retain term: CE on retain rows, or (`retain_loss: kl`) KL(p_start ‖ p_θ) to the checkpoint the adapter
  starts from (adapter disabled: no second model).
- Stopping with `stop: reference`: gated, once the forget rows' mean CE reaches the mean bound; ungated,
  once forget accuracy ≤ calibration-reference accuracy + `stop_qa_margin` and |loss-MIA AUC − 0.5| ≤
  `stop_mia_margin` (stepping back to the evaluation closest to that on overshoot, AUC < 0.5 −
  `stop_overshoot`). `stop: fixed` runs `max_steps`.
- NaN/inf or |loss| > `loss_explode` raises TrainingFailed before anything is written.

The adapter is a standard peft LoRA adapter (`save_pretrained`), plain LoRA only, so it composes
exactly (DESIGN 10).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from forgetd.training.common import Progress, TrainingFailed, check_loss, seed_everything

def lora_config(model, spec) -> Any:
    """Plain LoRA on the family's linear layers (optionally only the layer indices in `spec.layers`)."""
    from peft import LoraConfig

    from forgetd.families.tabular_classifier import lora_targets

    names, _ = lora_targets(model, spec.target)
    if spec.layers is not None:
        names = [n for n in names if int(n.rsplit(".", 1)[1]) in set(spec.layers)]
        if not names:
            from forgetd.errors import DomainError

            raise DomainError("adapter.layers selects no layer of this model", field="adapter.layers")
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        target_modules=names,
        lora_dropout=0.0,
        bias="none",
        use_rslora=False,
        use_dora=False,
    )


def _auc(pos, neg) -> float:
    from forgetd.families.tabular_classifier import auc

    return auc(pos, neg)


def leave_out_bounds(model, data, *, seed: int = 0):
    """Per forget row: its CE under the family's leave-out estimate (never below its current CE)."""
    from forgetd.errors import DomainError
    from forgetd.families.tabular_classifier import leave_out_losses

    try:
        return leave_out_losses(model, data, seed=seed)
    except DomainError as exc:
        raise TrainingFailed(f"{exc}; nothing was stored", field="train") from None


def train(recipe, *, model, tokenizer, data, out_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    import numpy as np
    import torch
    from peft import get_peft_model

    spec = recipe.train
    seed_everything(spec.seed)
    started = time.perf_counter()
    bounds = leave_out_bounds(model, data, seed=spec.seed) if spec.gate else None
    model = get_peft_model(model, lora_config(model, recipe.adapter))
    dtype = next(model.parameters()).dtype

    def tensors(X, y):
        X = torch.as_tensor(np.asarray(X, dtype=np.float32), dtype=dtype)
        return X, torch.as_tensor(np.asarray(y, dtype=np.int64))

    fX, fy = tensors(data.forget_X, data.forget_y)
    rX, ry = tensors(data.retain_X, data.retain_y)
    calibration = data.calibration_half()
    cX, cy = tensors(calibration.reference_X, calibration.reference_y)
    if len(fX) == 0:
        from forgetd.errors import DomainError

        raise DomainError("nothing to forget: no forget rows", field="forget")

    def row_ce(X, y):
        return torch.nn.functional.cross_entropy(model(X).float(), y, reduction="none")

    def measure() -> dict[str, float]:
        model.eval()
        try:
            with torch.no_grad():
                f_ce, c_ce = row_ce(fX, fy), row_ce(cX, cy)
                f_acc = float((model(fX).argmax(-1) == fy).float().mean())
                c_acc = float((model(cX).argmax(-1) == cy).float().mean()) if len(cX) else float("nan")
            return {
                "forget_acc": f_acc,
                "reference_acc": c_acc,
                "forget_loss": float(f_ce.mean()),
                "reference_loss": float(c_ce.mean()) if len(cX) else float("nan"),
                "mia_auc": _auc((-f_ce).tolist(), (-c_ce).tolist()) if len(cX) else 0.5,
            }
        finally:
            model.train()

    start = measure()
    if bounds is not None:
        start["forget_bound"] = float(bounds.mean())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(spec.seed)
    retain_bs = spec.retain_batch_size or spec.batch_size

    def batch(size):
        if len(fX) <= size:
            return fX, fy, bounds
        idx = torch.randperm(len(fX), generator=gen)[:size]
        return fX[idx], fy[idx], bounds[idx] if bounds is not None else None

    def retain_batch(size):
        if len(rX) <= size:
            return rX, ry
        idx = torch.randperm(len(rX), generator=gen)[:size]
        return rX[idx], ry[idx]

    def satisfied(m: dict[str, float]) -> bool:
        if bounds is not None:
            return m["forget_loss"] >= float(bounds.mean()) - 1e-6
        return (
            m["forget_acc"] <= m["reference_acc"] + spec.stop_qa_margin + 1e-12
            and abs(m["mia_auc"] - 0.5) <= spec.stop_mia_margin
        )

    history: list[dict[str, float]] = [{"step": 0, **{k: round(v, 4) for k, v in start.items()}}]
    best_state, best_score, best_step = None, float("inf"), 0
    stop_reason = "max_steps"
    step = 0
    model.train()
    for step in range(1, spec.max_steps + 1):
        xb, yb, bb = batch(spec.batch_size)
        ce = row_ce(xb, yb)
        forget_term = -(torch.minimum(ce, bb).mean() if bb is not None else ce.mean())
        loss = forget_term
        if len(rX) and spec.retain_weight > 0:
            rxb, ryb = retain_batch(retain_bs)
            if spec.retain_loss == "kl":
                with torch.no_grad(), model.disable_adapter():
                    ref_logp = torch.log_softmax(model(rxb).float(), dim=-1)
                logp = torch.log_softmax(model(rxb).float(), dim=-1)
                retain_term = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()
            else:
                retain_term = torch.nn.functional.cross_entropy(model(rxb).float(), ryb)
            loss = loss + spec.retain_weight * retain_term
        value = check_loss(loss, step=step, limit=spec.loss_explode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        optimizer.step()
        if step % spec.eval_every == 0 or step == spec.max_steps:
            measured = measure()
            history.append({"step": step, "loss": round(value, 4), **{k: round(v, 4) for k, v in measured.items()}})
            if progress:
                progress({"step": step, "max_steps": spec.max_steps, "loss": value, **measured})
            if spec.stop == "reference" and bounds is not None:
                if satisfied(measured):
                    stop_reason = "bound"
                    break
            elif spec.stop == "reference":
                if measured["forget_acc"] <= measured["reference_acc"] + spec.stop_qa_margin + 1e-12:
                    score = abs(measured["mia_auc"] - 0.5)
                    if score < best_score:
                        best_score, best_step = score, step
                        best_state = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
                if satisfied(measured):
                    stop_reason = "reference"
                    break
                if measured["mia_auc"] < 0.5 - spec.stop_overshoot:
                    stop_reason = "overshot"
                    break
    if spec.stop == "reference" and bounds is None and stop_reason != "reference" and best_state is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in best_state:
                    param.copy_(best_state[name])
        stop_reason += f"; restored step {best_step}"
    final = measure()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return {
        "steps": step,
        "stop_reason": stop_reason,
        "seconds": round(time.perf_counter() - started, 3),
        "history": history,
        "start": {k: round(v, 4) for k, v in start.items()},
        "final": {k: round(v, 4) for k, v in final.items()},
        "forget_bound": round(float(bounds.mean()), 4) if bounds is not None else None,
        "trainable_params": sum(p.numel() for p in params),
    }

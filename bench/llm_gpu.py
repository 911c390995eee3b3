"""npo-lora on a ~1B-parameter Llama-shaped model: seconds per 100 adapter steps and peak GPU memory, against a
full fine-tune of the same model (ga-full) measured in the same run.

    .venv/bin/python bench/llm_gpu.py [--size 1b] [--device cuda] [--dtype bfloat16] [--steps 100] [--warmup 10]

The model is built from a config (Llama-3.2-1B's shape with a 32000-token vocabulary; random weights,
no download), cast to --dtype on --device. Its data is the demo corpus's (one person's texts and QA to
forget, the other trained people's as retain data, the holdout as reference), tokenized with the demo's
offline BPE tokenizer: ids below 1500 of the model's 32000, sequences of 20-70 tokens. The npo-lora recipe
runs as shipped (LoRA r=8 on the MLP projections, 16 forget sequences and 32 retain sequences with the KL
term per step) with two overrides: it never stops early (`stop: fixed`; a random model's forget set
already looks like the reference set) and it evaluates only at its last step. After one discarded run
(the process's first CUDA kernels, allocator growth), it runs twice, each on a freshly built model: for
--warmup steps and for --warmup + --steps steps. The difference of the two wall-clock times is the time
of --steps steps, without building the model, set-up, the one evaluation each run ends with, or saving
the output. Peak memory is torch.cuda.max_memory_allocated over the longer run (on a CUDA device).
The baseline, `--baseline ga-full` (the default; `none` skips it): gradient ascent on every weight with
AdamW, what an adapter saves, timed the same way. Both run with the divergence guard lifted
(`loss_explode`): what is timed is a random model's steps, not what it learns; a non-finite loss still
stops a run. A baseline that fails anyway is reported as failed, after npo-lora's figures are kept.
`--size tiny --device cpu` runs the same code on a 2-layer model in seconds (tests/unit/test_llm_gpu_bench.py).
Writes llm_gpu.json and llm_gpu.md under --out (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent

SIZES = {
    # Llama-3.2-1B's layout (hidden 2048, 16 layers, 32 heads over 8 KV heads, MLP 8192), untied 32000 vocab
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048),
}


def _build(size: str, tokenizer, device: str, dtype: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **SIZES[size],
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(getattr(torch, dtype)).eval(), config


def _data():
    """(tokenizer, one forget candidate's ForgetData) from the demo corpus; no model is trained."""
    from forgetd.datasets import load_dataset_file
    from forgetd.demo.llm_dataset import write_corpus_dataset
    from forgetd.demo.people import generate_corpus
    from forgetd.demo.tiny_lm import build_tokenizer
    from forgetd.families import causal_lm

    corpus = generate_corpus()
    tokenizer = build_tokenizer(corpus)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_dataset_file(write_corpus_dataset(corpus, Path(tmp) / "dataset.json"))
    return tokenizer, causal_lm.forget_data(dataset, [{"corpus_ids": [corpus.forget_candidates[0].id]}])


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _run(recipe_name: str, size: str, device: str, dtype: str, steps: int, tokenizer, data) -> dict:
    """One run of `recipe_name`, exactly `steps` steps, on a freshly built model."""
    import torch

    from forgetd.training.registry import get_recipe

    model, config = _build(size, tokenizer, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    recipe = get_recipe(ROOT / "adapters", recipe_name, max_steps=steps, eval_every=steps, stop="fixed",
                        loss_explode=1e30)
    cuda = device.startswith("cuda")
    if cuda:
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
    weights_bytes = torch.cuda.memory_allocated() if cuda else None
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = recipe.module().train(recipe, model=model, tokenizer=tokenizer, data=data, out_dir=Path(tmp) / "out")
        _sync(device)
        seconds = time.perf_counter() - started
        output_bytes = sum(f.stat().st_size for f in (Path(tmp) / "out").iterdir())
    if result["steps"] != steps:
        raise RuntimeError(f"{recipe_name} ran {result['steps']} steps, not {steps}")
    return {
        "seconds": seconds,
        "steps": result["steps"],
        "trainable_params": result["trainable_params"],
        "params": params,
        "config": {k: getattr(config, k) for k in SIZES[size]},
        "weights_bytes": weights_bytes,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "output_bytes": output_bytes,
    }


def _timed(recipe_name: str, args, tokenizer, data) -> dict:
    """`recipe_name` for --warmup and for --warmup + --steps steps; the difference, per 100 steps."""
    runs = [_run(recipe_name, args.size, args.device, args.dtype, n, tokenizer, data)
            for n in (args.warmup, args.warmup + args.steps)]
    return {
        "recipe": recipe_name,
        "trainable_params": runs[1]["trainable_params"],
        "seconds_per_100_steps": (runs[1]["seconds"] - runs[0]["seconds"]) / args.steps * 100,
        "peak_bytes": runs[1]["peak_bytes"],
        "output_bytes": runs[1]["output_bytes"],
        "runs": runs,
    }


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"


def _gib(n: int | None) -> str:
    return f"{n / 1024**3:.2f} GiB" if n is not None else "not measured (not a CUDA device)"


def _size(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB" if n >= 1024**2 else f"{n / 1024:.0f} KiB"


def _markdown(r: dict) -> str:
    rows = [r["npo_lora"]] + ([r["baseline"]] if r["baseline"] else [])
    what = {"npo-lora": "LoRA r=8 on the MLP projections", "ga-full": "every weight (the baseline)"}
    lines = [
        f"# npo-lora on a {_count(r['params'])}-parameter Llama-shaped model ({r['size']})",
        "",
        f"Measured {r['measured_at']} on {r['machine']}; torch {r['torch']}, {r['dtype']}, random weights from "
        f"config {r['config']}. Recipes as shipped (adapters/*.yaml) with stop: fixed, no divergence guard and "
        f"one evaluation at the last step; model weights on the device: {_gib(r['weights_bytes'])}.",
        "",
        "| recipe | trains | trainable parameters | seconds per 100 steps | peak GPU memory | stored output |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['recipe']} | {what.get(row['recipe'], '')} | failed: {row['error']} | | | |")
            continue
        lines.append(f"| {row['recipe']} | {what.get(row['recipe'], '')} | {row['trainable_params']:,} | "
                     f"{row['seconds_per_100_steps']:.2f} | {_gib(row['peak_bytes'])} | {_size(row['output_bytes'])} |")
    lines.append("")
    for row in rows:
        if "error" in row:
            continue
        first, second = row["runs"]
        lines.append(f"- {row['recipe']}: runs of {first['steps']} and {second['steps']} steps took "
                     f"{first['seconds']:.2f} s and {second['seconds']:.2f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--baseline", choices=["ga-full", "none"], default="ga-full")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be ≥ 1")

    import platform

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (use --device cpu for a smoke test)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from forgetd.families.causal_lm import quiet_transformers

    quiet_transformers()
    tokenizer, data = _data()
    # discarded: the process's first use of the device
    _run("npo-lora", args.size, args.device, args.dtype, args.warmup, tokenizer, data)
    npo = _timed("npo-lora", args, tokenizer, data)
    baseline = None
    if args.baseline != "none":
        try:
            baseline = _timed(args.baseline, args, tokenizer, data)
        except Exception as exc:  # e.g. out of memory: npo-lora's figures are what this bench is for
            baseline = {"recipe": args.baseline, "error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"baseline {args.baseline} failed: {baseline['error']}", flush=True)
    longer = npo["runs"][1]  # the model facts are the same in every run
    cuda = args.device.startswith("cuda")
    result = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": torch.cuda.get_device_name() if cuda else f"{platform.machine()} {os.cpu_count()} cores",
        "torch": torch.__version__,
        "size": args.size,
        "device": args.device,
        "dtype": args.dtype,
        "steps": args.steps,
        "warmup": args.warmup,
        "params": longer["params"],
        "config": longer["config"],
        "weights_bytes": longer["weights_bytes"],
        "npo_lora": npo,
        "baseline": baseline,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llm_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "llm_gpu.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

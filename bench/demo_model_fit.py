"""How well and how fast the demo's tiny LM fits its corpus (the DEFAULT TinyLMConfig).

    .venv/bin/python bench/demo_model_fit.py [--threads 2] [--out bench/results]

Trains once in-process (nothing from any hub), then reports: parameters, tokenizer vocabulary, training
seconds and steps, greedy QA accuracy on the trained people (forget candidates + retain), on the forget
candidates and retain separately, and on the holdout people (never trained: should sit near the chance
baseline). Writes bench/results/demo_model_fit.json and .md. The load average is recorded because this
machine's timings swing with whatever else runs on its two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--threads",
        default="1,2",
        help="comma-separated torch thread counts; the model is trained once per count (weights must agree)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)

    import torch
    import transformers

    from forgetd.demo.people import qa_of
    from forgetd.demo.tiny_lm import TinyLMConfig, fit_tiny_lm, load_tiny_lm, qa_accuracy

    cfg = TinyLMConfig()
    thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]

    def show(event: dict) -> None:
        if event["phase"] == "train":
            print(
                f"  step {event['step']:5d}  loss {event['loss']:.3f}  trained-QA(tf) {event['trained_qa']:.3f}"
                f"  {event['seconds']:.1f}s",
                flush=True,
            )

    runs = []
    trained = None
    for threads in thread_counts:
        print(f"training the default tiny LM (cache key {cfg.cache_key()}) with {threads} thread(s)…", flush=True)
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        this = fit_tiny_lm(cfg, progress=show, threads=threads)
        fit_seconds = time.perf_counter() - t0
        load_after = os.getloadavg()
        same = None
        if trained is None:
            trained = this
        else:
            ref, new = trained.model.state_dict(), this.model.state_dict()
            same = all(torch.equal(ref[k], new[k]) for k in ref)
        runs.append(
            {
                "threads": threads,
                "steps": this.metrics["steps"],
                "train_seconds": this.metrics["train_seconds"],
                "train_cpu_seconds": this.metrics["train_cpu_seconds"],
                "fit_seconds_total": round(fit_seconds, 2),
                "weights_identical_to_first": same,
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in load_after],
            }
        )
        print(f"  → {runs[-1]}", flush=True)
    assert trained is not None
    m = trained.metrics
    corpus = trained.corpus

    with tempfile.TemporaryDirectory() as tmp:  # evaluate the model as saved and reloaded with stock classes
        path = trained.save(Path(tmp) / "tiny-lm")
        model, tok = load_tiny_lm(path)
        torch.set_num_threads(1)
        t1 = time.perf_counter()
        acc = {
            "trained": qa_accuracy(model, tok, corpus.train_qa(exclude=cfg.exclude_ids)),
            "forget_candidates": qa_accuracy(model, tok, qa_of(corpus.forget_candidates)),
            "retain": qa_accuracy(model, tok, qa_of(corpus.retain)),
            "holdout": qa_accuracy(model, tok, corpus.holdout_qa()),
        }
        eval_seconds = time.perf_counter() - t1
        weights_mb = (path / "model.safetensors").stat().st_size / 1e6

    result = {
        "config": cfg.to_dict(),
        "cache_key": cfg.cache_key(),
        "architecture": "llama" if cfg.arch == "llama" else "gpt2",
        "params": m["params"],
        "weights_mb": round(weights_mb, 2),
        "tokenizer_vocab_size": m["vocab_size"],
        "people": {
            "trained": m["trained_people"],
            "forget_candidates": len(corpus.forget_candidates),
            "retain": len(corpus.retain),
            "holdout": len(corpus.holdout),
        },
        "train_documents": m["train_documents"],
        "steps": m["steps"],
        "train_seconds": m["train_seconds"],
        "train_cpu_seconds": m["train_cpu_seconds"],
        "threads": runs[0]["threads"],
        "runs": runs,
        "greedy_qa_eval_seconds": round(eval_seconds, 2),
        "qa_accuracy_greedy": {k: round(v, 4) for k, v in acc.items()},
        "qa_accuracy_teacher_forced": m["qa_teacher_forced_by_split"],
        "trained_qa_teacher_forced_at_stop": m["trained_qa_teacher_forced"],
        "chance_baseline": m["chance_baseline"],
        "reached_target": m["reached_target"],
        "target_qa": cfg.target_qa,
        "history": m["history"],
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpus": os.cpu_count(),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_model_fit.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Demo tiny LM fit (default TinyLMConfig)",
        "",
        f"`.venv/bin/python bench/demo_model_fit.py --threads {args.threads}`",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| architecture | {result['architecture']} ({cfg.num_layers} layers, width {cfg.hidden_size}, "
        f"{cfg.num_heads} heads, MLP {cfg.intermediate_size}, tied embeddings) |",
        f"| parameters | {result['params']:,} |",
        f"| tokenizer vocabulary | {result['tokenizer_vocab_size']} (byte-level BPE) |",
        f"| training documents | {result['train_documents']} ({result['people']['trained']} people) |",
        f"| steps (target: trained-QA ≥ {cfg.target_qa}) | {result['steps']} |",
        *(
            f"| training seconds, {r['threads']} thread(s) (wall / CPU; load avg before→after) | "
            f"{r['train_seconds']:.1f} / {r['train_cpu_seconds']:.1f} "
            f"({r['loadavg_before'][0]:.2f}→{r['loadavg_after'][0]:.2f}) |"
            for r in runs
        ),
        f"| greedy QA: trained people | {acc['trained']:.3f} |",
        f"| greedy QA: forget candidates | {acc['forget_candidates']:.3f} |",
        f"| greedy QA: retain | {acc['retain']:.3f} |",
        f"| greedy QA: holdout (never trained) | {acc['holdout']:.3f} |",
        f"| chance baseline (commonest value) | {result['chance_baseline']:.3f} |",
        "",
    ]
    (args.out / "demo_model_fit.md").write_text("\n".join(md))
    print("\n".join(md[4:]))
    print(f"wrote {args.out / 'demo_model_fit.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

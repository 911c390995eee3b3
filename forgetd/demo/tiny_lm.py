"""A tiny causal LM that has memorised the demo people, built offline and cached by config.

- ``build_tokenizer(corpus)``: a byte-level BPE trained on every person's text (holdout included, so that
  forget candidates and holdout people are tokenized alike), wrapped as a ``PreTrainedTokenizerFast`` with
  ``<s>`` (prepended automatically), ``</s>`` and ``<pad>``.
- ``train_tiny_lm(cfg, out_dir)``: a ``LlamaForCausalLM`` (or GPT-2) from a config, random init, seeded,
  trained on the corpus's training documents (texts + ``Question: … Answer: …`` strings) until its greedy
  answers to the trained questions reach ``cfg.target_qa`` (checked every ``cfg.eval_every`` steps) or
  ``cfg.max_steps``. Saved as an ordinary Hugging Face directory (safetensors + tokenizer) plus
  ``forgetd_demo.json`` (config, metrics, seconds).
- ``ensure_tiny_lm(home, cfg)``: the cached directory ``home/cache/tiny-lm-<cache_key>``, built once
  (in a temporary directory renamed into place, under a file lock).
- ``qa_accuracy(model, tokenizer, qa_pairs)``: batched greedy decoding, exact match on the answer.

torch and transformers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from forgetd.demo.people import Corpus, PeopleCorpusConfig, format_qa, format_qa_prompt, generate_corpus

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "DEMO_META_FILE",
    "TinyLMConfig",
    "build_tokenizer",
    "ensure_tiny_lm",
    "load_demo_corpus",
    "load_tiny_lm",
    "qa_accuracy",
    "read_demo_meta",
    "train_tiny_lm",
]

FORMAT_VERSION = 1  # bump when training code changes what a given config produces
DEMO_META_FILE = "forgetd_demo.json"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TinyLMConfig:
    """Everything that determines the trained weights (thread count aside: see ``train_tiny_lm``)."""

    corpus: PeopleCorpusConfig = field(default_factory=PeopleCorpusConfig)
    arch: str = "llama"  # "llama" (nn.Linear everywhere) | "gpt2" (Conv1D: LoRA needs fan_in_fan_out=True)
    vocab_size: int = 600
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 128
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    max_steps: int = 4000
    eval_every: int = 100
    target_qa: float = 0.9
    seed: int = 0
    exclude_ids: tuple[str, ...] = ()  # trained people left out (a "retrained without them" model)

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "gpt2"):
            raise ValueError(f"arch must be 'llama' or 'gpt2', not {self.arch!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if not 0.0 < self.target_qa <= 1.0:
            raise ValueError("target_qa must be in (0, 1]")
        object.__setattr__(self, "exclude_ids", tuple(sorted(set(self.exclude_ids))))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exclude_ids"] = list(self.exclude_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TinyLMConfig":
        d = dict(d)
        d["corpus"] = PeopleCorpusConfig(**d["corpus"])
        d["exclude_ids"] = tuple(d.get("exclude_ids", ()))
        return cls(**d)

    def cache_key(self) -> str:
        from forgetd.demo.people import GENERATOR_VERSION

        blob = json.dumps(
            {"format": FORMAT_VERSION, "generator": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- tokenizer
def build_tokenizer(corpus: Corpus, vocab_size: int = 600) -> "PreTrainedTokenizerFast":
    """Byte-level BPE trained offline on ``corpus.all_texts()``; ``<s>`` is prepended by the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.all_texts(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=512
    )


# ------------------------------------------------------------------------------------------- model
def _build_model(cfg: TinyLMConfig, tokenizer: "PreTrainedTokenizerFast") -> "PreTrainedModel":
    import torch

    vocab = len(tokenizer)
    common = dict(
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    if cfg.arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        mcfg = LlamaConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            max_position_embeddings=cfg.max_positions,
            rms_norm_eps=1e-5,
            **common,
        )
        return LlamaForCausalLM(mcfg)
    from transformers import GPT2Config, GPT2LMHeadModel

    mcfg = GPT2Config(
        n_embd=cfg.hidden_size,
        n_inner=cfg.intermediate_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_positions=cfg.max_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **common,
    )
    return GPT2LMHeadModel(mcfg)


# ------------------------------------------------------------------------------------------- encoding
def _encode_docs(tokenizer: "PreTrainedTokenizerFast", docs: Sequence[str], max_len: int) -> list[list[int]]:
    enc = tokenizer(list(docs), add_special_tokens=True)["input_ids"]
    out = []
    for ids in enc:
        ids = list(ids) + [tokenizer.eos_token_id]
        if len(ids) > max_len:
            raise ValueError(f"a training document has {len(ids)} tokens, more than max_positions={max_len}")
        out.append(ids)
    return out


def _pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """input_ids padded on the right with pad_id, and labels with -100 on padding."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        labels[i, : len(s)] = ids[i, : len(s)]
    return ids, labels


class _AnswerProbe:
    """Teacher-forced check of greedy answers, one forward pass per batch.

    A greedy decode yields exactly "answer</s>" iff the argmax at every answer position (given the correct
    prefix) is the next answer token and then ``</s>``. So this is an exact, slightly strict (it demands the
    canonical tokenization) and much faster stand-in for generation, used to decide when to stop training.
    """

    def __init__(self, tokenizer: "PreTrainedTokenizerFast", qa_pairs: Sequence[tuple[str, str]]) -> None:
        self.seqs: list[list[int]] = []
        self.spans: list[tuple[int, int]] = []  # [start, end) of the answer+eos tokens
        prompts = tokenizer([format_qa_prompt(q) for q, _ in qa_pairs])["input_ids"]
        fulls = tokenizer([format_qa(q, a) for q, a in qa_pairs])["input_ids"]
        for p, f in zip(prompts, fulls):
            if list(f[: len(p)]) != list(p):  # tokenization of prompt not a prefix: fall back on full string
                raise ValueError("prompt tokens are not a prefix of question+answer tokens")
            seq = list(f) + [tokenizer.eos_token_id]
            self.seqs.append(seq)
            self.spans.append((len(p), len(seq)))
        self.pad_id = tokenizer.pad_token_id

    def correct(self, model: "PreTrainedModel", batch_size: int = 256) -> list[bool]:
        import torch

        out: list[bool] = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in range(0, len(self.seqs), batch_size):
                seqs = self.seqs[i : i + batch_size]
                ids, _ = _pad_right(seqs, self.pad_id)
                pred = model(input_ids=ids).logits.argmax(-1)  # right padding + causal mask: no mask needed
                for j, (s, e) in enumerate(self.spans[i : i + batch_size]):
                    out.append(bool(torch.equal(pred[j, s - 1 : e - 1], ids[j, s:e])))
        model.train(was_training)
        return out

    def accuracy(self, model: "PreTrainedModel") -> float:
        c = self.correct(model)
        return sum(c) / max(1, len(c))


# ------------------------------------------------------------------------------------------- evaluation
def qa_accuracy(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerFast",
    qa_pairs: Sequence[tuple[str, str]],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 128,
    return_predictions: bool = False,
) -> float | tuple[float, list[str]]:
    """Fraction of questions whose greedy answer (up to ``</s>`` or a newline) equals the expected answer
    exactly (after stripping spaces). Prompts are ``format_qa_prompt(question)``, left-padded in batches."""
    import torch

    if not qa_pairs:
        return (0.0, []) if return_predictions else 0.0
    preds: list[str] = []
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.no_grad():
            for i in range(0, len(qa_pairs), batch_size):
                chunk = qa_pairs[i : i + batch_size]
                enc = tokenizer([format_qa_prompt(q) for q, _ in chunk], return_tensors="pt", padding=True)
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new = gen[:, enc["input_ids"].shape[1] :]
                for row in new.tolist():
                    if tokenizer.eos_token_id in row:
                        row = row[: row.index(tokenizer.eos_token_id)]
                    text = tokenizer.decode(row, skip_special_tokens=True)
                    preds.append(text.split("\n")[0].strip())
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    acc = sum(p == a.strip() for p, (_, a) in zip(preds, qa_pairs)) / len(qa_pairs)
    return (acc, preds) if return_predictions else acc


# ------------------------------------------------------------------------------------------- training
def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless epochs of batches of similar length (little padding): shuffle, sort within windows of
    16 batches by length, cut into batches, shuffle the batches. Deterministic given ``rng``."""
    n = len(lengths)
    batch_size = max(1, min(batch_size, n))
    window = batch_size * 16
    while True:
        order = list(range(n))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for w in range(0, n, window):
            chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
            batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
        rng.shuffle(batches)
        yield from batches


def train_tiny_lm(
    cfg: TinyLMConfig | None = None,
    out_dir: Path | str | None = None,
    progress: Progress | None = None,
    *,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train the tiny LM and (if ``out_dir``) save it there. Returns the metrics written to
    ``forgetd_demo.json``. ``threads`` sets ``torch.set_num_threads`` for the duration (results are
    deterministic for a given config and thread count)."""
    import torch

    cfg = cfg or TinyLMConfig()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(cfg, Path(out_dir) if out_dir is not None else None, progress)
    finally:
        torch.set_num_threads(old_threads)


def _train(cfg: TinyLMConfig, out_dir: Path | None, progress: Progress | None) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    corpus = generate_corpus(cfg.corpus)
    tokenizer = build_tokenizer(corpus, cfg.vocab_size)
    model = _build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())

    docs = corpus.training_documents(exclude=cfg.exclude_ids)
    seqs = _encode_docs(tokenizer, docs, cfg.max_positions)
    trained_qa = corpus.train_qa(exclude=cfg.exclude_ids)
    probe = _AnswerProbe(tokenizer, trained_qa)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, then constant
        return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))

    rng = random.Random(f"tiny-lm-{cfg.seed}")
    batches = _batches([len(x) for x in seqs], cfg.batch_size, rng)
    model.train()
    step, probe_acc, loss_val = 0, 0.0, float("nan")
    history: list[dict[str, float]] = []
    t_train, cpu_train, n_tokens = time.perf_counter(), time.process_time(), 0
    while step < cfg.max_steps:
        idx = next(batches)
        ids, labels = _pad_right([seqs[i] for i in idx], tokenizer.pad_token_id)
        n_tokens += ids.numel()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_val = float(loss.detach())
        if not torch.isfinite(loss.detach()):
            raise RuntimeError(f"tiny LM training diverged at step {step} (loss {loss_val})")
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            probe_acc = probe.accuracy(model)
            elapsed = time.perf_counter() - t_train
            history.append({"step": step, "loss": round(loss_val, 4), "qa": round(probe_acc, 4),
                            "seconds": round(elapsed, 2)})
            if progress:
                progress({"phase": "train", "step": step, "max_steps": cfg.max_steps, "loss": loss_val,
                          "trained_qa": probe_acc, "seconds": elapsed})
            if probe_acc >= cfg.target_qa:
                break
    train_seconds = time.perf_counter() - t_train
    train_cpu_seconds = time.process_time() - cpu_train
    model.eval()
    metrics: dict[str, Any] = {
        "params": n_params,
        "vocab_size": len(tokenizer),
        "steps": step,
        "final_loss": loss_val,
        "trained_qa_teacher_forced": probe_acc,
        "train_seconds": round(train_seconds, 3),
        "train_cpu_seconds": round(train_cpu_seconds, 3),
        "train_tokens": n_tokens,
        "total_seconds": round(time.perf_counter() - t0, 3),
        "threads": torch.get_num_threads(),
        "train_documents": len(seqs),
        "trained_people": len(corpus.train_people(cfg.exclude_ids)),
        "reached_target": probe_acc >= cfg.target_qa,
        "history": history,
    }
    if out_dir is not None:
        _save(model, tokenizer, cfg, metrics, out_dir)
    if progress:
        progress({"phase": "done", **{k: v for k, v in metrics.items() if k != "history"}})
    return metrics


def _save(model, tokenizer, cfg: TinyLMConfig, metrics: dict[str, Any], out_dir: Path) -> None:
    import torch
    import transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    meta = {
        "kind": "forgetd-demo-tiny-lm",
        "cache_key": cfg.cache_key(),
        "config": cfg.to_dict(),
        "corpus_config_hash": cfg.corpus.config_hash(),
        "metrics": metrics,
        "train_seconds": metrics["train_seconds"],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "qa_format": {"prompt": format_qa_prompt("{question}"), "full": format_qa("{question}", "{answer}")},
    }
    (out_dir / DEMO_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------- cache
def _default_config() -> TinyLMConfig:
    return TinyLMConfig()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_tiny_lm(
    home: Path | str,
    cfg: TinyLMConfig | None = None,
    progress: Progress | None = None,
    *,
    threads: int | None = None,
) -> Path:
    """The cached model directory ``home/cache/tiny-lm-<cache_key>``, trained first if it is missing.

    Concurrent callers wait on a lock file beside it; a half-built directory is never visible (it is built
    under a temporary name and renamed)."""
    cfg = cfg or _default_config()
    cache = Path(home) / "cache"
    final = cache / f"tiny-lm-{cfg.cache_key()}"
    if (final / DEMO_META_FILE).is_file():
        return final
    with _file_lock(cache / f".tiny-lm-{cfg.cache_key()}.lock"):
        if (final / DEMO_META_FILE).is_file():
            return final
        if final.exists():  # left over from an interrupted manual copy: rebuild
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tiny-lm-{cfg.cache_key()}-", dir=cache))
        try:
            train_tiny_lm(cfg, tmp, progress, threads=threads)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


# ------------------------------------------------------------------------------------------- loading
def read_demo_meta(model_dir: Path | str) -> dict[str, Any]:
    return json.loads((Path(model_dir) / DEMO_META_FILE).read_text())


def load_demo_corpus(model_dir: Path | str) -> Corpus:
    """The corpus a cached tiny LM was trained on (regenerated from its saved config)."""
    return generate_corpus(TinyLMConfig.from_dict(read_demo_meta(model_dir)["config"]).corpus)


def load_tiny_lm(model_dir: Path | str) -> tuple["PreTrainedModel", "PreTrainedTokenizerFast"]:
    """Stock ``from_pretrained`` loading (local files only), model in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model.eval()
    return model, tokenizer

"""The demo's tiny causal LM: offline tokenizer, seeded training, stock HF save/load, cache by config.

A deliberately small config (20 people, 2 layers of width 64) keeps the file to seconds; the default
config's fit is measured by bench/demo_model_fit.py.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never touch a hub

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from forgetd.demo import tiny_lm  # noqa: E402
from forgetd.demo.people import PeopleCorpusConfig, format_qa_prompt, generate_corpus  # noqa: E402
from forgetd.demo.tiny_lm import (  # noqa: E402
    DEMO_META_FILE,
    TinyLMConfig,
    build_tokenizer,
    ensure_tiny_lm,
    fit_tiny_lm,
    greedy_generate,
    load_demo_corpus,
    load_tiny_lm,
    qa_accuracy,
    qa_correct_teacher_forced,
    read_demo_meta,
)

SMALL = TinyLMConfig(
    corpus=PeopleCorpusConfig(n_people=20, n_holdout=4, n_forget_candidates=4),
    vocab_size=700,
    hidden_size=64,
    num_layers=2,
    num_heads=2,
    intermediate_size=128,
    batch_rows=4,
    lr=3e-3,
    max_steps=300,
    eval_every=25,
    target_qa=0.5,
    seed=0,
)
THREADS = 1  # one thread: bit-reproducible and immune to OpenMP spin-waits on a busy 2-core box


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("forgetd-home")


@pytest.fixture(scope="module")
def built(home):
    """The SMALL model, trained once through the cache."""
    events = []
    path = ensure_tiny_lm(home, SMALL, progress=events.append)
    return path, events


@pytest.fixture(scope="module")
def refit():
    """A second, in-memory training of the same config."""
    return fit_tiny_lm(SMALL, threads=THREADS)


def test_tokenizer_is_built_offline_with_special_tokens():
    corpus = generate_corpus(SMALL.corpus)
    tok = build_tokenizer(corpus, 700)
    assert len(tok) == 700
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    text = corpus.people[0].texts[0]
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    # a prompt's tokens are a prefix of prompt+answer for every question (answers tokenized on their own)
    for q, a in corpus.train_qa() + corpus.holdout_qa():
        p = tok(format_qa_prompt(q))["input_ids"]
        assert tok(f"{format_qa_prompt(q)} {a}")["input_ids"][: len(p)] == p


def test_cache_dir_is_an_ordinary_hf_directory(built, home):
    path, events = built
    assert path == home / "cache" / f"tiny-lm-{SMALL.cache_key()}"
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", DEMO_META_FILE} <= names
    assert not any(n.endswith(".bin") for n in names)
    assert not [p for p in (home / "cache").iterdir() if p.is_dir() and p != path]  # no temp dir left
    meta = read_demo_meta(path)
    assert meta["cache_key"] == SMALL.cache_key()
    assert TinyLMConfig.from_dict(meta["config"]) == SMALL
    m = meta["metrics"]
    assert m["train_seconds"] > 0 and m["steps"] >= SMALL.eval_every and m["params"] > 0
    assert m["reached_target"] and m["trained_qa_teacher_forced"] >= SMALL.target_qa
    assert set(m["qa_teacher_forced_by_split"]) == {"forget_candidates", "retain", "holdout"}
    assert [e["phase"] for e in events][-1] == "done" and events[0]["phase"] == "train"
    corpus = load_demo_corpus(path)
    assert [p.attributes for p in corpus.people] == [p.attributes for p in generate_corpus(SMALL.corpus).people]


def test_stock_from_pretrained_gives_identical_logits(built, refit):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = built
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model.eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    texts = refit.corpus.train_texts()[:8] + refit.corpus.holdout_texts()[:4]
    assert tok(texts)["input_ids"] == refit.tokenizer(texts)["input_ids"]
    assert tok.eos_token_id == refit.tokenizer.eos_token_id and tok.pad_token_id == refit.tokenizer.pad_token_id
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            assert torch.equal(model(input_ids=ids).logits, refit.model(input_ids=ids).logits)


def test_same_seed_trains_identical_weights(built, refit):
    from safetensors.torch import load_file

    path, _ = built
    saved = load_file(str(path / "model.safetensors"))
    live = refit.model.state_dict()
    assert saved, "no tensors saved"
    for name, tensor in saved.items():
        assert torch.equal(tensor, live[name]), name
    assert refit.metrics["steps"] == read_demo_meta(path)["metrics"]["steps"]


def test_different_seed_trains_different_weights():
    a = fit_tiny_lm(replace(SMALL, max_steps=2), threads=THREADS).model.state_dict()
    b = fit_tiny_lm(replace(SMALL, max_steps=2, seed=1), threads=THREADS).model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_second_ensure_reuses_the_cache(built, home, monkeypatch):
    path, _ = built
    stamp = (path / DEMO_META_FILE).stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("ensure_tiny_lm retrained a cached model")

    monkeypatch.setattr(tiny_lm, "train_tiny_lm", boom)
    monkeypatch.setattr(tiny_lm, "_train", boom)
    t0 = time.perf_counter()
    again = ensure_tiny_lm(home, SMALL)
    assert time.perf_counter() - t0 < 1.0
    assert again == path
    assert (path / DEMO_META_FILE).stat().st_mtime_ns == stamp


def test_cached_builds_run_on_one_thread_whatever_the_callers_count(tmp_path):
    """A cache key is the config alone, so it must name one set of weights: a bench at two threads and the
    demo at one used to leave whichever model was built first (they differ on some machines)."""
    torch.set_num_threads(2)
    try:
        path = ensure_tiny_lm(tmp_path, replace(SMALL, max_steps=2, eval_every=1))
        assert torch.get_num_threads() == 2  # the caller's count comes back
    finally:
        torch.set_num_threads(THREADS)
    assert read_demo_meta(path)["metrics"]["threads"] == 1
    # an entry an earlier version built on two threads (the benches did) is built again, not reused
    meta = json.loads((path / DEMO_META_FILE).read_text())
    meta["metrics"]["threads"] = 2
    (path / DEMO_META_FILE).write_text(json.dumps(meta))
    assert ensure_tiny_lm(tmp_path, replace(SMALL, max_steps=2, eval_every=1)) == path
    assert read_demo_meta(path)["metrics"]["threads"] == 1


def test_finished_build_needs_a_one_thread_meta_file(tmp_path):
    from forgetd.demo.cache import finished_build

    meta = tmp_path / DEMO_META_FILE
    assert not finished_build(meta)  # missing: still building, or killed
    for text in ("{", "[]", '{"metrics": null}', '{"metrics": [1]}', '{"metrics": {"threads": 2}}'):
        meta.write_text(text)
        assert not finished_build(meta), text
    meta.write_text('{"metrics": {"threads": 1}}')
    assert finished_build(meta)


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(cfg, progress):
        raise RuntimeError("training crashed")

    monkeypatch.setattr(tiny_lm, "_train", boom)
    with pytest.raises(RuntimeError, match="crashed"):
        ensure_tiny_lm(tmp_path, replace(SMALL, seed=7))
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def test_cache_key_tracks_the_config():
    keys = {
        SMALL.cache_key(),
        replace(SMALL, seed=1).cache_key(),
        replace(SMALL, hidden_size=32).cache_key(),
        replace(SMALL, lr=1e-3).cache_key(),
        replace(SMALL, corpus=replace(SMALL.corpus, seed=1)).cache_key(),
        replace(SMALL, exclude_ids=("p0001",)).cache_key(),
        TinyLMConfig().cache_key(),
    }
    assert len(keys) == 7
    assert replace(SMALL, exclude_ids=("p0002", "p0001")) == replace(SMALL, exclude_ids=("p0001", "p0002"))
    assert SMALL.cache_key() == TinyLMConfig.from_dict(json.loads(json.dumps(SMALL.to_dict()))).cache_key()


def test_greedy_qa_accuracy_matches_teacher_forced_and_batching(built):
    path, _ = built
    model, tok = load_tiny_lm(path)
    corpus = load_demo_corpus(path)
    qa = corpus.train_qa()
    acc, preds = qa_accuracy(model, tok, qa, return_predictions=True, batch_size=16)
    tf = qa_correct_teacher_forced(model, tok, qa)
    greedy = [p == a for p, (_, a) in zip(preds, qa)]
    assert all(g for g, t in zip(greedy, tf) if t)  # teacher-forced correct ⇒ greedy correct
    assert abs(acc - sum(tf) / len(tf)) <= 0.02
    assert acc >= SMALL.target_qa - 0.02
    one_by_one = [qa_accuracy(model, tok, [x], return_predictions=True)[1][0] for x in qa[:12]]
    assert one_by_one == preds[:12]
    assert qa_accuracy(model, tok, corpus.holdout_qa()) <= 0.25  # never-seen people: near chance
    assert qa_accuracy(model, tok, []) == 0.0
    # the KV-cached batched loop decodes what transformers' own generate() decodes
    prompts = [format_qa_prompt(q) for q, _ in qa[:6]] + [corpus.train_texts()[0][:20]]
    ours = greedy_generate(model, tok, prompts, max_new_tokens=8)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    gen = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    theirs = []
    for row in gen[:, enc["input_ids"].shape[1] :].tolist():
        row = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
        theirs.append(tok.decode(row, skip_special_tokens=True))
    assert ours == theirs


def test_gpt2_arch_and_excluded_people(tmp_path):
    corpus = generate_corpus(SMALL.corpus)
    gone = (corpus.forget_candidates[0].id,)
    cfg = replace(SMALL, arch="gpt2", max_steps=3, exclude_ids=gone)
    trained = fit_tiny_lm(cfg, threads=THREADS)
    assert trained.metrics["trained_people"] == len(corpus.trained) - 1
    assert "excluded" in trained.metrics["qa_teacher_forced_by_split"]
    path = trained.save(tmp_path / "gpt2")
    model, tok = load_tiny_lm(path)
    assert type(model).__name__ == "GPT2LMHeadModel"
    ids = tok("hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, trained.model(input_ids=ids).logits)
    prompts = [format_qa_prompt(q) for q, _ in corpus.holdout_qa()[:3]]
    batched = greedy_generate(model, tok, prompts, max_new_tokens=4)
    assert batched == [greedy_generate(model, tok, [p], max_new_tokens=4)[0] for p in prompts]


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        TinyLMConfig(arch="bert")
    with pytest.raises(ValueError):
        TinyLMConfig(hidden_size=65, num_heads=2)


def test_qa_correct_argmax_at_answer_positions_matches_full_argmax(built):
    """forgetd.verify's teacher-forced check takes the argmax only where answer tokens are predicted; it
    must give what the argmax over every position gives, at any batch size, right and wrong answers mixed."""
    from forgetd.families.causal_lm import format_prompt, format_qa
    from forgetd.verify.causal_lm import qa_correct

    path, _ = built
    model, tok = load_tiny_lm(path)
    qa = load_demo_corpus(path).train_qa()[:24]
    mixed = qa[:12] + [(q, qa[(i + 1) % len(qa)][1]) for i, (q, _) in enumerate(qa[12:])]
    expected = []
    with torch.no_grad():
        for q, a in mixed:
            prompt = tok(format_prompt(q))["input_ids"]
            full = tok(format_qa(q, a))["input_ids"] + [tok.eos_token_id]
            assert full[: len(prompt)] == prompt
            pred = model(input_ids=torch.tensor([full])).logits[0].argmax(-1)
            expected.append(pred[len(prompt) - 1 : len(full) - 1].tolist() == full[len(prompt) :])
    assert True in expected and False in expected
    assert qa_correct(model, tok, mixed) == expected
    assert qa_correct(model, tok, mixed, batch_size=5) == expected



def _logprobs_from_full_logits(model, tok, texts):
    """Every text on its own, logits at every position: what token_logprobs must give."""
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            out.append(logp.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1).tolist())
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2", "unlisted"])
def test_token_logprobs_by_length_and_at_scored_positions_match_full_logits(built, arch):
    """forgetd.verify batches texts by length and projects to the vocabulary only where a token is scored
    (llama, gpt2: the head applied to the last hidden state); other model types take the full logits. Each
    text's log-probabilities must be those of a forward pass over that text alone, in the caller's order."""
    import transformers

    from forgetd.verify import causal_lm as metrics

    path, _ = built
    model, tok = load_tiny_lm(path)
    if arch == "gpt2":
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128)).eval()
    if arch == "unlisted":
        model.config.model_type = "llama-with-a-scaled-head"
    assert (model.config.model_type in metrics._PLAIN_HEAD) == (arch != "unlisted")
    corpus = load_demo_corpus(path)
    texts = [t for p in corpus.people[:6] for t in p.texts][:18]
    texts = texts[::2] + [t + " " + t for t in texts[1::2]]  # lengths mixed, so sorting reorders them
    assert sorted(texts, key=lambda t: len(tok(t)["input_ids"])) != texts
    got = metrics.token_logprobs(model, tok, texts, batch_size=4)
    want = _logprobs_from_full_logits(model, tok, texts)
    assert [len(r) for r in got] == [len(r) for r in want]
    assert max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w)) < 1e-4

def test_models_load_without_hub_kernels(built):
    """transformers would otherwise swap layers for kernels from the Hugging Face hub (no hub downloads)."""
    from forgetd.families import causal_lm

    path, _ = built
    assert causal_lm.load_model(path).use_kernels is False
    assert load_tiny_lm(path)[0].use_kernels is False


def test_lazily_encoded_reads_like_encode_and_encodes_only_what_is_read(built):
    from forgetd.training.common import LazilyEncoded, encode

    path, _ = built
    _, tok = load_tiny_lm(path)
    texts = load_demo_corpus(path).train_texts()[:10]

    class Counting:  # the real tokenizer, counting the texts it is asked to encode
        def __init__(self):
            self.texts = 0
            self.eos_token_id = tok.eos_token_id

        def __call__(self, batch):
            self.texts += len(batch)
            return tok(batch)

    counting = Counting()
    lazy = LazilyEncoded(counting, texts, max_len=8)
    assert len(lazy) == 10 and bool(lazy) and counting.texts == 0
    eager = encode(tok, texts, max_len=8)
    assert lazy[3] == eager[3] and lazy[-1] == eager[-1] and counting.texts == 2
    assert lazy[3] == eager[3] and counting.texts == 2  # read again: not encoded again
    assert lazy[2:5] == eager[2:5] and counting.texts == 4
    assert list(lazy) == eager and counting.texts == 10
    with pytest.raises(IndexError):
        lazy[10]

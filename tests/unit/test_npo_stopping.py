"""npo-lora's stopping on the test LM. Band bisection: when one training step jumps the MIA band, the search
along the segment between the two evaluated adapters stops at a point the rule accepts, and leaves the model
there. Reference reuse: far above the band the reference set is not scored again."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from forgetd.training.common import (  # noqa: E402
    StopCheck,
    encode_forget,
    load_trainable,
    lora_config,
    pad,
    sequence_nll,
    trainable_state,
)
from forgetd.training.recipes.npo_lora import _bisect, _straddles  # noqa: E402
from forgetd.training.registry import AdapterSpec, get_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def jumped(tiny_lm):
    """(model, tokenizer, data, weights before, weights after) for one person, where 'after' is a few
    large gradient-ascent steps past the band (the MIA AUC far below 0.5) and 'before' is the base."""
    from peft import get_peft_model

    from forgetd.datasets import load_dataset_file
    from forgetd.families import causal_lm

    model_dir, dataset, people = tiny_lm
    data = causal_lm.forget_data(load_dataset_file(dataset), [{"corpus_ids": [people[0]]}])
    tokenizer = causal_lm.load_tokenizer(model_dir)
    torch.manual_seed(0)
    base = causal_lm.load_model(model_dir)
    model = get_peft_model(base, lora_config(base, AdapterSpec(type="lora", r=4, alpha=8)))
    before = trainable_state(model)
    ids, mask, labels = pad(encode_forget(tokenizer, data), tokenizer.pad_token_id)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    stop = _stop(data)
    for _ in range(40):
        model.train()
        loss = -sequence_nll(model, ids, mask, labels, mean=True).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if stop.measure(model, tokenizer)["mia_auc"] < 0.2:
            break
    return model, tokenizer, data, before, trainable_state(model)


def _stop(data, **kw) -> StopCheck:
    calibration = data.calibration_half()
    return StopCheck(forget_qa=data.forget_qa, forget_texts=data.forget_texts, reference_qa=calibration.reference_qa,
                     reference_texts=calibration.reference_texts, qa_margin=1.0, mia_margin=0.05, **kw)


def test_straddling_is_a_jump_across_the_band_either_way():
    band = SimpleNamespace(mia_centre=0.5, mia_margin=0.05)
    assert _straddles({"mia_auc": 0.9}, {"mia_auc": 0.3}, band)
    assert _straddles({"mia_auc": 0.3}, {"mia_auc": 0.6}, band)
    assert not _straddles({"mia_auc": 0.9}, {"mia_auc": 0.5}, band)  # landed inside: the rule itself decides
    assert not _straddles({"mia_auc": 0.9}, {"mia_auc": 0.7}, band)
    # the band sits where an unseen person's AUC is estimated to be, not at 0.5
    high = SimpleNamespace(mia_centre=0.65, mia_margin=0.05)
    assert _straddles({"mia_auc": 0.9}, {"mia_auc": 0.55}, high)
    assert not _straddles({"mia_auc": 0.9}, {"mia_auc": 0.65}, high)
    assert not _straddles({"mia_auc": 0.9}, {"mia_auc": 0.55}, SimpleNamespace(mia_centre=0.55, mia_margin=0.05))


def test_the_search_stops_inside_the_band_and_leaves_the_model_there(jumped):
    model, tokenizer, data, before, after = jumped
    stop = _stop(data)
    load_trainable(model, before)
    start = stop.measure(model, tokenizer)
    load_trainable(model, after)
    end = stop.measure(model, tokenizer)
    assert start["mia_auc"] > 0.55 and end["mia_auc"] < 0.45, (start, end)

    found = _bisect(model, tokenizer, stop, (start, before), 8)
    assert found is not None
    t, measured = found
    assert 0.0 < t < 1.0 and abs(measured["mia_auc"] - 0.5) <= 0.05
    # the model holds exactly the interpolated weights, and they measure as reported
    for name, value in trainable_state(model).items():
        assert torch.equal(value, torch.lerp(before[name], after[name], t))
    assert stop.measure(model, tokenizer)["mia_auc"] == measured["mia_auc"]


def test_a_crossing_the_rule_refuses_leaves_the_model_where_training_was(jumped):
    model, tokenizer, data, before, after = jumped
    # a retain floor no sample can reach: every point in the band is refused
    stop = _stop(data, retain_qa=data.retain_qa[:16], retain_floor=1.01)
    load_trainable(model, before)
    start = stop.measure(model, tokenizer)
    load_trainable(model, after)
    assert _bisect(model, tokenizer, stop, (start, before), 8) is None
    for name, value in trainable_state(model).items():
        assert torch.equal(value, after[name])


def test_reference_scores_are_reused_only_far_above_the_band(jumped):
    from forgetd.verify.causal_lm import mia_auc

    model, tokenizer, data, before, after = jumped
    calibration = data.calibration_half()
    load_trainable(model, before)  # the base: the forget set far above the band
    stop = _stop(data, reuse_reference_above=0.8)
    first, second = stop.measure(model, tokenizer), stop.measure(model, tokenizer)
    assert "reference_reused" not in first and second["reference_reused"] == 1.0
    assert second["mia_auc"] == first["mia_auc"] == mia_auc(model, tokenizer, data.forget_texts, calibration.reference_texts)
    load_trainable(model, after)  # far below: scored afresh, and the AUC is the one a fresh StopCheck measures
    low = stop.measure(model, tokenizer)
    assert "reference_reused" not in low and low["mia_auc"] == _stop(data).measure(model, tokenizer)["mia_auc"]
    # with earlier requests held, never reused (they sit in the band, where stale scores could mislead)
    load_trainable(model, before)
    held = _stop(data, reuse_reference_above=0.8, kept=[(data.forget_texts, data.forget_qa)])
    held.measure(model, tokenizer)
    assert "reference_reused" not in held.measure(model, tokenizer)
    # off by default
    plain = _stop(data)
    plain.measure(model, tokenizer)
    assert "reference_reused" not in plain.measure(model, tokenizer)


def _direction(entry: dict, centre: float, margin: float) -> tuple[bool, bool]:
    """The forget texts' (pushed, pulled back) after the evaluation `entry` records."""
    return entry["mia_auc"] > centre + margin, entry["mia_auc"] < centre - margin


def test_moments_are_cleared_exactly_when_the_forget_texts_change_direction(tiny_lm, tmp_path):
    from forgetd.datasets import load_dataset_file
    from forgetd.families import causal_lm

    model_dir, dataset, people = tiny_lm
    data = causal_lm.forget_data(load_dataset_file(dataset), [{"corpus_ids": [people[0]]}])
    tokenizer = causal_lm.load_tokenizer(model_dir)
    histories = {}
    for on in (True, False):
        # no bisection and no retain wait: the run crosses the band and has to come back by training
        recipe = get_recipe(REPO / "adapters", "npo-lora", reset_moments_on_switch=on, bisect=0,
                            stop_retain_ratio=0.0, max_steps=40)
        result = recipe.module().train(recipe, model=causal_lm.load_model(model_dir), tokenizer=tokenizer,
                                       data=data, out_dir=tmp_path / str(on))
        histories[on] = [h for h in result["history"] if "interpolated" not in h]
        centre = result["mia_centre"]
    margin = recipe.train.stop_mia_margin
    history = histories[True]
    changes = [i for i in range(1, len(history))
               if _direction(history[i], centre, margin) != _direction(history[i - 1], centre, margin)]
    assert changes, history  # the run changed direction at least once: the test has something to check
    assert [i for i, h in enumerate(history) if h.get("moments_reset")] == changes
    assert not any(h.get("moments_reset") for h in histories[False])


def test_earlier_requests_are_held_around_their_own_estimates(jumped):
    model, tokenizer, data, before, after = jumped
    load_trainable(model, before)  # the base: the person far above any band
    own = _stop(data).measure(model, tokenizer)["mia_auc"]
    group = [(data.forget_texts, data.forget_qa)]

    def verdict(centre: float) -> tuple[list[int], list[int]]:
        stop = _stop(data, kept=group, kept_centres=[centre])
        stop.measure(model, tokenizer)
        return stop.last_revived, stop.last_sunk

    assert verdict(own) == ([], [])
    assert verdict(own - 0.2) == ([0], [])  # above its band: drifted back
    assert verdict(own + 0.2) == ([], [0])  # below it: sunk


def test_nothing_is_pushed_while_the_forget_texts_are_pulled_back(tiny_lm, tmp_path):
    """Below the band with the answers gone, the NPO term is off and only the pull-back moves the texts:
    kept on, the two cancelled out and held a person under the band until max_steps."""
    from forgetd.datasets import load_dataset_file
    from forgetd.families import causal_lm

    model_dir, dataset, people = tiny_lm
    tokenizer = causal_lm.load_tokenizer(model_dir)
    below = []
    for person in people[:3]:
        data = causal_lm.forget_data(load_dataset_file(dataset), [{"corpus_ids": [person]}])
        # no bisection and no retain wait: a run that jumps the band has to come back by training
        recipe = get_recipe(REPO / "adapters", "npo-lora", bisect=0, stop_retain_ratio=0.0, max_steps=40)
        result = recipe.module().train(recipe, model=causal_lm.load_model(model_dir), tokenizer=tokenizer,
                                       data=data, out_dir=tmp_path / person)
        centre, margin = result["mia_centre"], recipe.train.stop_mia_margin
        below += [h for h in result["history"]
                  if "pushed" in h and h["mia_auc"] < centre - margin and h["forget_qa_acc"] == 0.0]
    assert below  # some run was pulled back with its answers gone: the test has something to check
    assert all(h["pushed"] == 0 for h in below), below

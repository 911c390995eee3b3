"""Text-to-image concept erasure through the same requests, jobs, store, composition, alias, lineage and
audit code as every other family (`api.tick`), on the small test configuration of the demo shapes model:
erase "circle" with the `spm` recipe, check the served checkpoint against the verifier, and draw with
`api.generate` in both serving modes.

The test model (trained in about a minute, 92% circles) is weaker than the demo model, and the CI budget
allows 250 SPM steps at η = 2 and λ = 1: measured 10-12% circles left after it (bench/t2i_erasure.py measures the
demo model against the issue's 10% / 20% targets), so this test's policy asks for 20% / 30%. What it
checks is that the family runs on the shared machinery and that verification decides with the verifier."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

pytest.importorskip("diffusers")

from forgetd import api  # noqa: E402
from forgetd.db.models import Adapter, Job  # noqa: E402
from forgetd.errors import InputError  # noqa: E402
from tests.conftest import REPO, edit_recipe, shapes_test_home  # noqa: E402

POLICY = """
name: concepts
applies_to: {kind: concept}
deadline: {rule: calendar-month, extension_max: P2M}
identity_required: false
approval: {required: false}
recipes: {text_to_image: spm}
verification: {erase_rate_max: 0.20, synonym_erase_rate_max: 0.30, other_acc_min_ratio: 0.90}
compose: {cadence: "*/15 * * * *", max_batch: 16}
retention: {shred_payload_after: P30D}
"""


@pytest.fixture
def db_url(sqlite_url):
    # the family is what is under test here; the database layer runs on PostgreSQL in the other pipeline tests
    return sqlite_url


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory):
    from forgetd.demo import shapes

    # shared with tests/unit/test_t2i_family.py: cached builds are one-thread, so either module may build it
    root = shapes.ensure_shapes_t2i(shapes_test_home(tmp_path_factory), shapes.ShapesConfig.for_tests())
    return shapes.model_path(root), shapes.dataset_path(root)


def test_registration_checks_the_pipeline_directory(shapes_model, tmp_path):
    from forgetd.errors import InputError
    from forgetd.families import family_module

    model_dir, _ = shapes_model
    check = family_module("text_to_image").check_model_dir
    check(model_dir)
    for other in ("causal_lm", "image_classifier", "tabular_classifier"):
        with pytest.raises(InputError):
            family_module(other).check_model_dir(model_dir)
    copy = Path(shutil.copytree(model_dir, tmp_path / "copy"))
    shutil.rmtree(copy / "verifier")
    with pytest.raises(InputError, match="no verifier/config.json"):
        check(copy)
    shutil.copytree(model_dir / "verifier", copy / "verifier")
    unet = copy / "unet" / "diffusion_pytorch_model.safetensors"
    with unet.open("r+b") as f:
        f.truncate(unet.stat().st_size - 1)
    with pytest.raises(InputError, match="unet/diffusion_pytorch_model.safetensors is cut short"):
        check(copy)
    shutil.rmtree(copy / "scheduler")
    with pytest.raises(InputError, match="no scheduler/"):
        check(copy)


def _context(settings, tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "concepts.yaml").write_text(POLICY)
    adapters = tmp_path / "adapters"
    shutil.copytree(REPO / "adapters", adapters)
    edit_recipe(adapters / "spm.yaml", erase_guidance=2.0, retain_weight=1.0, max_steps=250, eval_images=4,
                pool_images=4)
    return api.open_context(replace(settings, policies_dir=policies, adapters_dir=adapters))


def _erase(ctx, concept: str) -> dict:
    record = api.request_submit(ctx, {"model": "shapes", "policy": "concepts", "subject": "rights-team@example.org",
                                      "forget": {"concept": concept}})
    report = api.tick(ctx)
    return {"id": record["id"], "report": report, "shown": api.request_show(ctx, record["id"])}


def _served_metrics(ctx, concepts: list[str]) -> dict:
    from forgetd import pipeline, serving
    from forgetd.db.models import Model
    from forgetd.families import text_to_image as family

    with ctx.session() as s:
        model = s.execute(select(Model).where(Model.name == "shapes")).scalar_one()
        served = serving.served_checkpoint(s, model)
        weights = pipeline.checkpoint_dir(ctx, served)
        base = pipeline.checkpoint_dir(ctx, serving.get_checkpoint(s, model, 0))
        dataset = pipeline._dataset(ctx, model)
    data = family.forget_data(dataset, [{"concept": c} for c in concepts]).verification_half()
    verifier = family.load_tokenizer(base)
    original = family.evaluate(family.load_model(base), verifier, data)
    return {"version": served.version, "original": original,
            "served": family.evaluate(family.load_model(weights), verifier, data, original=original)}


def test_a_synonym_of_a_concept_already_requested_is_a_duplicate(settings, tmp_path, shapes_model):
    """forget_data erases "disc" as "circle": filed by the same subject, it is the same demand, and used to
    become a second request (a second adapter for the same concept)."""
    model_dir, dataset_path = shapes_model
    ctx = _context(settings, tmp_path)
    api.model_register(ctx, "shapes", "text_to_image", str(model_dir), dataset=str(dataset_path))

    def submit(concept: str, subject: str = "rights-team@example.org") -> dict:
        return api.request_submit(ctx, {"model": "shapes", "policy": "concepts", "subject": subject,
                                        "forget": {"concept": concept}})

    first = submit("circle")
    assert submit("Disc")["duplicate_of"] == first["id"]
    assert submit("box")["duplicate_of"] is None
    assert submit("disc", subject="another-studio@example.org")["duplicate_of"] is None


def test_concepts_are_erased_through_the_pipeline(settings, tmp_path, shapes_model):
    import numpy as np
    from PIL import Image

    model_dir, dataset_path = shapes_model
    ctx = _context(settings, tmp_path)
    api.model_register(ctx, "shapes", "text_to_image", str(model_dir), dataset=str(dataset_path))

    first = _erase(ctx, "circle")
    assert first["shown"]["status"] == "completed", first["shown"]["status_reason"]
    measured = _served_metrics(ctx, ["circle"])
    assert measured["version"] == 1
    assert measured["original"]["erase_rate"] >= 0.8  # the test model draws circles before
    assert measured["served"]["erase_rate"] <= 0.20 and measured["served"]["synonym_erase_rate"] <= 0.30
    assert measured["served"]["other_acc_ratio"] >= 0.90
    with ctx.session() as s:
        adapter = s.execute(select(Adapter)).scalar_one()
        assert adapter.recipe == "spm" and adapter.rank == 1
        kinds = [j.kind for j in s.execute(select(Job).order_by(Job.id)).scalars()]
    assert {"train", "evaluate", "compose", "promote"} <= set(kinds)
    edges = {e["relation"] for e in api.lineage_request(ctx, first["id"])["edges"]}
    assert {"trained_for", "fulfils"} <= edges

    # Serving: the static merge and facilitated transport both draw from the served checkpoint.
    for mode in ("merged", "dynamic"):
        out = tmp_path / f"{mode}.png"
        result = api.generate(ctx, "shapes", "a red circle", out, mode=mode, n=4, seed=3)
        assert result["version"] == 1 and result["adapters"] == 1
        image = np.asarray(Image.open(out))
        assert image.ndim == 3 and image.shape[2] == 3 and image.shape[0] == image.shape[1]
    # Several prompts through one load: each PNG is the one-prompt call's, byte for byte (under transport the
    # prompts take different adapter scales).
    prompts = ["a red circle", "a green box", "a blue plus sign"]
    for mode in ("merged", "dynamic"):
        one = [api.generate(ctx, "shapes", p, tmp_path / f"one-{mode}-{i}.png", mode=mode, n=4, seed=3)["out"]
               for i, p in enumerate(prompts)]
        many = api.generate_many(ctx, "shapes", [(p, tmp_path / f"many-{mode}-{i}.png") for i, p in enumerate(prompts)],
                                 mode=mode, n=4, seed=3)
        assert [r["version"] for r in many] == [1, 1, 1]
        assert [Path(r["out"]).read_bytes() for r in many] == [Path(o).read_bytes() for o in one]
    # one bad pair refuses them all before anything is written
    with pytest.raises(InputError) as bad:
        api.generate_many(ctx, "shapes", [("a red circle", tmp_path / "first.png"), ("a box", tmp_path / "x.jpg")])
    assert bad.value.field == "--out" and not (tmp_path / "first.png").exists()
    with pytest.raises(InputError) as bad:
        api.generate_many(ctx, "shapes", [("a red circle", tmp_path / "same.png"), ("a box", tmp_path / "same.png")])
    assert bad.value.field == "--out" and not (tmp_path / "same.png").exists()
    with pytest.raises(InputError) as bad:
        api.generate(ctx, "shapes", "", tmp_path / "x.png")
    assert bad.value.field == "--prompt"
    with pytest.raises(InputError) as bad:
        api.generate(ctx, "shapes", "a box", tmp_path / "x.jpg")
    assert bad.value.field == "--out" and not (tmp_path / "x.jpg").exists()

    assert api.audit_verify(ctx)["ok"]
    ctx.close()

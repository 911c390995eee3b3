"""The lifecycle demo: a fresh SQLite home, three operators, requests under every policy kind.

It drives only `forgetd.api`, the same functions the CLI calls, and returns what it did so the CLI
can print it.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from forgetd import api
from forgetd.config import load_settings

DEMO_FEATURES = ("income", "debt", "savings", "age", "years_employed", "open_loans", "late_payments",
                 "credit_lines", "dependants", "homeowner")


def build_demo_weights(directory: Path, *, seed: int = 0) -> Path:
    """A small tabular decision model (forgetd-tabular/v1, random weights: the lifecycle part trains
    nothing), written with numpy so this part imports no torch; registration checks it like any model."""
    import numpy as np
    from safetensors.numpy import save_file

    from forgetd.families.tabular_classifier import TabularConfig, expected_tensors

    config = TabularConfig(features=tuple({"name": name} for name in DEMO_FEATURES), class_names=("deny", "approve"),
                           hidden_sizes=(16,), favorable_class=1)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {name: (np.ones(shape) if name == "input_std" else np.zeros(shape) if name.endswith(("bias", "mean"))
                      else rng.standard_normal(shape)).astype("float32")
               for name, shape in expected_tensors(config).items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return directory


def build_demo_dataset(path: Path, *, seed: int = 0) -> Path:
    """credit-mlp's registered dataset (forgetd-records/v1): 24 fictitious applicants with one or two loan
    applications each, the first 16 trained (retain), the last 8 never (reference). Requests name
    applicants by record id, which intake checks against this file."""
    import numpy as np

    rng = np.random.default_rng(seed)
    records = {}
    for i in range(1, 25):
        rows = rng.integers(0, 100, size=(1 + i % 2, len(DEMO_FEATURES))).astype(float).tolist()
        records[f"applicant-{i:04d}"] = {"rows": rows, "labels": [int(r[0] > r[1]) for r in rows]}
    ids = list(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "forgetd-records/v1", "records": records, "retain": ids[:16],
                                "reference": ids[16:]}) + "\n")
    return path


def demo_settings(home: Path):
    """Settings for the demo's own home (never the operator's configured one); the model cache follows
    FORGETD_CACHE_DIR when it is set."""
    import os

    env = {"FORGETD_HOME": str(home)}
    if os.environ.get("FORGETD_CACHE_DIR"):
        env["FORGETD_CACHE_DIR"] = os.environ["FORGETD_CACHE_DIR"]
    return load_settings(env)


class Operators:
    """`as_("bob")`: one api context per operator, opened on first use, all closed by `close()`."""

    def __init__(self, base) -> None:
        self._base = base
        self._ctxs: dict[str, api.Context] = {}

    def __call__(self, operator: str) -> api.Context:
        if operator not in self._ctxs:
            self._ctxs[operator] = api.open_context(replace(self._base, operator=operator))
        return self._ctxs[operator]

    def close(self) -> None:
        for ctx in self._ctxs.values():
            ctx.close()


def check_demo_home(home: Path) -> None:
    """The demo starts from nothing: a folder that is missing or empty. In a used one (an earlier demo's, or a
    real FORGETD_HOME) it would have overwritten the registered credit-mlp weights, written to that SQLite
    database and then stopped at "model credit-mlp is already registered"."""
    from forgetd.errors import InputError

    home = Path(home)
    if home.exists() and not home.is_dir():
        raise InputError(f"{home} is a file; give a new or empty folder", field="--home")
    if home.is_dir() and any(home.iterdir()):
        raise InputError(f"{home} is not empty; the demo needs a new or empty folder (leave --home out for a "
                         "temporary one)", field="--home")


def run(home: Path, *, with_models: bool = True, progress=None) -> dict[str, Any]:
    check_demo_home(home)
    base = demo_settings(home)
    as_ = Operators(base)
    steps: list[str] = []
    shapes_build = None
    try:
        init = api.init(api.open_context(base, check_schema=False))
        steps.append(f"init: schema {init['to']}, master key at {init['master_key']}")
        shapes_result = home / "logs" / "demo-shapes.json"
        if with_models:
            from forgetd.demo import prebuild

            # the text-to-image part (the longest, and the longest fresh build) runs on the other core from
            # the start, while everything else runs here (forgetd.demo.prebuild)
            shapes_build = prebuild.start_shapes_part(home, base.cache_dir, home / "logs" / "demo-shapes.log",
                                                      shapes_result)
            if shapes_build is not None:
                steps.append(f"demo-shapes running in a second process (log: {shapes_build.log_path})")
        weights = build_demo_weights(home / "models" / "credit-mlp")
        dataset = build_demo_dataset(home / "models" / "credit-mlp-applicants.json")
        api.model_register(as_("alice"), "credit-mlp", "tabular_classifier", str(weights), dataset=str(dataset))
        steps.append("alice registered model credit-mlp (weights hashed) with its applicants' records")

        # A data-erasure request under GDPR: identity first, then four-eyes approval.
        jane = {"model": "credit-mlp", "policy": "gdpr-erasure", "subject": "jane.doe@example.org",
                "forget": {"corpus_ids": ["applicant-0007"]}, "idempotency_key": "ticket-1001"}
        try:
            api.request_submit(as_("alice"), {**jane, "forget": {"corpus_ids": ["applicant-7"]}})
        except api.InputError as exc:
            steps.append(f"alice mistyped the record id: refused at intake ({exc.field}: {exc.message.split(';')[0]})")
        gdpr = api.request_submit(as_("alice"), jane)
        again = api.request_submit(as_("alice"), jane)
        steps.append(f"alice submitted {gdpr['id']} ({gdpr['status']}); resubmitting ticket-1001 returned {again['id']}")
        dup = api.request_submit(
            as_("carol"),
            {"model": "credit-mlp", "policy": "gdpr-erasure", "subject": "JANE.DOE@example.org "},
        )
        steps.append(f"carol submitted the same subject again: {dup['id']} is {dup['status']} of {dup['duplicate_of']}")
        api.request_verify_identity(as_("alice"), gdpr["id"])
        try:
            api.request_approve(as_("alice"), gdpr["id"])
        except api.DomainError as exc:
            steps.append(f"alice tried to approve her own request: refused ({exc.message.split(': ', 1)[-1]})")
        approved = api.request_approve(as_("bob"), gdpr["id"])
        steps.append(f"bob approved {gdpr['id']}: {approved['status']}, due {approved['effective_due_at'][:10]}")
        api.request_hold(as_("bob"), gdpr["id"], "legal review of the loan file")
        steps.append(f"bob put {gdpr['id']} on hold for a legal review of the loan file")

        # A second applicant: held with the clock paused while the subject is asked a question, released,
        # then extended.
        second = api.request_submit(
            as_("alice"),
            {"model": "credit-mlp", "policy": "gdpr-erasure", "subject": "max.muster@example.org",
             "forget": {"corpus_ids": ["applicant-0003", "applicant-0011"]}},
        )
        api.request_hold(as_("bob"), second["id"], "asked the subject which applications", pause_clock=True)
        released = api.request_release(as_("bob"), second["id"])
        steps.append(f"{second['id']} held with the clock paused and released: back to {released['status']}")
        extended = api.request_extend(
            as_("bob"), second["id"], months=2, reason="two applications in two archives",
            notified_at=api.utcnow().isoformat()
        )
        steps.append(f"{second['id']} extended by 2 months: due {extended['effective_due_at'][:10]}")

        # A request that is canceled and then crypto-shredded.
        canceled = api.request_submit(
            as_("carol"),
            {"model": "credit-mlp", "policy": "gdpr-erasure", "subject": "john.roe@example.org",
             "forget": {"corpus_ids": ["applicant-0012"]}},
        )
        api.request_cancel(as_("carol"), canceled["id"], "withdrawn by the subject")
        api.request_shred(as_("carol"), canceled["id"])
        steps.append(f"{canceled['id']} canceled and its payload shredded (data key destroyed)")

        swept = api.sweep(as_("alice"))
        verify = api.audit_verify(as_("alice"))
        steps.append(f"audit verify: {'intact' if verify['ok'] else 'BROKEN'} ({verify['checked']} events)")
        llm = vision = explanations = t2i = None
        seconds: dict[str, float] = {}
        if with_models:
            from forgetd.demo import llm as llm_demo
            models_began = time.perf_counter()
            began = time.perf_counter()
            llm = llm_demo.run(as_, base.cache_dir, home, progress=progress)
            seconds["demo-lm"] = round(time.perf_counter() - began, 1)
            steps.append(
                f"demo-lm: {len(llm['requests'])} erasure requests ticked through; prod serves v{llm['served_version']}"
            )
            from forgetd.demo import vision as vision_demo

            began = time.perf_counter()
            vision = vision_demo.run(as_, base.cache_dir, progress=progress)
            seconds["demo-digits"] = round(time.perf_counter() - began, 1)
            steps.append(
                f"demo-digits: classes {', '.join(map(str, vision['classes']))} forgotten one request at a time; "
                f"prod serves v{vision['steps'][-1]['served_version']}"
            )
            from forgetd.demo import credit_explanations

            began = time.perf_counter()
            explanations = credit_explanations.run(as_, base.cache_dir, home)
            seconds["demo-credit"] = round(time.perf_counter() - began, 1)
            steps.append(
                f"demo-credit: {explanations['issued']['plain']['count']} plain and "
                f"{explanations['issued']['robust']['count']} deletion-robust counterfactuals issued, "
                f"{len(explanations['steps'])} data-erasure requests honoured, every record re-checked after each"
            )
            from forgetd.demo import t2i as t2i_demo

            began = time.perf_counter()
            if shapes_build is None:
                t2i = t2i_demo.run(as_, base.cache_dir, home, progress=progress)
                seconds["demo-shapes"] = round(time.perf_counter() - began, 1)
            elif shapes_build.wait() == 0:
                t2i = json.loads(shapes_result.read_text())
                seconds["demo-shapes"] = t2i.pop("seconds")
            else:
                # not rerun here: the child may have submitted its request already
                t2i = {"error": f"the text-to-image part failed in its process; see {shapes_build.log_path}"}
            seconds["all models"] = round(time.perf_counter() - models_began, 1)
            if "error" in t2i:
                steps.append(f"demo-shapes: {t2i['error']}")
            else:
                steps.append(f"demo-shapes: concept '{t2i['concept']}' erased ({t2i['status']}), prod serves "
                             f"v{t2i['served_version']}; before/after grids in {t2i['grids']}")
            verify = api.audit_verify(as_("alice"))
            steps.append(f"audit verify: {'intact' if verify['ok'] else 'BROKEN'} ({verify['checked']} events)")
        requests = api.request_list(as_("alice"))
        return {"home": str(home), "steps": steps, "requests": requests, "sweep": swept, "audit": verify, "llm": llm,
                "vision": vision, "explanations": explanations, "t2i": t2i,
                "seconds": seconds}
    finally:
        if shapes_build is not None:
            shapes_build.stop()
        as_.close()

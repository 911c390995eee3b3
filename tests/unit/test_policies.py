from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from forgetd.durations import Duration
from forgetd.errors import InputError, NotFoundError
from forgetd.policies import get_policy, load_policies, load_policy_file, parse_cron

SHIPPED = Path(__file__).resolve().parents[2] / "policies"

VALID = """\
name: demo
applies_to: {kind: data}
deadline: {rule: calendar-month, extension_max: P2M, at_risk: P7D}
identity_required: true
approval: {required: true, four_eyes: true}
recipes:
  causal_lm: npo-lora
verification: {retain_acc_min_ratio: 0.95}
compose: {cadence: "*/15 * * * *", max_batch: 16}
retention: {shred_payload_after: P30D}
"""


def write(tmp_path, text, name="demo.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_four_shipped_policies_load():
    policies = load_policies(SHIPPED)
    assert sorted(policies) == ["class-removal", "copyright-concept", "gdpr-erasure", "unsafe-concept"]
    gdpr = policies["gdpr-erasure"]
    assert gdpr.applies_to.kind == "data" and gdpr.identity_required
    assert gdpr.approval.required and gdpr.approval.four_eyes
    assert gdpr.recipes == {
        "causal_lm": "npo-lora", "tabular_classifier": "graddiff-lora-tabular", "image_classifier": "gs-lora"}
    assert gdpr.verification.thresholds() == {
        "forget_qa_acc_max_over_reference": 0.05, "retain_acc_min_ratio": 0.90, "retain_acc_min_ratio_step": 0.95,
        "mia_auc_max_dev": 0.10, "leave_out_loss_min_ratio": 0.85}
    assert gdpr.deadline.extension_max_duration == Duration(months=2)
    assert gdpr.deadline.at_risk_timedelta == timedelta(days=7)
    assert gdpr.retention.shred_after == Duration(days=30)
    assert policies["copyright-concept"].recipes == {"text_to_image": "spm"}
    assert not policies["copyright-concept"].approval.four_eyes
    assert policies["unsafe-concept"].approval.four_eyes
    assert policies["class-removal"].verification.forget_acc_max == 0.05


def test_shipped_policy_files_start_with_a_comment_and_hold_no_python():
    for path in SHIPPED.iterdir():
        assert path.suffix != ".py"
    for path in SHIPPED.glob("*.yaml"):
        assert path.read_text().startswith("# ")


def test_valid_policy_and_defaults(tmp_path):
    policy = load_policy_file(write(tmp_path, VALID.replace(", at_risk: P7D", "")))
    assert policy.name == "demo" and policy.description is None
    assert policy.deadline.at_risk_timedelta == timedelta(days=7)
    assert policy.compose.schedule.matches(datetime(2027, 1, 1, 10, 45, tzinfo=timezone.utc))


BROKEN = [
    ("bad yaml", VALID.replace("recipes:\n", "recipes: [\n"), "line "),
    ("duplicate key", VALID + "identity_required: false\n", "duplicate key"),
    ("not a mapping", "- just\n- a list\n", "mapping"),
    ("empty file", "", "mapping"),
    ("missing field", VALID.replace("identity_required: true\n", ""), "identity_required:"),
    ("wrong type", VALID.replace("four_eyes: true", "four_eyes: maybe"),
     "approval.four_eyes: Input should be a valid boolean"),
    ("string number", VALID.replace("max_batch: 16", 'max_batch: "16"'), "compose.max_batch:"),
    ("unknown key", VALID.replace("identity_required:", "identity_requried:"), "identity_requried: unknown field"),
    ("unknown nested key", VALID.replace("at_risk: P7D", "at_rsk: P7D"), "deadline.at_rsk: unknown field"),
    ("bad cron", VALID.replace('"*/15 * * * *"', '"61 * * * *"'), "compose.cadence:"),
    ("cron field count", VALID.replace('"*/15 * * * *"', '"*/15 * * *"'), "compose.cadence:"),
    ("cron garbage", VALID.replace('"*/15 * * * *"', '"*/15 * * JAN *"'), "compose.cadence:"),
    ("cron zero step", VALID.replace('"*/15 * * * *"', '"*/0 * * * *"'), "compose.cadence:"),
    ("cron reversed range", VALID.replace('"*/15 * * * *"', '"0 5-1 * * *"'), "compose.cadence:"),
    ("bad duration", VALID.replace("shred_payload_after: P30D", "shred_payload_after: 30 days"),
     "retention.shred_payload_after: expected an ISO 8601 duration"),
    ("months at risk", VALID.replace("at_risk: P7D", "at_risk: P1M"), "deadline.at_risk:"),
    ("name not stem", VALID.replace("name: demo", "name: other"), "name:"),
    ("bad slug", VALID.replace("name: demo", "name: Demo_1"), "name:"),
    ("four eyes without required", VALID.replace("required: true, four_eyes", "required: false, four_eyes"),
     "approval.four_eyes:"),
    ("unknown family", VALID.replace("causal_lm: npo-lora", "speech: npo-lora"), "recipes.speech:"),
    ("no recipes", VALID.replace("recipes:\n  causal_lm: npo-lora\n", "recipes: {}\n"), "recipes:"),
    ("bad recipe name", VALID.replace("causal_lm: npo-lora", "causal_lm: ../evil"), "recipes.causal_lm:"),
    ("unknown kind", VALID.replace("kind: data", "kind: person"), "applies_to.kind:"),
    ("P3M extension", VALID.replace("extension_max: P2M", "extension_max: P3M"), "deadline.extension_max:"),
    ("day extension", VALID.replace("extension_max: P2M", "extension_max: P60D"), "deadline.extension_max:"),
    ("negative threshold", VALID.replace("0.95", "-0.1"), "verification.retain_acc_min_ratio:"),
    ("nan threshold", VALID.replace("0.95", ".nan"), "verification.retain_acc_min_ratio:"),
    ("batch too large", VALID.replace("max_batch: 16", "max_batch: 257"), "compose.max_batch:"),
    ("wrong rule", VALID.replace("rule: calendar-month", "rule: thirty-days"), "deadline.rule:"),
]


@pytest.mark.parametrize(("case", "text", "expected"), BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_policy_files_name_file_and_field(tmp_path, case, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_policy_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_field_is_the_dotted_path_and_extra_errors_are_counted(tmp_path):
    text = VALID.replace("four_eyes: true", "four_eyes: maybe").replace("max_batch: 16", "max_batch: 0")
    with pytest.raises(InputError) as info:
        load_policy_file(write(tmp_path, text))
    assert info.value.field == "approval.four_eyes"
    assert "(and 1 more error)" in str(info.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_policy_file(tmp_path / "missing.yaml")


def test_load_policies_stops_at_the_first_bad_file(tmp_path):
    write(tmp_path, VALID)
    write(tmp_path, VALID.replace("name: demo", "name: zz").replace("max_batch: 16", "max_batch: 0"), "zz.yml")
    with pytest.raises(InputError, match="zz.yml: compose.max_batch"):
        load_policies(tmp_path)


def test_get_policy_loads_one_and_lists_known_names(tmp_path):
    write(tmp_path, VALID)
    write(tmp_path, "broken: [", "broken.yaml")
    assert get_policy(tmp_path, "demo").name == "demo"
    with pytest.raises(NotFoundError) as info:
        get_policy(tmp_path, "nope")
    assert info.value.field == "--policy"
    assert "broken, demo" in info.value.message


def test_a_policy_is_parsed_once_per_content_and_an_edit_takes_effect(tmp_path):
    path = write(tmp_path, VALID)
    first = get_policy(tmp_path, "demo")
    assert get_policy(tmp_path, "demo") is first  # same text: the parsed policy is reused
    path.write_text(VALID.replace("max_batch: 16", "max_batch: 8"))  # same second, maybe the same mtime
    edited = get_policy(tmp_path, "demo")
    assert edited.compose.max_batch == 8 and first.compose.max_batch == 16
    path.write_text(VALID.replace("max_batch: 16", "max_batch: 0"))
    with pytest.raises(InputError, match="compose.max_batch"):  # a broken edit is an error every time
        get_policy(tmp_path, "demo")
    with pytest.raises(InputError, match="compose.max_batch"):
        get_policy(tmp_path, "demo")


def test_cron_semantics():
    every_quarter = parse_cron("*/15 * * * *")
    assert every_quarter.minutes == frozenset({0, 15, 30, 45})
    weekdays_at_nine = parse_cron("0 9 * * 1-5")
    monday = datetime(2027, 3, 8, 9, 0)
    assert weekdays_at_nine.matches(monday)
    assert not weekdays_at_nine.matches(monday.replace(day=7))
    sunday_as_seven = parse_cron("0 0 * * 7")
    assert sunday_as_seven.matches(datetime(2027, 3, 7, 0, 0))
    assert parse_cron("5/20 0,12 1-31/10 * *").minutes == frozenset({5, 25, 45})

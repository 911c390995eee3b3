"""Request policies: policies/<name>.yaml, validated strictly so a typo fails loudly at load time.

A policy decides which requests it applies to, their deadline rules, whether identity and approval are
needed, which adapter recipe each model family uses, what verification must show, how often adapters are
composed, and when the payload is shredded. Errors are one line naming the file and the dotted field.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo, field_validator

from forgetd.deadlines import ABSOLUTE_MAX_EXTENSION_MONTHS
from forgetd.durations import Duration, parse_iso_duration
from forgetd.enums import FAMILY_VALUES, KIND_VALUES, RequestKind
from forgetd.errors import ConfigError, InputError, NotFoundError

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
Kind = Literal[KIND_VALUES]  # type: ignore[valid-type]
Family = Literal[FAMILY_VALUES]  # type: ignore[valid-type]


class PolicyFileError(InputError):
    """A policy file failed to load; the message already names the file and the field."""

    def __str__(self) -> str:
        return self.message


# --- cron -------------------------------------------------------------------------------------------

_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_CRON_ITEM = re.compile(r"(?:(?P<star>\*)|(?P<lo>[0-9]{1,2})(?:-(?P<hi>[0-9]{1,2}))?)(?:/(?P<step>[0-9]{1,2}))?")


@dataclass(frozen=True)
class CronSchedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    def matches(self, dt: datetime) -> bool:
        if dt.minute not in self.minutes or dt.hour not in self.hours or dt.month not in self.months:
            return False
        day_ok = dt.day in self.days
        weekday_ok = (dt.isoweekday() % 7) in self.weekdays
        # Classic cron: when both day fields are restricted, either one matching is enough.
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


def _cron_field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        m = _CRON_ITEM.fullmatch(item)
        if m is None:
            raise ValueError(f"{name} field {text!r}: expected *, a number, a range a-b, a step */n or a list")
        start, end = (lo, hi) if m["star"] else (int(m["lo"]), int(m["hi"] if m["hi"] is not None else m["lo"]))
        if m["step"] is not None and not m["star"] and m["hi"] is None:
            end = hi  # "5/15" means from 5 to the end of the range, as in Vixie cron
        step = int(m["step"]) if m["step"] is not None else 1
        for value in (start, end):
            if not lo <= value <= hi:
                raise ValueError(f"{name} field {text!r}: {value} is outside {lo}-{hi}")
        if start > end:
            raise ValueError(f"{name} field {text!r}: range {start}-{end} is reversed")
        if step < 1:
            raise ValueError(f"{name} field {text!r}: step must be at least 1")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def parse_cron(expr: str) -> CronSchedule:
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"expected 5 cron fields (minute hour day month weekday), got {len(parts)}")
    sets = [_cron_field(p, name, lo, hi) for p, (name, lo, hi) in zip(parts, _CRON_FIELDS)]
    weekdays = frozenset(d % 7 for d in sets[4])
    return CronSchedule(*sets[:4], weekdays, any_day=parts[2] == "*", any_weekday=parts[4] == "*")


# --- schema -----------------------------------------------------------------------------------------


def _duration(value: str) -> Duration:
    try:
        return parse_iso_duration(value, field="")
    except InputError as exc:
        raise ValueError(exc.message) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class AppliesTo(_Strict):
    kind: Kind

    @property
    def request_kind(self) -> RequestKind:
        return RequestKind.parse(self.kind)


class Deadline(_Strict):
    rule: Literal["calendar-month"]
    extension_max: str
    at_risk: str = "P7D"

    @field_validator("extension_max")
    @classmethod
    def _months_only(cls, value: str) -> str:
        d = _duration(value)
        if d.days or d.seconds:
            raise ValueError("must be whole months, such as P1M or P2M")
        if d.months > ABSOLUTE_MAX_EXTENSION_MONTHS:
            raise ValueError(f"must be at most P{ABSOLUTE_MAX_EXTENSION_MONTHS}M (the legal maximum)")
        return value

    @field_validator("at_risk")
    @classmethod
    def _no_months(cls, value: str) -> str:
        if _duration(value).months:
            raise ValueError("must be in weeks, days or hours (such as P7D), not months or years")
        return value

    @property
    def extension_max_duration(self) -> Duration:
        return _duration(self.extension_max)

    @property
    def at_risk_timedelta(self) -> timedelta:
        return _duration(self.at_risk).to_timedelta()


class Approval(_Strict):
    required: bool
    four_eyes: bool = False

    @field_validator("four_eyes")
    @classmethod
    def _needs_required(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("required") is False:
            raise ValueError("four_eyes needs required: true (a second approver implies approval)")
        return value


_Threshold = Annotated[float | None, Field(default=None, ge=0)]


class Verification(_Strict):
    forget_qa_acc_max_over_reference: _Threshold
    retain_acc_min_ratio: _Threshold  # retain utility ≥ t × the pristine original's (adapter and candidate)
    # retain utility of the adapter ≥ t × the checkpoint it was trained against (what one request may cost)
    retain_acc_min_ratio_step: _Threshold
    mia_auc_max_dev: _Threshold
    erase_rate_max: _Threshold
    synonym_erase_rate_max: _Threshold
    other_acc_min_ratio: _Threshold
    forget_acc_max: _Threshold
    # tabular data erasure: the forget rows' loss against the influence leave-out estimate (replaces the
    # population checks for that family; see families.tabular_classifier.checks)
    leave_out_loss_min_ratio: _Threshold

    def thresholds(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Compose(_Strict):
    cadence: str
    max_batch: Annotated[int, Field(ge=1, le=256)]

    @field_validator("cadence")
    @classmethod
    def _cron(cls, value: str) -> str:
        parse_cron(value)
        return value

    @property
    def schedule(self) -> CronSchedule:
        return parse_cron(self.cadence)


class Retention(_Strict):
    shred_payload_after: str

    @field_validator("shred_payload_after")
    @classmethod
    def _iso(cls, value: str) -> str:
        _duration(value)
        return value

    @property
    def shred_after(self) -> Duration:
        return _duration(self.shred_payload_after)


class Policy(_Strict):
    name: Slug
    description: str | None = None
    applies_to: AppliesTo
    deadline: Deadline
    identity_required: bool
    approval: Approval
    recipes: Annotated[dict[Family, Slug], Field(min_length=1)]
    verification: Verification
    compose: Compose
    retention: Retention


# --- loading ----------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; in a policy that hides an edit."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _yaml_error(path: Path, exc: yaml.YAMLError) -> PolicyFileError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return PolicyFileError(f"{path}: {where}invalid YAML: {_one_line(problem)}", field=str(path))


def _validation_error(path: Path, exc: ValidationError) -> PolicyFileError:
    errors = exc.errors(include_url=False, include_input=False)
    # A misspelt key also shows up as a missing field; the misspelling is the more useful report.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(part) for part in first["loc"]]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field (check its spelling)"
    elif first["type"] == "string_pattern_mismatch":
        msg = "must be lowercase letters, digits and '-', at most 63 characters"
    if loc and loc[-1] == "[key]":
        loc.pop()
        msg = f"invalid key: {msg}"
    dotted = ".".join(loc) or "(top level)"
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return PolicyFileError(f"{path}: {dotted}: {_one_line(msg)}{more}", field=dotted)


# Parsed policies by (file, sha256 of its text): the file is read every time, so an edit takes effect at the
# next request, but parsed once per content. Each submission looked its policy up twice, and the pure-Python
# YAML parse (needed for the duplicate-key check) was 55% of `request import`'s time (15.6 s for 2,000 lines).
_PARSED: dict[tuple[str, str], Policy] = {}
_PARSED_MAX = 256


def load_policy_file(path: Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PolicyFileError(f"{path}: not valid UTF-8 text", field=str(path)) from None
    except OSError as exc:
        raise PolicyFileError(f"{path}: cannot read: {exc.strerror or exc}", field=str(path)) from None
    key = (str(path), hashlib.sha256(text.encode("utf-8")).hexdigest())
    if key not in _PARSED:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = _parse_policy(path, text)
    return _PARSED[key]


def _parse_policy(path: Path, text: str) -> Policy:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise PolicyFileError(f"{path}: the top level must be a mapping of fields, found {found}", field=str(path))
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(path, exc) from None
    if policy.name != path.stem:
        raise PolicyFileError(
            f"{path}: name: {policy.name!r} must equal the file name without extension ({path.stem!r})",
            field="name",
        )
    return policy


def _policy_files(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"policies directory {directory} does not exist", field="FORGETD_POLICIES_DIR")
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_policies(directory: Path) -> dict[str, Policy]:
    policies: dict[str, Policy] = {}
    for path in _policy_files(directory):
        policy = load_policy_file(path)
        if policy.name in policies:
            raise PolicyFileError(f"{path}: name: policy {policy.name!r} is defined twice", field="name")
        policies[policy.name] = policy
    return policies


def get_policy(directory: Path, name: str) -> Policy:
    """Load only the named file, so one broken unrelated policy does not block every request."""
    files = {p.stem: p for p in reversed(_policy_files(directory))}
    if not re.fullmatch(SLUG_PATTERN, name or "") or name not in files:
        known = ", ".join(sorted(files)) or "none"
        raise NotFoundError(f"unknown policy {name!r}; known policies: {known}", field="--policy")
    return load_policy_file(files[name])

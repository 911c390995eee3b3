"""What registration checks about a model directory before it records it: its config files parse and its
safetensors files are whole. Cheap (headers only, no weights loaded), so registering a large model stays
quick; each family's `check_model_dir` adds what its loader needs.

Registration used to hash any directory holding weight files, whatever family it was told: a ViT
registered as a causal LM, or a truncated safetensors file, was found only when the first request's
training job failed."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from forgetd.errors import InputError

FIELD = "--path"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit


def read_json_object(model_dir: Path, name: str, *, what: str) -> dict[str, Any]:
    """`model_dir/name` (a relative path) parsed as a JSON object, or an error naming it and `what` the
    directory was registered as."""
    path = Path(model_dir) / name
    if not path.is_file():
        raise InputError(f"no {name} in the model directory: not a {what}", field=FIELD)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{name} is not valid JSON ({type(exc).__name__}): not a {what}", field=FIELD) from None
    if not isinstance(data, dict):
        raise InputError(f"{name} is not a JSON object: not a {what}", field=FIELD)
    return data


def safetensors_header(path: Path, name: str | None = None) -> dict[str, Any]:
    """The tensor table of a safetensors file ({name: {dtype, shape, data_offsets}}), checked against the
    file's size: a truncated or padded file, or another format under that suffix, is refused. `name` is how
    errors call the file (default: its name)."""
    size = path.stat().st_size
    name = name or path.name
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{name} is not a safetensors file (too short)", field=FIELD)
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise InputError(f"{name} is cut short or not a safetensors file (its header alone would need {length} "
                             f"bytes, the file has {size})", field=FIELD)
        try:
            header = json.loads(f.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{name} is not a safetensors file (unreadable header)", field=FIELD) from None
    if not isinstance(header, dict):
        raise InputError(f"{name} is not a safetensors file (header is not a table)", field=FIELD)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise InputError(f"{name} is not a safetensors file (a tensor has no data offsets)", field=FIELD) from None
    if 8 + length + end != size:
        raise InputError(f"{name} is cut short or padded: its header needs {8 + length + end} bytes, the file has "
                         f"{size}; copy it again", field=FIELD)
    return tensors


def check_safetensors(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Every safetensors file under the directory, by relative path: its tensor table."""
    files = sorted(p for p in Path(model_dir).rglob("*.safetensors") if p.is_file())
    return {(name := p.relative_to(model_dir).as_posix()): safetensors_header(p, name) for p in files}

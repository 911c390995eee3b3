"""What the local executor's fork server imports once, so that a job's worker starts with it loaded.

A worker started as a fresh interpreter spends most of a short job importing torch, transformers and peft
(5-7 s on a 2-core machine, against a second or two of work for an evaluate or promote job). The fork server
imports them here, before any job, and forks each worker from that state. Only imports happen here: no torch
operation runs, so no OpenMP or CUDA state exists yet to be inherited by a forked child. No other forgetd
module is imported, so every job still runs forgetd's code as it is on disk when the job starts.
"""

from __future__ import annotations

import importlib

HEAVY_MODULES = (
    "torch",
    "safetensors.torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "peft",
    "diffusers",
    "sqlalchemy.orm",
)


def _import_all() -> None:
    for name in HEAVY_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # an optional part missing or broken: the worker reports it when a job needs it
            pass


_import_all()

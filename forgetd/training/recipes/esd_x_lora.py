"""ESD-x (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023) as a LoRA on the UNet's
cross-attention linears (attn2) only, the baseline SPM is compared with:

    loss = ‖ε*(x_t,c) − [ε(x_t,∅) − η·(ε(x_t,c) − ε(x_t,∅))]‖²

No anchor term: ESD-x relies on touching only the text-conditioned path (attn2), so prompts without the
concept change little. Same x_t pool, calibration best-of and divergence guards as SPM
(forgetd.training.recipes.spm); recipe YAMLs choose rank (ESD-x is usually given more than rank 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetd.training.common import Progress

METHOD = "esd-x"


def train(recipe, *, model, tokenizer, data, out_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    from forgetd.training.recipes import spm

    return spm.run(recipe, pipe=model, verifier=tokenizer, data=data, out_dir=out_dir, progress=progress,
                   method=METHOD, anchored=False)

"""`forgetd generate`: images from a text-to-image model's served checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json


@click.command()
@click.option("--model", "model", required=True, help="A registered text_to_image model.")
@click.option("--prompt", required=True, help="What to draw.")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="PNG file to write.")
@click.option("--mode", type=click.Choice(["dynamic", "merged"]), default="dynamic", show_default=True,
              help="dynamic: base + served adapters scaled per prompt (facilitated transport); merged: the static "
                   "merged checkpoint.")
@click.option("--n", "n", type=int, default=1, show_default=True, help="Images to draw (a grid when more than 1).")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--steps", type=int, default=None, help="Sampling steps (default: the model's own setting).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def generate(ctx, model, prompt, out, mode, n, seed, steps, as_json) -> None:
    """Draw --prompt with the served checkpoint of a text_to_image model.

    Example: forgetd generate --model demo-shapes --prompt "a red circle" --out circle.png --n 16
    """
    from forgetd import api

    result = api.generate(api_context(ctx), model, prompt, out, mode=mode, n=n, seed=seed, steps=steps)
    if as_json:
        emit_json(result)
        return
    click.echo(f"wrote {result['out']} ({result['n']} image(s), {result['model']} v{result['version']}, "
               f"{result['mode']}, {result['adapters']} adapter(s))")

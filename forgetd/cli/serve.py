"""`forgetd serve`: the scheduled background service."""

from __future__ import annotations

import click

from forgetd.cli.context import api_context


@click.command()
@click.option("--executor", type=click.Choice(["local", "ray", "inline"]), default="local", show_default=True,
              help="local: a subprocess per job; ray: a Ray cluster; inline: threads of this process.")
@click.option("--slots", type=click.IntRange(1, 256), default=1, show_default=True, help="Jobs run at once by this daemon.")
@click.option("--gpus", default="", help="Comma-separated GPU ids for local slots (CUDA_VISIBLE_DEVICES), e.g. 0,1.")
@click.option("--poll", "poll_seconds", type=click.FloatRange(0.05, 60), default=1.0, show_default=True,
              help="Seconds between claim attempts.")
@click.option("--plan-every", "plan_seconds", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True,
              help="Seconds between planning passes (leader only).")
@click.option("--sweep-every", "sweep_seconds", type=click.FloatRange(1, 86400), default=300.0, show_default=True,
              help="Seconds between deadline sweeps (leader only).")
@click.option("--compose-every", type=click.FloatRange(0.1, 86400), default=None,
              help="Compose every N seconds instead of on each policy's cron cadence.")
@click.option("--grace", "grace_seconds", type=click.FloatRange(0, 25), default=20.0, show_default=True,
              help="On SIGTERM, seconds running jobs get to finish before their leases are released.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Serve Prometheus metrics on this port.")
@click.option("--ray-address", default=None, help="Ray cluster address for --executor ray (default: RAY_ADDRESS or auto).")
@click.option("--ray-wait", "ray_wait_seconds", type=click.FloatRange(0, 3600), default=60.0, show_default=True,
              help="Seconds to wait for the Ray cluster at the address to answer before giving up.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
@click.pass_context
def serve(ctx, executor, slots, gpus, poll_seconds, plan_seconds, sweep_seconds, compose_every, grace_seconds,
          metrics_port, ray_address, ray_wait_seconds, log_level) -> None:
    """Run the service: claim and run jobs; as leader, plan work, compose on each policy's cadence and
    sweep deadlines. Stops cleanly on SIGTERM. Refuses to start on an out-of-date schema.

    Example: forgetd serve --executor local --slots 2 --metrics-port 9464
    """
    import logging

    from forgetd import api, safe_traceback
    from forgetd.jobs.service import ServeOptions

    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=log_level.upper(), format=log_format)
    for handler in logging.getLogger().handlers:  # the service's log is kept: no exception messages in it
        handler.setFormatter(safe_traceback.Formatter(log_format))
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the schema check is not news
    options = ServeOptions(executor=executor, slots=slots, gpus=[g.strip() for g in gpus.split(",") if g.strip()],
                           poll_seconds=poll_seconds, plan_seconds=plan_seconds, sweep_seconds=sweep_seconds,
                           compose_every=compose_every, grace_seconds=grace_seconds, metrics_port=metrics_port,
                           ray_address=ray_address, ray_wait_seconds=ray_wait_seconds)
    ctx.exit(api.serve(api_context(ctx), options))

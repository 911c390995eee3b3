"""Prometheus metrics for `forgetd serve --metrics-port`. Read from the database at scrape time, so
every daemon reports the same numbers and nothing is lost when one restarts."""

from __future__ import annotations

from datetime import timedelta

BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))


class ForgetdCollector:
    def __init__(self, ctx) -> None:
        self.ctx = ctx

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from sqlalchemy import func, select

        from forgetd import api
        from forgetd.db.models import Job, Request

        status = api.status(self.ctx)
        depth = GaugeMetricFamily("forgetd_jobs", "Jobs by kind and state", labels=["kind", "state"])
        for key, n in sorted(status["queue"]["by_kind_state"].items()):
            kind, state = key.split(":", 1)
            depth.add_metric([kind, state], n)
        yield depth

        with self.ctx.session() as s:
            attempts = CounterMetricFamily("forgetd_job_attempts", "Claims made, retries included", labels=["kind"])
            for kind, total in s.execute(select(Job.kind, func.sum(Job.attempts)).group_by(Job.kind)).all():
                attempts.add_metric([kind], float(total or 0))
            yield attempts

            durations = HistogramMetricFamily("forgetd_job_duration_seconds",
                                              "First claim to success, per finished job", labels=["kind"])
            per_kind: dict[str, list[float]] = {}
            for kind, started, finished in s.execute(
                select(Job.kind, Job.started_at, Job.finished_at).where(Job.status == "succeeded")
            ).all():
                if started and finished:
                    per_kind.setdefault(kind, []).append((finished - started) / timedelta(seconds=1))
            for kind, values in sorted(per_kind.items()):
                buckets = [(str(b) if b != float("inf") else "+Inf", sum(1 for v in values if v <= b)) for b in BUCKETS]
                durations.add_metric([kind], buckets=buckets, sum_value=sum(values))
            yield durations

            requests = GaugeMetricFamily("forgetd_requests", "Requests by status", labels=["status"])
            for st, n in s.execute(select(Request.status, func.count()).group_by(Request.status)).all():
                requests.add_metric([st.value], n)
            yield requests

        deadlines = GaugeMetricFamily("forgetd_requests_deadline", "Open requests near or past their deadline",
                                      labels=["state"])
        deadlines.add_metric(["at_risk"], len(status["requests_at_risk"]))
        deadlines.add_metric(["breached"], len(status["requests_breached"]))
        yield deadlines


def registry_for(ctx):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(ForgetdCollector(ctx))
    return registry


def start_metrics_server(ctx, port: int):
    from prometheus_client import start_http_server

    from forgetd.errors import ConfigError

    try:
        return start_http_server(port, addr="0.0.0.0", registry=registry_for(ctx))
    except OSError as exc:  # in use (another daemon on this host), or below 1024 without the right
        raise ConfigError(f"cannot serve metrics on port {port} ({exc.strerror or exc}); pick another port or "
                          "stop what holds it", field="--metrics-port") from None

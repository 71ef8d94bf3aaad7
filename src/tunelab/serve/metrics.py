"""Prometheus metrics for one server: requests, errors, latency, tokens generated, queue depth, batch sizes, and the
traffic log's writes and live signals.

Each server gets its own registry, so several servers in one process (tests, benchmarks) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    """The server's metrics, exposed at GET /metrics in Prometheus' text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tunelab_requests", "HTTP requests answered", ["route", "status"], registry=self.registry
        )
        self.errors = Counter(
            "tunelab_request_errors", "HTTP requests answered with a 4xx or 5xx", ["route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "tunelab_request_latency_seconds", "Time to the last byte of the response", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.tokens_generated = Counter("tunelab_tokens_generated", "Completion tokens sampled", registry=self.registry)
        self.prompt_tokens = Counter("tunelab_prompt_tokens", "Prompt tokens prefilled", registry=self.registry)
        self.queue_depth = Gauge("tunelab_queue_depth", "Sequences waiting to join the batch", registry=self.registry)
        self.batch_size = Histogram(
            "tunelab_batch_size", "Rows per decode step", buckets=BATCH_BUCKETS, registry=self.registry
        )

        self._traffic_log()

    def _traffic_log(self) -> None:
        """The traffic log's counters (`serve --log`) and the live signals it feeds."""
        registry = self.registry
        self.log_written = Counter("tunelab_traffic_log_written", "Rows written to the traffic log", registry=registry)
        self.log_dropped = Counter(
            "tunelab_traffic_log_dropped", "Answers not logged because the write queue was full", registry=registry
        )
        self.log_failed = Counter(
            "tunelab_traffic_log_failed", "Rows whose database write failed (locked, full, corrupt, unreachable)",
            registry=registry,
        )  # fmt: skip
        self.log_queue = Gauge("tunelab_traffic_log_queue", "Rows waiting to be written", registry=registry)
        self.live_input_chars = Gauge(
            "tunelab_live_input_chars", "Mean prompt length in characters over the last answers", registry=registry
        )
        self.live_empty_rate = Gauge(
            "tunelab_live_empty_answer_rate", "Share of the last answers that were empty", registry=registry
        )
        self.live_feedback_rate = Gauge(
            "tunelab_live_feedback_rate", "Feedback of each kind per answer, over the last answers", ["kind"],
            registry=registry,
        )  # fmt: skip

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

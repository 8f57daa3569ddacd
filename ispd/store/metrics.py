from __future__ import annotations

from ispd.metrics.fast import FastCollector, Histogram, LabeledCounter, LabeledHistogram

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class StoreMetrics:
    """Store latency as the caller sees it (queueing, group commit and fsync included)."""

    def __init__(self, backend: str = "sqlite") -> None:
        self.backend = backend  # the label of the store's own metrics: "sqlite" or "postgresql"
        self.operation_duration = LabeledHistogram(
            "ispd_store_operation_duration_seconds",
            "Time from a store call to its durable result, by operation.",
            "operation",
            ("ping",),
        )
        self.commit_batch_size = Histogram(BATCH_SIZE_BUCKETS)
        self.commit_failures = LabeledCounter(
            "ispd_store_commit_failures_total",
            "Batches of writes whose transaction failed as a whole (the database unreachable, a full disk).",
            ("backend",),
        )
        self.commit_failures.inc(backend, amount=0)  # exported from the start

    def observe(self, operation: str, seconds: float) -> None:
        self.operation_duration[operation].observe(seconds)

    def collector(self) -> FastCollector:
        batch = LabeledHistogram(
            "ispd_store_commit_batch_size", "Writes grouped into one committed transaction.", "backend",
            bounds=BATCH_SIZE_BUCKETS,
        )
        batch.children[self.backend] = self.commit_batch_size
        return FastCollector([self.operation_duration, batch, self.commit_failures])

"""Prometheus metrics for `/metrics`: per stream, per question and per connection.

Per-stream figures are read from the hub when Prometheus scrapes (`ServerMetrics.scrape`), so they
can never drift from what `/streams` reports; question timings and connection counts are recorded as they happen. Each
server has its own registry, so several servers in one process (tests, benchmarks) do not mix.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sources.base import SourceState
from streamer.decoding import SchedulerStats
from streamer.heap import heap_usage
from streamer.server.hub import Hub, StreamReport
from streamer.watches import WatchInfo

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: TTFT on the CPU default is a few hundred ms, answers a second or two; queued ones more.
_TIMING_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class ServerMetrics:
    """The server's registry and the metrics recorded as events happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_open_fds, CPU seconds
        self.ttft = Histogram(
            "streamer_question_ttft_seconds",
            "Time from a question's start to its first answer token.",
            buckets=_TIMING_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "streamer_answer_latency_seconds",
            "Time from a question's start to its complete answer.",
            buckets=_TIMING_BUCKETS,
            registry=registry,
        )
        self.questions = Counter(
            "streamer_questions", "Questions finished, by outcome.", ["outcome"], registry=registry
        )
        self.protocol_errors = Counter(
            "streamer_protocol_errors", "Error replies sent to websocket clients, by code.", ["code"], registry=registry
        )
        # One child per code, looked up once: a flood of bad messages costs a dict lookup each, not a label lock.
        self._protocol_error_codes: dict[str, Counter] = {}
        self.messages_throttled = Counter(
            "streamer_messages_throttled",
            "Websocket messages read late because their connection sent more than its message rate.",
            registry=registry,
        )
        self.connections = Gauge("streamer_active_connections", "Open websocket connections.", registry=registry)
        self.status_dropped = Counter(
            "streamer_status_updates_dropped", "stream.status updates skipped for clients behind.", registry=registry
        )
        self.slow_clients = Counter(
            "streamer_slow_clients_disconnected", "Clients disconnected for not reading fast enough.", registry=registry
        )
        self.ready = Gauge("streamer_ready", "1 once the model is loaded and warmed up.", registry=registry)
        self.streams = StreamCollector()
        registry.register(self.streams)
        self.models = ModelCollector()
        registry.register(self.models)
        registry.register(HeapCollector())

    def protocol_error(self, code: str) -> None:
        """Count one error reply with `code`."""
        counter = self._protocol_error_codes.get(code)
        if counter is None:
            counter = self._protocol_error_codes[code] = self.protocol_errors.labels(code)
        counter.inc()

    async def scrape(self, hub: Hub | None) -> bytes:
        """The exposition, with every stream and watch read from `hub` now (None: still loading)."""
        if hub is None:
            self.streams.reports, self.streams.watches, self.models.stats = {}, [], {}
        else:
            self.streams.reports, self.streams.watches = await hub.reports(), await hub.watches()
            self.models.stats = await hub.model_stats()
        return generate_latest(self.registry)


class StreamCollector(Collector):
    """Every served stream's counters and memory, and every watch's, as read for the scrape in progress."""

    def __init__(self) -> None:
        self.reports: dict[str, StreamReport] = {}
        self.watches: list[WatchInfo] = []

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["stream"]
        decoded = CounterMetricFamily("streamer_frames_decoded", "Frames decoded by the source.", labels=labels)
        dropped = CounterMetricFamily(
            "streamer_frames_dropped", "Frames the source dropped as stale before ingest.", labels=labels
        )
        ingested = CounterMetricFamily("streamer_frames_ingested", "Frames prefilled into memory.", labels=labels)
        reconnects = CounterMetricFamily("streamer_reconnects", "Times the source reconnected.", labels=labels)
        up = GaugeMetricFamily("streamer_stream_up", "1 while the source is live.", labels=labels)
        lag = GaugeMetricFamily(
            "streamer_frame_lag_seconds", "Capture-to-memory delay of the newest frame.", labels=labels
        )
        fps = GaugeMetricFamily("streamer_ingest_fps", "Frames ingested per second lately.", labels=labels)
        resident = GaugeMetricFamily(
            "streamer_memory_resident_tokens", "KV tokens resident on the compute device.", labels=labels
        )
        budget = GaugeMetricFamily("streamer_memory_budget_tokens", "Resident KV token budget.", labels=labels)
        host = GaugeMetricFamily(
            "streamer_memory_host_tokens", "KV tokens kept in host memory after leaving the device.", labels=labels
        )
        frames = GaugeMetricFamily(
            "streamer_memory_frames",
            "Frames remembered, by tier (clear, fuzzy) and where their KV block is (device, host, gone).",
            labels=["stream", "tier", "location"],
        )
        snapshot_failures = CounterMetricFamily(
            "streamer_snapshot_failures", "Snapshots that could not be written (ingest went on).", labels=labels
        )
        watch_labels = ["stream", "watch"]
        watch_checks = CounterMetricFamily(
            "streamer_watch_checks", "Checks of a standing question.", labels=watch_labels
        )
        watch_events = CounterMetricFamily(
            "streamer_watch_events", "Episode starts and ends of a standing question.", labels=watch_labels
        )
        watch_seconds = CounterMetricFamily(
            "streamer_watch_check_seconds", "Time spent checking a standing question.", labels=watch_labels
        )
        for stream_id, report in sorted(self.reports.items()):
            memory = report.memory
            snapshot_failures.add_metric([stream_id], memory.snapshot_failures)
            decoded.add_metric([stream_id], report.frames_decoded)
            dropped.add_metric([stream_id], report.frames_dropped)
            ingested.add_metric([stream_id], report.frames_ingested)
            reconnects.add_metric([stream_id], report.reconnects)
            up.add_metric([stream_id], 1.0 if report.state == SourceState.LIVE.value else 0.0)
            lag.add_metric([stream_id], report.lag_s)
            fps.add_metric([stream_id], report.ingest_fps)
            resident.add_metric([stream_id], memory.resident_tokens)
            budget.add_metric([stream_id], memory.budget_tokens)
            host.add_metric([stream_id], memory.host_tokens)
            for (tier, location), count in sorted(memory.frames_by_place.items()):
                frames.add_metric([stream_id, tier, location], count)
        for info in self.watches:
            watch_checks.add_metric([info.stream_id, info.watch_id], info.checks)
            watch_events.add_metric([info.stream_id, info.watch_id], info.events)
            watch_seconds.add_metric([info.stream_id, info.watch_id], info.check_ms / 1000)
        yield from (decoded, dropped, ingested, reconnects, up, lag, fps, resident, budget, host, frames)
        yield from (snapshot_failures, watch_checks, watch_events, watch_seconds)


class HeapCollector(Collector):
    """The server process's malloc heap (glibc only; nothing elsewhere): in use, free inside its arenas, and
    mmapped; RSS well above in-use plus the model files means freed memory is being kept."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        usage = heap_usage()
        if usage is None:
            return
        heap = GaugeMetricFamily("streamer_heap_bytes", "The process's malloc heap, by kind.", labels=["kind"])
        heap.add_metric(["in_use"], usage.in_use)
        heap.add_metric(["free"], usage.free)
        heap.add_metric(["mmapped"], usage.mmapped)
        yield heap


class ModelCollector(Collector):
    """Each model's answer scheduler (`streamer.decoding`): passes and their wait, decode steps and rows."""

    def __init__(self) -> None:
        self.stats: dict[str, SchedulerStats] = {}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["worker"]
        passes = CounterMetricFamily(
            "streamer_model_passes", "Prefill and scoring passes run by the answer scheduler.", labels=labels
        )
        waited = CounterMetricFamily(
            "streamer_model_pass_wait_seconds", "Time passes waited for their turn on the model.", labels=labels
        )
        waiting = GaugeMetricFamily("streamer_model_passes_waiting", "Passes waiting for the model now.", labels=labels)
        steps = CounterMetricFamily("streamer_decode_steps", "Decode steps (one token for every row).", labels=labels)
        rows = CounterMetricFamily(
            "streamer_decode_rows", "Tokens decoded in steps; over decode steps, the mean batch size.", labels=labels
        )
        reads = CounterMetricFamily(
            "streamer_decode_step_reads",
            "Question reads that went in a decode step's pass (the rest were passes of their own).",
            labels=labels,
        )
        decoding = GaugeMetricFamily("streamer_decode_batch_rows", "Answers decoding together now.", labels=labels)
        largest = GaugeMetricFamily("streamer_decode_batch_max", "The largest decode batch so far.", labels=labels)
        held = GaugeMetricFamily(
            "streamer_decode_batch_kv_tokens",
            "KV tokens the decode batch has room for now (rows of room x tokens each): its memory.",
            labels=labels,
        )
        for worker, stats in sorted(self.stats.items()):
            passes.add_metric([worker], stats.passes)
            waited.add_metric([worker], stats.pass_wait_s)
            waiting.add_metric([worker], stats.waiting)
            steps.add_metric([worker], stats.steps)
            rows.add_metric([worker], stats.step_rows)
            reads.add_metric([worker], stats.step_reads)
            decoding.add_metric([worker], stats.decoding)
            largest.add_metric([worker], stats.max_batch)
            held.add_metric([worker], stats.batch_slots * stats.batch_tokens)
        yield from (passes, waited, waiting, steps, rows, reads, decoding, largest, held)

"""Prometheus metrics, one registry per app (no module-level state), names prefixed
``bastion:`` as vLLM and llama.cpp prefix theirs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bastion.engine.base import EngineState

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "bastion:requests", "Requests by model and status.", ["model", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "bastion:prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "bastion:generation_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.ttft = Histogram(
            "bastion:time_to_first_token_seconds",
            "Time to first token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "bastion:inter_token_latency_seconds",
            "Mean time between tokens of a request.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "bastion:e2e_request_latency_seconds",
            "End-to-end latency.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "bastion:request_queue_time_seconds",
            "Time a request waited for a slot.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "bastion:auth_failures", "Refused callers by reason.", ["reason"], registry=r
        )
        self.running = Gauge(
            "bastion:num_requests_running", "Requests being decoded.", ["model"], registry=r
        )
        self.waiting = Gauge(
            "bastion:num_requests_waiting", "Requests waiting for a slot.", ["model"], registry=r
        )
        self.load_seconds = Gauge(
            "bastion:model_load_seconds",
            "Seconds the last load took (verification included).",
            ["model"],
            registry=r,
        )
        self.verify_seconds = Gauge(
            "bastion:model_verification_seconds",
            "Seconds the last verification took.",
            ["model"],
            registry=r,
        )
        self.model_state = Gauge(
            "bastion:model_state",
            "1 for the state each catalog model is in (its engine's lifecycle), 0 for the others.",
            ["model", "state"],
            registry=r,
        )
        self.model_memory = Gauge(
            "bastion:model_memory_bytes",
            "Bytes a loaded model holds (weights plus KV cache); 0 when not loaded.",
            ["model"],
            registry=r,
        )
        self.model_loads = Gauge(
            "bastion:model_loads",
            "Loads of the model since the server started.",
            ["model"],
            registry=r,
        )
        self.model_unloads = Gauge(
            "bastion:model_unloads",
            "Unloads of the model (idle, to make room, by an operator) since the server started.",
            ["model"],
            registry=r,
        )
        self.swaps = Gauge(
            "bastion:model_swaps",
            "Swaps since the server started: loads that unloaded another model to make room.",
            registry=r,
        )

    def observe(self, record: dict[str, Any], seconds: float) -> None:
        """Account one finished request from its audit record."""
        if reason := record.get("auth_failure"):
            self.auth_failures.labels(reason).inc()
        model = record.get("model")
        if not model:
            return
        self.requests.labels(model, str(record.get("status"))).inc()
        self.e2e.labels(model).observe(seconds)
        prompt, completion = record.get("prompt_tokens"), record.get("completion_tokens")
        if prompt:
            self.prompt_tokens.labels(model).inc(prompt)
        if completion:
            self.generation_tokens.labels(model).inc(completion)
        if (ttft := record.get("ttft")) is not None:
            self.ttft.labels(model).observe(ttft)
            if completion and completion > 1:
                self.itl.labels(model).observe(max(0.0, seconds - ttft) / (completion - 1))
        if (queued := record.get("queued")) is not None:
            self.queue.labels(model).observe(queued)

    def render(
        self, states: Callable[[], dict[str, dict[str, object]]], swaps: int | None = None
    ) -> bytes:
        if swaps is not None:
            self.swaps.set(swaps)
        for name, state in states().items():
            for each in EngineState:
                self.model_state.labels(name, each.value).set(
                    1 if state.get("state") == each.value else 0
                )
            for gauge, key in (
                (self.model_memory, "memory"),
                (self.model_loads, "loads"),
                (self.model_unloads, "unloads"),
            ):
                value = state.get(key)
                if isinstance(value, int):
                    gauge.labels(name).set(value)
            running, waiting = state.get("running"), state.get("waiting")
            if isinstance(running, int) and isinstance(waiting, int):
                self.running.labels(name).set(running)
                self.waiting.labels(name).set(waiting)
            load = state.get("load_seconds")
            if isinstance(load, float):
                self.load_seconds.labels(name).set(load)
            verify = state.get("verify_seconds")
            if isinstance(verify, float):
                self.verify_seconds.labels(name).set(verify)
        return generate_latest(self.registry)

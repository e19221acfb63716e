"""The Prometheus registry behind GET /metrics: the engine's own metrics, read at each scrape,
and the server's time-to-first-token and end-to-end latency histograms."""

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0)
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                    50.0, 60.0, 120.0, 240.0, 480.0)


class _EngineCollector:
    """Prometheus metrics read from engine.metrics() at each scrape."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.engine.metrics()

        def gauge(name, doc, value):
            return GaugeMetricFamily(f"specdec_{name}", doc, value=float(value))

        def counter(name, doc, key):
            return CounterMetricFamily(f"specdec_{name}", doc, value=float(m.get(key, 0)))

        total, free, cached = m.get("kv_blocks_total", 0), m.get("kv_blocks_free", 0), m.get("kv_blocks_cached", 0)
        used = max(total - free - cached, 0)
        prompt, hit = m.get("prompt_tokens_total", 0), m.get("cached_prompt_tokens_total", 0)
        drafted, accepted = m.get("drafted_tokens_total", 0), m.get("accepted_tokens_total", 0)
        steps = m.get("target_steps_total", 0)
        yield gauge("num_requests_running", "Requests in the running batch.", m.get("running", 0))
        yield gauge("num_requests_waiting", "Requests waiting to be scheduled.", m.get("waiting", 0))
        yield gauge("kv_blocks_total", "KV cache blocks in all.", total)
        yield gauge("kv_blocks_used", "KV cache blocks held by requests.", used)
        yield gauge("kv_blocks_free", "KV cache blocks free.", free)
        yield gauge("kv_blocks_cached", "Free KV cache blocks kept for prefix reuse.", cached)
        yield gauge("kv_cache_usage_ratio", "Fraction of KV cache blocks held by requests.",
                    used / total if total else 0)
        yield counter("prompt_tokens", "Prompt tokens received.", "prompt_tokens_total")
        yield counter("prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache.",
                      "cached_prompt_tokens_total")
        yield gauge("prefix_cache_hit_rate", "Cached prompt tokens / prompt tokens, since start.",
                    hit / prompt if prompt else 0)
        yield counter("generation_tokens", "Tokens generated.", "generation_tokens_total")
        yield counter("requests_finished", "Requests finished (any reason).", "requests_finished_total")
        yield counter("spec_decode_draft_tokens", "Draft tokens proposed.", "drafted_tokens_total")
        yield counter("spec_decode_accepted_tokens", "Draft tokens accepted.", "accepted_tokens_total")
        yield counter("target_steps", "Target model forward steps (decode and verify).", "target_steps_total")
        yield gauge("spec_decode_acceptance_rate", "Accepted / drafted tokens, since start.",
                    accepted / drafted if drafted else 0)
        yield gauge("spec_decode_mean_accepted_length", "Tokens emitted per target step: 1 + accepted / steps.",
                    1 + accepted / steps if steps else 0)
        yield counter("num_preemptions", "Requests preempted for KV space.", "preemptions_total")


def metrics_registry(engine):
    """A registry of the engine's metrics plus the server's own TTFT and latency histograms:
    (registry, ttft, latency)."""
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    registry.register(_EngineCollector(engine))
    ttft = Histogram("specdec_time_to_first_token_seconds", "Time from request arrival to the first token.",
                     buckets=_TTFT_BUCKETS, registry=registry)
    latency = Histogram("specdec_e2e_request_latency_seconds", "Time from request arrival to the last token.",
                        buckets=_LATENCY_BUCKETS, registry=registry)
    return registry, ttft, latency

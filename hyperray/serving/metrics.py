"""The ingress's counters, rendered in Prometheus' text format at ``/metrics``.

Generator replicas report with every answer how large the generation pass was and whether the
adapter had to be generated; the ingress adds these up, so the numbers cover all replicas.
"""

from __future__ import annotations

from collections import Counter

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.adapters_generated = 0
        self.adapters_reused = 0
        self.batch_sizes: Counter[int] = Counter()
        """Requests answered, by the size of the generation pass they were answered in."""

    def observe_request(self, route: str, status: int) -> None:
        self.requests[(route, status)] += 1

    def observe_answer(self, batch_size: int, adapter_generated: bool) -> None:
        self.batch_sizes[batch_size] += 1
        self.adapters_generated += int(adapter_generated)

    def render(self) -> str:
        lines = [
            "# HELP hyperray_requests_total HTTP requests by route and status code.",
            "# TYPE hyperray_requests_total counter",
        ]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(f'hyperray_requests_total{{route="{route}",code="{status}"}} {count}')
        lines += [
            "# HELP hyperray_adapters_generated_total Hypernetwork passes that generated an adapter.",
            "# TYPE hyperray_adapters_generated_total counter",
            f"hyperray_adapters_generated_total {self.adapters_generated}",
            "# HELP hyperray_adapters_reused_total Adapter requests answered from the cache.",
            "# TYPE hyperray_adapters_reused_total counter",
            f"hyperray_adapters_reused_total {self.adapters_reused}",
            "# HELP hyperray_batch_size Most rows decoding together while a request ran.",
            "# TYPE hyperray_batch_size histogram",
        ]
        total = sum(self.batch_sizes.values())
        for bound in BATCH_BUCKETS:
            count = sum(c for size, c in self.batch_sizes.items() if size <= bound)
            lines.append(f'hyperray_batch_size_bucket{{le="{bound}"}} {count}')
        lines.append(f'hyperray_batch_size_bucket{{le="+Inf"}} {total}')
        lines.append(f"hyperray_batch_size_sum {sum(s * c for s, c in self.batch_sizes.items())}")
        lines.append(f"hyperray_batch_size_count {total}")
        return "\n".join(lines) + "\n"

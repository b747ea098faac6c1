"""vLLM's Prometheus /metrics: scrape, and take deltas over a measured window."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from ..errors import QuantgateError

# what every measured window reads: a body without one of these is not a vLLM server we can measure
# (or a model name that matches none of its series), and says so instead of yielding NaN figures
REQUIRED = (
    "vllm:request_decode_time_seconds_sum",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:prefix_cache_queries_total",
)


class MetricsError(QuantgateError, ValueError):
    """A /metrics body that is not Prometheus text, or lacks a series quantgate needs."""


@dataclass(frozen=True)
class MetricsSnapshot:
    """Sums over label sets for each metric name, plus per-label values for the few labelled series we need."""

    totals: dict[str, float]
    by_label: dict[str, dict[str, float]]  # "name|label" -> {label value: value}
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # histogram name -> {le: count}
    model_names: frozenset[str] = frozenset()  # every model_name label seen, for the error message

    def get(self, name: str, default: float = 0.0) -> float:
        # vLLM renamed some counters over versions (with and without the _total suffix)
        for candidate in _spellings(name):
            if candidate in self.totals:
                return self.totals[candidate]
        return default

    def has(self, name: str) -> bool:
        return any(candidate in self.totals for candidate in _spellings(name))

    def delta(self, before: MetricsSnapshot, name: str) -> float:
        return self.get(name) - before.get(name)

    def labelled(self, name: str, label: str) -> dict[str, float]:
        for candidate in _spellings(name):
            key = f"{candidate}|{label}"
            if key in self.by_label:
                return self.by_label[key]
        return {}

    def require(self, names: Iterable[str], model_name: str | None = None) -> None:
        missing = [n for n in names if not self.has(n)]
        if not missing:
            return
        served = f" for model_name={model_name!r}" if model_name is not None else ""
        seen = (f"; its series are labelled model_name={', '.join(sorted(self.model_names))}"
                if self.model_names and model_name not in self.model_names else "")
        raise MetricsError(f"/metrics has no {', '.join(missing)}{served}{seen} "
                           f"(not a vLLM server, or a vLLM that renamed these metrics)")


def _spellings(name: str) -> tuple[str, ...]:
    return (name, name + "_total", name.removesuffix("_total"))


def parse_prometheus(text: str, model_name: str | None = None) -> MetricsSnapshot:
    """prometheus_client's parser; sample values summed over label sets, series of other models left out."""
    totals: dict[str, float] = defaultdict(float)
    by_label: dict[str, dict[str, float]] = defaultdict(dict)
    buckets: dict[str, dict[float, float]] = defaultdict(dict)
    models: set[str] = set()
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:  # the parser's own words are terse ("could not convert string to float")
        first = text.lstrip().splitlines()[0][:80] if text.strip() else ""
        raise MetricsError(f"/metrics body is not Prometheus text ({exc}; it begins {first!r})") from None
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if "model_name" in labels:
                models.add(labels["model_name"])
            if model_name is not None and labels.get("model_name", model_name) != model_name:
                continue
            if sample.name.endswith("_bucket"):
                if "le" in labels:
                    counts = buckets[sample.name.removesuffix("_bucket")]
                    bound = float(labels["le"])  # "+Inf" parses to inf
                    counts[bound] = counts.get(bound, 0.0) + sample.value
                continue
            if sample.name.endswith("_created"):
                continue
            totals[sample.name] += sample.value
            if "position" in labels:
                slot = by_label[f"{sample.name}|position"]
                slot[labels["position"]] = slot.get(labels["position"], 0.0) + sample.value
    return MetricsSnapshot(totals=dict(totals), by_label={k: dict(v) for k, v in by_label.items()},
                           buckets={k: dict(v) for k, v in buckets.items()}, model_names=frozenset(models))


@dataclass(frozen=True)
class SpecDecodeWindow:
    drafts: float
    draft_tokens: float
    accepted_tokens: float
    accepted_per_position: tuple[float, ...]

    @property
    def mean_acceptance_length(self) -> float:
        """1 + accepted/drafts, as vLLM's SpecDecoding log line defines it."""
        return 1.0 + self.accepted_tokens / self.drafts if self.drafts else float("nan")

    @property
    def draft_acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else float("nan")

    @property
    def per_position_rates(self) -> tuple[float, ...]:
        return tuple(a / self.drafts for a in self.accepted_per_position) if self.drafts else ()


def spec_decode_window(before: MetricsSnapshot, after: MetricsSnapshot) -> SpecDecodeWindow:
    per_pos_after = after.labelled("vllm:spec_decode_num_accepted_tokens_per_pos_total", "position")
    per_pos_before = before.labelled("vllm:spec_decode_num_accepted_tokens_per_pos_total", "position")
    positions = sorted(per_pos_after, key=int)
    return SpecDecodeWindow(
        drafts=after.delta(before, "vllm:spec_decode_num_drafts_total"),
        draft_tokens=after.delta(before, "vllm:spec_decode_num_draft_tokens_total"),
        accepted_tokens=after.delta(before, "vllm:spec_decode_num_accepted_tokens_total"),
        accepted_per_position=tuple(per_pos_after[p] - per_pos_before.get(p, 0.0) for p in positions),
    )

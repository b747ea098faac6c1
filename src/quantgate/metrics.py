"""vLLM's Prometheus /metrics: scrape, and take deltas over a measured window."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)(?:\s+\d+)?$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class MetricsSnapshot:
    """Sums over label sets for each metric name, plus per-label values for the few labelled series we need."""

    totals: dict[str, float]
    by_label: dict[str, dict[str, float]]  # "name|label" -> {label value: value}

    def get(self, name: str, default: float = 0.0) -> float:
        # vLLM renamed some counters over versions (with and without the _total suffix)
        for candidate in (name, name + "_total", name.removesuffix("_total")):
            if candidate in self.totals:
                return self.totals[candidate]
        return default

    def delta(self, before: MetricsSnapshot, name: str) -> float:
        return self.get(name) - before.get(name)

    def labelled(self, name: str, label: str) -> dict[str, float]:
        for candidate in (name, name + "_total", name.removesuffix("_total")):
            key = f"{candidate}|{label}"
            if key in self.by_label:
                return self.by_label[key]
        return {}


def parse_prometheus(text: str, model_name: str | None = None) -> MetricsSnapshot:
    totals: dict[str, float] = defaultdict(float)
    by_label: dict[str, dict[str, float]] = defaultdict(dict)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if not match:
            continue
        name, labels_text, value_text = match.groups()
        try:
            value = float(value_text)
        except ValueError:
            continue
        labels = dict(_LABEL.findall(labels_text or ""))
        if model_name is not None and labels.get("model_name", model_name) != model_name:
            continue
        if name.endswith("_bucket") or name.endswith("_created"):
            continue
        totals[name] += value
        for key in ("position",):
            if key in labels:
                slot = by_label[f"{name}|{key}"]
                slot[labels[key]] = slot.get(labels[key], 0.0) + value
    return MetricsSnapshot(totals=dict(totals), by_label={k: dict(v) for k, v in by_label.items()})


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

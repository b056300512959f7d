"""The ad-attribution demo's summary as rich tables (``render``), from the plain data that
``python -m demos.ads --json`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

import runtime

from .._render import (
    add_latency,
    add_throughput,
    facts,
    format_bytes,
    headline,
    note,
    table,
)

__all__ = ["render"]


def _duration(ms: float | None) -> str:
    """A time to click, short: ``850ms``, ``4.2s``, ``38s``, ``2m31s``, ``1h05m``."""
    if ms is None:
        return "n/a"
    if ms < 1_000:
        return f"{ms:.0f}ms"
    if ms < 10_000:
        return f"{ms / 1000:.1f}s"
    seconds = round(ms / 1000)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _bound(ms: int) -> str:
    """A bucket bound: ``10s``, ``2m``."""
    return runtime.format_duration(ms)


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}%}"


def _bar(count: int, largest: int, width: int = 32) -> str:
    """A bar of ``count`` against ``largest``, in eighths of a character."""
    if not largest or not count:
        return ""
    eighths = max(1, round(count / largest * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[part]


def render(summary: Mapping[str, Any], console: Console) -> None:
    """Print the summary as rich tables."""
    config = summary["config"]
    accounting = summary["accounting"]
    window = runtime.format_duration(config["window_ms"])
    span = config["span_ms"]
    headline(
        console,
        "Ad attribution",
        f"{accounting['impressions']:,} impressions, "
        f"{accounting['clicks']:,} clicks, {config['ads']:,} ads in {config['campaigns']} "
        f"campaigns over {_bound(span)} (seed {config['seed']})",
    )
    console.print()
    _render_run(summary, console)
    _render_features(summary, console, window)
    _render_campaigns(summary, console, window)
    _render_time_to_click(summary, console, window)
    _render_join(summary, console)
    _render_top(summary, console)

    clicks = (
        f"[bold]Clicks[/]: {accounting['clicks']:,} = {accounting['attributed']:,} attributed "
        f"+ {accounting['beyond_window']:,} more than {window} after their impression"
    )
    if accounting["unaccounted_clicks"]:
        clicks += f" + [bold red]{accounting['unaccounted_clicks']:,} unaccounted[/]"
    if accounting["late"]:
        clicks += f" ({accounting['late']:,} late events)"
    console.print(clicks + ".", highlight=False)
    impressions = (
        f"[bold]Impressions[/]: {accounting['impressions']:,} = {accounting['matched']:,} "
        f"clicked + {accounting['unmatched']:,} unmatched rows"
    )
    if accounting["waiting"]:
        impressions += f" + [bold red]{accounting['waiting']:,} still waiting[/]"
    console.print(impressions + ".", highlight=False)
    if accounting["features_agree"]:
        console.print("The per-ad features of the join's stream agree with the records read.")
    else:
        console.print(
            "[bold red]The per-ad features of the join's stream disagree with the records read.",
        )


def _render_run(summary: Mapping[str, Any], console: Console) -> None:
    config = summary["config"]
    runs = facts("Run")
    runs.add_row(
        "events",
        f"{summary['events']:,}",
        f"impressions and clicks, replayed in {summary['seconds']:.2f} s",
    )
    add_throughput(runs, summary["events_per_second"], config)
    records_per_second = summary["records_per_second"]
    runs.add_row(
        "join records",
        f"{summary['join']['records_read']:,}",
        f"read from rt.join_records({summary['join']['name']!r})"
        + ("" if records_per_second is None else f", {records_per_second:,.0f} per second"),
    )
    add_latency(runs, summary)
    if summary["rejected"]:
        runs.add_row("rejected events", f"{summary['rejected']:,}", "in dead letters")
    if summary["feature_errors"]:
        runs.add_row("feature errors", f"{summary['feature_errors']:,}", "")
    runs.add_row(
        "ads with state",
        f"{summary['keys']:,}",
        f"{format_bytes(summary['state_bytes_per_key'])} of feature state each",
    )
    console.print(runs)
    step = runtime.format_duration(config["idle_timeout_ms"] // 2)
    note(
        console,
        [
            f"Replayed in steps of up to {config['chunk']:,} events or {step} of event time, "
            "each ending with rt.flush();",
            "idle time runs on the replay's clock (FeatureRuntime(clock=...)).",
        ],
    )
    console.print()


def _render_features(summary: Mapping[str, Any], console: Console, window: str) -> None:
    config = summary["config"]
    features = table("Feature set (per ad)")
    features.add_column("feature", style="bold")
    features.add_column("stream")
    features.add_column("type")
    features.add_column("input", no_wrap=True)
    features.add_column("meaning", style="dim")
    for feature in summary["features"]:
        features.add_row(
            feature["name"],
            feature["stream"],
            feature["type"],
            feature["input"],
            feature["description"],
        )
    console.print(features)
    note(
        console,
        [
            f'Stream "{config["join"]}": the records of a left join of impressions and clicks '
            f"on ad_id and imp_id,",
            f"a click up to {window} after its impression: a click with its impression, or an "
            "impression alone.",
        ],
    )
    console.print()


def _render_campaigns(summary: Mapping[str, Any], console: Console, window: str) -> None:
    accounting = summary["accounting"]
    campaigns = table("Click-through rate by campaign")
    for name in ("campaign", "impressions", "clicks", "attributed"):
        campaigns.add_column(name, justify="left" if name == "campaign" else "right")
    campaigns.add_column(f"CTR {window}", justify="right", style="bold")
    campaigns.add_column("expected", justify="right")
    campaigns.add_column("CTR any", justify="right")
    campaigns.add_column("true CTR", justify="right")
    for row in summary["campaigns"]:
        campaigns.add_row(
            row["campaign"],
            f"{row['impressions']:,}",
            f"{row['clicks']:,}",
            f"{row['attributed']:,}",
            _pct(row["ctr"]),
            _pct(row["expected_ctr"]),
            _pct(row["ctr_any_delay"]),
            _pct(row["true_ctr"]),
        )
    impressions = accounting["impressions"]
    campaigns.add_row(
        "all",
        f"{impressions:,}",
        f"{accounting['clicks']:,}",
        f"{accounting['attributed']:,}",
        _pct(accounting["attributed"] / impressions if impressions else None),
        "",
        _pct(accounting["clicks"] / impressions if impressions else None),
        "",
        style="bold",
    )
    console.print(campaigns)
    share = summary["time_to_click"]["share_within_window"]
    note(
        console,
        [
            f"attributed: clicks joined to their impression; CTR {window} = attributed ÷ "
            "impressions.",
            "CTR any = clicks ÷ impressions. true CTR: the simulator's chance that an impression "
            "is clicked.",
            f"expected: {share:.1%} of the true CTR ({share:.1%}: the simulator's chance that a "
            f"click comes within {window}).",
        ],
    )
    console.print()


def _render_time_to_click(summary: Mapping[str, Any], console: Console, window: str) -> None:
    ttc = summary["time_to_click"]
    console.print(
        f"[bold]Time from impression to click[/] ({ttc['clicks']:,} attributed clicks)",
        highlight=False,
    )
    console.print(
        f"p50 {_duration(ttc['p50_ms'])}   p90 {_duration(ttc['p90_ms'])}   "
        f"p99 {_duration(ttc['p99_ms'])}   max {_duration(ttc['max_ms'])}   "
        f"mean {_duration(ttc['mean_ms'])}",
        highlight=False,
    )
    histogram = ttc["histogram"]
    largest = max([b["clicks"] for b in histogram] + [ttc["beyond_window"]])
    every = ttc["clicks"] + ttc["beyond_window"]
    bars = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    bars.add_column(no_wrap=True)
    bars.add_column(no_wrap=True)
    bars.add_column(justify="right")
    bars.add_column(justify="right", style="dim")
    for bucket in histogram:
        low = "0" if bucket["from_ms"] == 0 else _bound(bucket["from_ms"])
        bars.add_row(
            f"{low} to {_bound(bucket['to_ms'])}",
            Text(_bar(bucket["clicks"], largest), style="cyan"),
            f"{bucket['clicks']:,}",
            _pct(bucket["clicks"] / every if every else None, 1),
        )
    bars.add_row(
        f"over {window}",
        Text(_bar(ttc["beyond_window"], largest), style="dim"),
        f"{ttc['beyond_window']:,}",
        _pct(ttc["beyond_window"] / every if every else None, 1),
    )
    console.print(bars)
    note(
        console,
        [
            f"From the join's records; over {window}: the clicks too late to be attributed, "
            "from the simulator.",
        ],
    )
    console.print()


def _render_join(summary: Mapping[str, Any], console: Console) -> None:
    config = summary["config"]
    join = summary["join"]
    stats = table(f'Join statistics: rt.statistics().joins["{config["join"]}"]')
    stats.add_column("")
    stats.add_column("at the last impression", justify="right")
    stats.add_column("after the drain", justify="right")
    stats.add_column("", style="dim")
    before, after, peak = join["at_last_impression"], join["drained"], join["peak"]
    rows = (
        ("records", "records", "matched pairs"),
        ("unmatched", "unmatched", "impressions alone"),
        ("late_dropped", "late", "events behind the watermark"),
        ("evicted", "evicted", "dropped by a buffer cap"),
        ("keys", "ads", "ads with buffered events"),
        ("buffered_left", "buffered impressions", ""),
        ("buffered_right", "buffered clicks", ""),
        ("state_bytes", "buffer bytes", "estimated"),
    )
    for name, label, meaning in rows:
        show = format_bytes if name == "state_bytes" else "{:,}".format
        stats.add_row(label, show(before[name]), show(after[name]), meaning)
    console.print(stats)
    largest = max(peak["largest_key"], before["largest_key"], after["largest_key"])
    note(
        console,
        [
            f"Largest buffers, sampled every {config['sample_every']} steps: "
            f"{peak['buffered_left']:,} impressions, {peak['buffered_right']:,} clicks, "
            f"{format_bytes(peak['state_bytes'])}; {largest:,} for one ad.",
            "The drain: after the last event the replay clock runs on past the window and the "
            "idle timeout,",
            "so every ad goes idle and its last impressions come out as unmatched rows.",
        ],
    )
    console.print()


def _render_top(summary: Mapping[str, Any], console: Console) -> None:
    top = summary["top"]
    if not top:
        return
    ads = table(f"The {len(top)} ads with the most attributed clicks: their features")
    ads.add_column("ad")
    ads.add_column("campaign")
    for name in ("impressions", "clicks", "clicks_10m", "ctr_10m", "time_to_click_ms"):
        ads.add_column(name, justify="right")
    for row in top:
        v = row["features"]
        ads.add_row(
            row["ad"],
            row["campaign"],
            f"{v['impressions']:,}",
            f"{v['clicks']:,}",
            f"{v['clicks_10m']:,}",
            _pct(v["ctr_10m"]),
            _duration(v["time_to_click_ms"]),
        )
    console.print(ads)
    console.print()

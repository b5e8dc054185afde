#!/usr/bin/env python3
"""Draws benches/compare.sh's results as one SVG: throughput per scenario (Tern beside
Mosquitto and rumqttd) and memory per idle client. No libraries: the SVG is written by hand.

    python3 benches/chart.py RESULTS_DIR OUT.svg
"""
import re
import statistics
import sys
from html import escape

BROKERS = [("tern", "Tern", "#2f6fdf"), ("mosquitto", "Mosquitto", "#8a94a6"), ("rumqttd", "rumqttd", "#e0a23a")]


def load(path):
    """label -> {key: median value} from one broker's `label key=value ...` lines."""
    runs = {}
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return {}
    for line in lines:
        label, _, rest = line.strip().partition(" ")
        kv = dict(re.findall(r"(\w+)=([^\s]+)", rest))
        runs.setdefault(label.split("#")[0], []).append(kv)
    rows = {}
    for label, kvs in runs.items():
        row = {}
        for key in kvs[0]:
            try:
                row[key] = statistics.median(float(kv[key]) for kv in kvs if key in kv)
            except ValueError:
                pass
        rows[label] = row
    return rows


def human(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    return f"{v:,.0f}"


def panel(title, unit, groups, y, width):
    """Horizontal grouped bars; groups = [(label, [value or None per broker])]. Returns
    (svg parts, height)."""
    parts = [f'<text x="10" y="{y + 18}" class="title">{escape(title)}</text>']
    top = y + 32
    bar, gap = 9, 10
    left, right = 150, width - 70
    top_value = max([v for _, vs in groups for v in vs if v] or [1])
    for i, (label, values) in enumerate(groups):
        gy = top + i * (len(BROKERS) * bar + gap)
        parts.append(f'<text x="{left - 8}" y="{gy + len(BROKERS) * bar / 2 + 4}" class="label" text-anchor="end">{escape(label)}</text>')
        for j, v in enumerate(values):
            by = gy + j * bar
            if v is None:
                continue
            w = max(1.0, (right - left) * v / top_value)
            parts.append(f'<rect x="{left}" y="{by}" width="{w:.1f}" height="{bar - 1}" fill="{BROKERS[j][2]}"/>')
            parts.append(f'<text x="{left + w + 4:.1f}" y="{by + bar - 1.5}" class="value">{human(v)}</text>')
    height = 32 + len(groups) * (len(BROKERS) * bar + gap) + 6
    parts.append(f'<text x="{right + 60}" y="{y + 18}" class="unit" text-anchor="end">{escape(unit)}</text>')
    return parts, height


def main():
    out_dir, svg_path = sys.argv[1], sys.argv[2]
    res = {b: load(f"{out_dir}/{b}.results") for b, _, _ in BROKERS}
    flows = []
    for payload in ("64B", "1024B"):
        for kind in ("fanin", "fanout", "pairs"):
            for qos in (0, 1, 2):
                label = f"{kind}_q{qos}_{payload}"
                values = [res[b].get(label, {}).get("rate_msg_s") for b, _, _ in BROKERS]
                if any(values):
                    flows.append((f"{kind} QoS {qos} {payload}", values))
    memory = [("idle client", [res[b].get("connections", {}).get("bytes_per_conn") for b, _, _ in BROKERS])]
    width = 760
    parts, h1 = panel("Throughput (msg/s, higher is better)", "msg/s", flows, 40, width)
    more, h2 = panel("Memory per idle connection (bytes, lower is better)", "bytes", memory, 40 + h1 + 10, width)
    parts += more
    height = 40 + h1 + 10 + h2 + 10
    legend = []
    x = 10
    for _, name, colour in BROKERS:
        legend.append(f'<rect x="{x}" y="12" width="12" height="12" fill="{colour}"/><text x="{x + 17}" y="22" class="label">{name}</text>')
        x += 110
    svg = f'''<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">
<style>text {{ font: 11px system-ui, -apple-system, sans-serif; fill: #1d2430; }}
.title {{ font-size: 13px; font-weight: 600; }} .value {{ font-size: 9px; fill: #4b5563; }} .unit {{ fill: #6b7686; }}</style>
<rect width="100%" height="100%" fill="#fff"/>
{"".join(legend)}
<text x="{width - 10}" y="22" class="unit" text-anchor="end">benches/compare.sh, 2 vCPU: broker on CPU 0, load on CPU 1</text>
{chr(10).join(parts)}
</svg>
'''
    with open(svg_path, "w") as f:
        f.write(svg)


if __name__ == "__main__":
    main()

"""Pictures and a small HTML page for a localization run: what a researcher looks at before trusting it.

Every file goes through the run folder's atomic writes (a killed run never leaves a half-written picture);
example grids use the one grid home, :func:`textloc.runs.grids.image_grid`.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

from textloc.runs.grids import image_grid
from textloc.runs.io import atomic_write_bytes

METRICS = ("exact", "f1", "cer", "source_exact", "ssim")
#: One name per metric, the same in every table and figure of the report.
METRIC_LABELS = {"exact": "exact", "f1": "F1", "cer": "CER", "source_exact": "source kept", "ssim": "SSIM",
                 "psnr": "PSNR"}
#: What a reader of report.html needs to know to read its numbers (issue #18).
LEGEND = """<h2>How to read this report</h2><dl>
<dt>exact</dt><dd>share of pairs whose image, read by OCR, shows the <i>target</i> text exactly (the patch
worked).</dd>
<dt>F1 / CER</dt><dd>word-level F1 of the OCR reading against the target text; character error rate
(0 = perfect).</dd>
<dt>source kept</dt><dd>share of pairs whose image still shows the <i>source</i> text exactly (the patch did
nothing to the text).</dd>
<dt>SSIM / PSNR</dt><dd>similarity of the patched image to the unpatched source image (1 / high = unchanged;
identical images count as 100 dB).</dd>
<dt>none / all / target rows</dt><dd><b>none</b>: the source prompt with no patch (the floor);
<b>all</b>: every text layer patched (the score the selection is measured against);
<b>target</b>: the target prompt's own image (the ceiling).</dd>
<dt>chosen layers</dt><dd>the smallest k best layers whose exact rate reaches the stated fraction of the
all-layers rate.</dd>
<dt>why editing may use more layers</dt><dd>editing uses the <i>full-score set</i>: the smallest k best layers
that reach the all-layers rate itself (<code>full_score_layers</code> in summary.json when the curve was
measured that far). On the embedded model layer 4 picks the glyphs, but layers 0 and 1 decide how many
character slots there are, so edits that change the length need 4 + 0 + 1.</dd>
<dt>pairs seen / dropped after</dt><dd>adaptive search: how many pairs a layer was scored on before the racing
rule stopped it (see the Search section).</dd></dl>"""


def _short(name: str) -> str:
    return (name.replace("transformer_blocks", "tb").replace("attentions", "att").replace("single_tb", "stb")
            .replace("down_blocks", "down").replace("up_blocks", "up").replace("mid_block", "mid"))


def plot_layers(summary: dict[str, Any], path: Path) -> None:
    """Bar chart of each layer's target score, with the no-patch and all-layers bounds as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_layer = summary["per_layer"]
    chosen = set(summary["chosen_layers"])
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(per_layer) + 2), 3.6))
    xs = range(len(per_layer))
    colours = ["tab:red" if p["name"] in chosen else "tab:blue" for p in per_layer]
    ax.bar(xs, [p["exact"] for p in per_layer], color=colours)
    ax.axhline(summary["bounds"]["all"]["exact"], color="black", ls="--", lw=1, label="all layers")
    ax.axhline(summary["bounds"]["none"]["exact"], color="grey", ls=":", lw=1, label="no patch")
    ax.axhline(summary["threshold"], color="tab:red", ls="-.", lw=1, label=f"{summary['fraction']:.0%} of all")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{p['index']}: {_short(p['name'])}" for p in per_layer], rotation=70, ha="right",
                       fontsize=7)
    ax.set_ylabel("target read exactly (rate)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Patching one layer at a time (red: chosen)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_heatmap(summary: dict[str, Any], path: Path) -> None:
    """Layers x metrics heatmap (exact, F1, CER, source kept, SSIM to source)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    per_layer = summary["per_layer"]
    data = np.array([[p.get(m) if p.get(m) is not None else np.nan for m in METRICS] for p in per_layer],
                    dtype=float).T
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(per_layer) + 2), 2.8))
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(METRICS)))
    ax.set_yticklabels([METRIC_LABELS[m] for m in METRICS], fontsize=8)
    ax.set_xticks(range(len(per_layer)))
    ax.set_xticklabels([str(p["index"]) for p in per_layer], fontsize=7)
    ax.set_xlabel("text layer (execution order)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_curve(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = summary["curve"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([p["k"] for p in curve], [p["exact"] for p in curve], marker="o")
    ax.axhline(summary["threshold"], color="tab:red", ls="-.", lw=1)
    ax.set_xlabel("k best layers patched")
    ax.set_ylabel("target read exactly (rate)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Cumulative curve")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def search_html(summary: dict[str, Any]) -> str:
    """How the records were chosen: the search, its rule, the generations made, the layers dropped early."""
    search = summary.get("search") or {"method": "exhaustive"}
    made, full = summary.get("generations"), summary.get("generations_exhaustive")
    cost = "" if not made or not full else (f" {made:,} generations of the exhaustive sweep's {full:,} "
                                            f"({made / full:.0%}).")
    if search["method"] != "adaptive":
        return f"<h2>Search</h2><p>Exhaustive: every layer on every pair.{cost}</p>"
    rule = ", ".join(f"{k} = {html.escape(str(v))}" for k, v in search.items() if k != "method")
    dropped = sorted(summary.get("dropped_after", {}).items(), key=lambda item: item[1])
    by_name = {p["name"]: p for p in summary.get("per_layer", [])}
    rows = "".join(f"<tr><td>{by_name[n]['index'] if n in by_name else ''}</td><td><code>{html.escape(n)}</code></td>"
                   f"<td>{after}</td><td>{_fmt(by_name[n]['exact']) if n in by_name else ''}</td></tr>"
                   for n, after in dropped)
    table = ("<table><tr><th>#</th><th>layer</th><th>dropped after (pairs)</th><th>exact on those pairs</th></tr>"
             f"{rows}</table>") if rows else "<p>No layer was dropped early.</p>"
    return (f"<h2>Search</h2><p>Adaptive (racing, see <code>textloc.apps.localize.search</code>): {rule}.{cost} "
            "Layers that could no longer rank first stopped early; their rates are on the pairs they saw.</p>"
            + table)


def write_report(folder: Any, summary: dict[str, Any], images: dict, pairs: list) -> None:
    """``layers.png``, ``heatmap.png``, ``curve.png``, ``examples_best.png``/``_worst.png`` and ``report.html``
    in the run folder ``folder`` (a :class:`textloc.runs.folder.RunFolder`)."""
    out = folder.path
    plot_layers(summary, out / "layers.png")
    plot_heatmap(summary, out / "heatmap.png")
    plot_curve(summary, out / "curve.png")
    ranking = summary["ranking"]
    grids = []
    for tag, name in (("best", ranking[0]["name"]), ("worst", ranking[-1]["name"])):
        rows = [[images[(v, p.key)] for v in ("none", f"layer:{name}", "target")] for p in pairs
                if all((v, p.key) in images for v in ("none", f"layer:{name}", "target"))][:6]
        if rows and hasattr(rows[0][0], "resize"):
            labels = ["source", f"patched: {_short(name)}", "target"]
            folder.save_image(f"examples_{tag}.png", image_grid(rows, labels=labels, scale=4))
            grids.append((tag, name))
    rows_html = "".join(
        f"<tr{' class=chosen' if p['name'] in summary['chosen_layers'] else ''}><td>{p['index']}</td>"
        f"<td><code>{html.escape(p['name'])}</code></td><td>{p['kind']}</td><td>{p['params']:,}</td>"
        + "".join(f"<td>{_fmt(p.get(m))}</td>" for m in ("exact", "f1", "cer", "source_exact", "ssim", "psnr"))
        + f"<td>{p.get('pairs_seen', summary['n_pairs'])}</td>"
        + f"<td>{'–' if p.get('dropped_after') is None else p['dropped_after']}</td></tr>"
        for p in summary["per_layer"]
    )
    curve_html = "".join(f"<tr><td>{p['k']}</td><td>{_fmt(p['exact'])}</td><td>{_fmt(p['f1'])}</td></tr>"
                         for p in summary["curve"])
    bounds_html = "".join(f"<tr><td>{v}</td>" + "".join(f"<td>{_fmt(summary['bounds'][v].get(m))}</td>"
                                                        for m in ("exact", "f1", "cer", "ssim")) + "</tr>"
                          for v in ("none", "all", "target"))
    grids_html = "".join(f"<h3>{tag} layer: <code>{html.escape(name)}</code></h3><img src='examples_{tag}.png'>"
                         for tag, name in grids)
    cfg = html.escape(json.dumps(summary["config"], indent=1, sort_keys=True, default=str))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>textloc localization</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}td,th{{padding:2px 8px;text-align:right}}
tr.chosen{{background:#fdd}}code{{font-size:90%}}</style></head><body>
<h1>Localization report</h1>
<p><b>Chosen layers</b> ({len(summary['chosen_layers'])}, {summary['chosen_params']:,} parameters,
{summary['chosen_share']:.3%} of the denoiser): {', '.join(f'<code>{html.escape(n)}</code>'
for n in summary['chosen_layers'])}</p>
<p>Selection: smallest k whose exact-match rate reaches {summary['fraction']:.0%} of the all-layers rate
({_fmt(summary['all_layers_score'])} → threshold {_fmt(summary['threshold'])}). {summary['n_pairs']} pairs.</p>
<img src="layers.png"><img src="curve.png"><img src="heatmap.png">
{LEGEND}
{search_html(summary)}
<h2>Bounds</h2><table><tr><th>variant</th><th>exact</th><th>F1</th><th>CER</th><th>SSIM to source</th></tr>
{bounds_html}</table>
<h2>Per layer</h2><table><tr><th>#</th><th>module</th><th>kind</th><th>params</th><th>exact</th><th>F1</th>
<th>CER</th><th>source kept</th><th>SSIM</th><th>PSNR</th><th>pairs seen</th><th>dropped after</th></tr>
{rows_html}</table>
<h2>k best layers</h2><table><tr><th>k</th><th>exact</th><th>F1</th></tr>{curve_html}</table>
<h2>Examples</h2>{grids_html}
<h2>Config</h2><pre>{cfg}</pre></body></html>"""
    folder.write_text("report.html", page)


def plot_heads(layer: dict[str, Any], path: Path) -> None:
    """Bar chart of each head's exact rate alone (chosen heads in red), with the whole layer's rate as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = layer["per_head"]
    chosen = set(layer["chosen_heads"])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.4 * len(heads) + 2), 3.2))
    ax.bar([h["head"] for h in heads], [h["exact"] for h in heads],
           color=["tab:red" if h["head"] in chosen else "tab:blue" for h in heads])
    ax.axhline(layer["layer_score"], color="black", ls="--", lw=1, label="whole layer")
    ax.set_xlabel(f"head of layer {layer['index']}")
    ax.set_ylabel("target read exactly (rate)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Patching one head at a time (red: chosen set)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_heads_report(folder: Any, summary: dict[str, Any]) -> None:
    """``heads_LAYERINDEX.png`` per layer and ``report.html`` for a head localization run."""
    parts = []
    for layer in summary["layers"]:
        picture = f"heads_{layer['index']}.png"
        plot_heads(layer, folder.path / picture)
        rows = "".join(
            f"<tr{' class=chosen' if h['head'] in layer['chosen_heads'] else ''}><td>{h['head']}</td>"
            + "".join(f"<td>{_fmt(h.get(m))}</td>" for m in ("exact", "f1", "cer", "source_exact", "ssim"))
            + f"<td>{h['pairs_seen']}</td><td>{'–' if h['dropped_after'] is None else h['dropped_after']}</td></tr>"
            for h in layer["per_head"])
        curve = "".join(f"<tr><td>{p['k']}</td><td>{', '.join(map(str, p['heads']))}</td><td>{_fmt(p['exact'])}</td>"
                        "</tr>" for p in layer["curve"])
        parts.append(
            f"<h2>Layer {layer['index']}: <code>{html.escape(layer['layer'])}</code> ({layer['n_heads']} heads)</h2>"
            f"<p>Whole layer: {_fmt(layer['layer_score'])}. <b>Chosen heads</b> (greedy, first set reaching the whole "
            f"layer's rate): {', '.join(map(str, layer['chosen_heads']))}; reaching {summary['fraction']:.0%} of it: "
            f"{', '.join(map(str, layer['fraction_heads']))}. {layer['generations']:,} generations "
            f"(exhaustive: {layer['generations_exhaustive']:,}).</p><img src='{picture}'>"
            "<table><tr><th>head</th><th>exact</th><th>F1</th><th>CER</th><th>source kept</th><th>SSIM</th>"
            f"<th>pairs seen</th><th>dropped after</th></tr>{rows}</table>"
            f"<h3>Greedy curve</h3><table><tr><th>k</th><th>heads</th><th>exact</th></tr>{curve}</table>")
    search = summary["search"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>textloc head localization</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}td,th{{padding:2px 8px;text-align:right}}
tr.chosen{{background:#fdd}}code{{font-size:90%}}</style></head><body>
<h1>Head localization</h1><p>{summary['n_pairs']} pairs; search: {html.escape(str(search))}.</p>
{''.join(parts)}
<h2>Config</h2><pre>{html.escape(json.dumps(summary['config'], indent=1, sort_keys=True, default=str))}</pre>
</body></html>"""
    folder.write_text("report.html", page)

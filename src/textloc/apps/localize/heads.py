"""Head localization: which attention heads of a text layer carry what the whole layer carries.

The layer search stops at whole layers; one layer still has several heads (8 in the embedded U-Net, 24 in an
SD3 joint block), and its text K/V are one column block per head. A patch plan with ``heads=[h]`` replaces only
head ``h``'s columns of the layer's text K/V with the target's (``core.patch_run``), so each head can be scored
alone exactly like a layer:

1. **Heads alone.** For every requested layer, each head is patched alone on the validation pairs and scored
   as the sweep scores a layer (read, exact match, F1, preservation); the bounds are no patch (``none``) and
   the whole layer (``layer:NAME``, every head), plus the target's own generation.
2. **Greedy set.** Heads are ranked (exact, then F1, then head index) and added in rank order until the set's
   exact rate reaches the whole layer's (the search's ``until="full"`` curve); that set is ``chosen_heads``.
   The set reaching ``fraction`` of the layer's rate is reported too (``fraction_heads``).

It is the layer search run on heads (``search.adaptive_search`` or ``exhaustive_search``, as ``--search``
says), so rounds, drop rule and error bound are the same, with ``all`` standing for the whole layer. Records
live in the same results file as a layer sweep's, keyed ``head:LAYER:H`` and ``heads:LAYER:H1,H2,...``;
resume, batching and determinism are the sweep's (a head plan patches one head set per pipeline call, so a
work item is one head variant x up to ``batch_size`` pairs).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from textloc.apps.localize.scoring import Reader
from textloc.apps.localize.search import SearchResult, adaptive_search, exhaustive_search
from textloc.apps.localize.sweep import LocalizationResult, LocalizeConfig, Localizer, _versions
from textloc.core.engine import generate
from textloc.core.layers import TextLayer, get_denoiser, model_fingerprint, resolve_layers
from textloc.core.plan import PatchPlan
from textloc.data.pairs import PromptPair
from textloc.errors import InputError

METRICS = ("exact", "f1", "cer", "source_exact", "ssim", "psnr")


def head_count(pipe: Any, layer: TextLayer) -> int:
    """Attention heads of ``layer`` (diffusers' ``Attention.heads``)."""
    heads = getattr(get_denoiser(pipe).get_submodule(layer.name), "heads", None)
    if not isinstance(heads, int) or heads < 1:
        raise InputError(f"{layer.name} has no attention heads to localize")
    return heads


class HeadLocalizer(Localizer):
    """Head localization of ``head_layers`` (names or indices); generation, records and resume are the sweep's."""

    def __init__(self, pipe: Any, pairs: list[PromptPair], config: LocalizeConfig, out: str | Path | None,
                 head_layers: list[str | int], reader: Reader | None = None,
                 call_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(pipe, pairs, config, out, reader, call_kwargs)
        if not head_layers:
            raise InputError("Expected --heads to name at least one layer")
        self.head_layers = resolve_layers(pipe, list(head_layers))
        self.n_heads = {layer.name: head_count(pipe, layer) for layer in self.head_layers}
        self._head_sets: dict[str, tuple[str, list[int]]] = {}  # variant -> (layer, heads it patches)

    # -- generation: a head set is a plan-level choice, so one head variant per pipeline call -----------------
    def _generate_batch(self, variants: list[tuple[str, list[str]]], pairs: list[PromptPair]) -> dict:
        heads = [self._head_sets[v] for v, _ in variants if v in self._head_sets]
        if not heads:
            return super()._generate_batch(variants, pairs)
        if len(variants) != 1:
            raise AssertionError("a head variant runs alone in its batch")  # guaranteed by evaluate()
        (variant, _), (layer, head_list) = variants[0], heads[0]
        if self.prefix is not None and tuple(p.key for p in pairs) != self._prefix_chunk:
            self.prefix.clear()
            self._prefix_chunk = tuple(p.key for p in pairs)
        plan = PatchPlan(layers=[layer], start_step=self.config.start_step, branches=self.config.branches,
                         heads=sorted(head_list))
        kwargs = {**self.call_kwargs, "generator": [self._generator(p.seed) for p in pairs]}
        images = generate(self.pipe, [p.source for p in pairs], plan, target_prompt=[p.target for p in pairs],
                          prefix=self.prefix, **kwargs).images
        return {(variant, p.key): image for p, image in zip(pairs, images, strict=True)}

    @staticmethod
    def _generator(seed: int) -> Any:
        import torch

        return torch.Generator().manual_seed(seed)

    def _evaluator(self, layer: TextLayer):
        """The search's ``evaluate`` for one layer: its unit names are head indices, ``all`` the whole layer."""
        def real(variant: str, units: list[str]) -> str:
            if variant == "all":
                return f"layer:{layer.name}"
            if variant.startswith("layer:"):
                return f"head:{layer.name}:{variant.split(':', 1)[1]}"
            if variant.startswith("top:"):
                return f"heads:{layer.name}:{','.join(units)}"
            return variant  # none, target

        def evaluate(variants: list[tuple[str, list[str]]], indices: list[int]) -> dict[str, list]:
            mapped = {variant: real(variant, units) for variant, units in variants}
            for variant, units in variants:
                if mapped[variant].startswith("head"):
                    self._head_sets[mapped[variant]] = (layer.name, [int(u) for u in units])
            plain = [(mapped[v], [layer.name] if v == "all" else []) for v, _ in variants
                     if not mapped[v].startswith("head")]
            out = self.evaluate(plain, indices, desc=f"heads of {layer.index}: bounds") if plain else {}
            pairs = [self.pairs[i] for i in indices]
            for variant, _ in variants:
                name = mapped[variant]
                if name.startswith("head"):
                    # one head set per call: a work item is this variant x up to batch_size pairs
                    self._run_variants([(name, [layer.name])], f"heads of {layer.index}: {name.split(':')[-1]}",
                                       pairs, chunk=self.config.batch_size)
                    out[name] = [(float(self.records[(name, p.key)]["exact"]),
                                  float(self.records[(name, p.key)]["f1"])) for p in pairs]
            return {variant: out[mapped[variant]] for variant, _ in variants}

        return evaluate

    # -- the search ---------------------------------------------------------------------------------------
    def _sweep(self) -> LocalizationResult:
        layers = []
        for layer in self.head_layers:
            units = [str(h) for h in range(self.n_heads[layer.name])]
            ks = list(range(len(units) + 1))  # greedy: every set size, in rank order
            evaluate = self._evaluator(layer)
            if self.config.search == "adaptive":
                result = adaptive_search(units, len(self.pairs), evaluate, rule=self.rule,
                                         fraction=self.config.fraction, ks=ks, until="full")
            else:
                result = exhaustive_search(units, len(self.pairs), evaluate, fraction=self.config.fraction, ks=ks,
                                           until="full")
            layers.append(self._layer_summary(layer, result))
        summary = {
            "model_fingerprint": model_fingerprint(self.pipe),
            "layers": layers,
            "fraction": self.config.fraction,
            "search": {**self.search_info(), "until": "full"},
            "generations": sum(s["generations"] for s in layers),
            "generations_exhaustive": sum(s["generations_exhaustive"] for s in layers),
            "n_pairs": len(self.pairs),
            "config": asdict(self.config),
            "versions": _versions(),
        }
        if self.folder is not None and self.rank == 0:
            from textloc.apps.localize.report import write_heads_report

            self.folder.write_json("summary.json", summary)
            write_heads_report(self.folder, summary)
        return LocalizationResult(summary, sorted(self.records.values(), key=lambda r: (r["variant"], r["pair"])))

    def _layer_summary(self, layer: TextLayer, result: SearchResult) -> dict[str, Any]:
        def variant(point: dict[str, Any]) -> str:
            k, units = point["k"], point["layers"]
            if k == 0:
                return "none"
            if k == self.n_heads[layer.name]:
                return f"layer:{layer.name}"
            return f"head:{layer.name}:{units[0]}" if k == 1 else f"heads:{layer.name}:{','.join(units)}"

        curve = [{"k": p["k"], "variant": variant(p), "exact": p["exact"], "f1": self._score(variant(p), "f1"),
                  "heads": [int(u) for u in p["layers"]]} for p in result.curve]
        per_head = [{"head": h, **{m: self._score(f"head:{layer.name}:{h}", m) for m in METRICS},
                     "pairs_seen": result.pairs_seen.get(str(h), 0),
                     "dropped_after": result.dropped_after.get(str(h))} for h in range(self.n_heads[layer.name])]
        whole = f"layer:{layer.name}"
        return {
            "layer": layer.name, "index": layer.index, "n_heads": self.n_heads[layer.name],
            "layer_score": result.all_score,
            "threshold": self.config.fraction * result.all_score,
            "chosen_heads": [int(u) for u in result.full_score],
            "fraction_heads": [int(u) for u in result.chosen],
            "ranking": [{"head": int(u), "exact": score} for u, score in result.ranking],
            "curve": curve,
            "per_head": per_head,
            "bounds": {v: {m: self._score(v, m) for m in METRICS} for v in ("none", whole, "target")},
            "generations": result.generations,
            "generations_exhaustive": result.generations_exhaustive,
            "dropped_after": {int(u): n for u, n in result.dropped_after.items()},
        }

    def _folder_spec(self) -> tuple[str, dict[str, Any], dict[str, Path]]:
        command, config, inputs = super()._folder_spec()
        return "localize-heads", {**config, "heads": [layer.name for layer in self.head_layers]}, inputs


def localize_heads(pipe: Any, pairs: list[PromptPair], layers: list[str | int], config: LocalizeConfig | None = None,
                   *, out: str | Path | None = None, reader: Reader | None = None,
                   **call_kwargs: Any) -> LocalizationResult:
    r"""Rank the attention heads of ``layers`` and find the greedy head set reaching each whole layer's score.

    Args:
        pipe: a supported diffusers pipeline.
        pairs: (source, target) prompt pairs, as for :func:`textloc.apps.localize.sweep.localize`.
        layers: text layers (module paths or execution-order indices) whose heads are localized.
        config: the sweep's settings (``search``, ``fraction``, steps, reader …).
        out: run folder (``results.jsonl``, ``summary.json``, ``heads.png``, ``report.html``); resumable.
        reader, call_kwargs: as for ``localize``.

    Returns:
        ``LocalizationResult`` whose ``summary["layers"]`` holds, per layer, the head ranking, the curve and the
        chosen heads.
    """
    return HeadLocalizer(pipe, pairs, config or LocalizeConfig(), out, layers, reader, call_kwargs).run()

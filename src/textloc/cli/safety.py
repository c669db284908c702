"""``textloc safe`` and ``textloc bench safety``: render prompts without their harmful words, and measure it.

Thin shells over :mod:`textloc.apps.safety`. Every input (mapping files, policy, LLM settings, template) is checked
before the model loads, so a typo costs a second, not a model load; outputs are written only after all
generation succeeded, each to a temporary name renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from textloc.cli.options import (
    GuidanceOpt,
    ModelOpt,
    OcrOpt,
    OcrOrNoneOpt,
    SeedOpt,
    StepsOpt,
    bench_group,
    count_option,
    in_file_option,
    number_option,
    out_dir_option,
    seed_option,
    show_progress,
)
from textloc.errors import InputError
from textloc.runs.io import atomic_write_bytes, image_bytes

LayersOpt = Annotated[str, typer.Option(help="preset | localization summary.json | all | names/indices (comma list)")]
POLICIES = ("mapping", "llm", "default")
DETECTORS = ("offline", "llm")


def _call_kwargs(steps: int | None, guidance: float | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if steps is not None:
        if steps < 1:
            raise InputError(f"Expected --steps >= 1, but got {steps}")
        kwargs["num_inference_steps"] = steps
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    return kwargs


def _detector(name: str, threshold: float, strict_llm: bool, extra_words: list[str]) -> Any:
    from textloc.apps.safety import LLMClient, LLMConfig, LLMDetector, OfflineDetector

    if name not in DETECTORS:
        raise InputError(f"Expected --detector in {list(DETECTORS)}, but got {name!r}")
    offline = OfflineDetector(threshold, extra_words=extra_words)
    if name == "offline":
        return offline
    return LLMDetector(LLMClient(LLMConfig.from_env()), threshold, offline=offline, fallback=not strict_llm)


def _policy(policy: str | None, mappings: Path | None, words: Path | None) -> tuple[str, dict[str, str] | None]:
    """The policy name and, for ``mapping``, the parsed file (mapping is the default when a file is given)."""
    from textloc.apps.safety import load_mappings

    policy = policy or ("mapping" if mappings else "default")
    if policy not in POLICIES:
        raise InputError(f"Expected --policy in {list(POLICIES)}, but got {policy!r}")
    if policy == "mapping" and mappings is None:
        raise InputError("Expected --mappings FILE with --policy mapping, but got none")
    table = load_mappings(mappings, words) if mappings is not None else None
    return policy, table


def _default_clean_words(words: Path) -> Path | None:
    """ToxicBench keeps its non-toxic list next to the toxic one (``train_non_tox.txt``)."""
    candidates = sorted(p for p in words.parent.glob("*non_tox*.txt") if p != words)
    return candidates[0] if candidates else None


def register(app: typer.Typer) -> None:
    @app.command()
    def safe(
        prompt: Annotated[str, typer.Option("--prompt", "-p", help="the prompt")],
        out: Annotated[Path, out_dir_option("folder for image.png and report.json")],
        model: ModelOpt = "embedded",
        seed: SeedOpt = 0,
        steps: StepsOpt = None,
        guidance: GuidanceOpt = None,
        layers: LayersOpt = "preset",
        policy: Annotated[str | None, typer.Option(help="mapping | llm | default (default: mapping if --mappings "
                                                        "is given, else default)")] = None,
        mappings: Annotated[Path | None, in_file_option("--mappings", "replacement mapping (ToxicBench "
                                                        "toxic_mappings.txt, or 'word<TAB>replacement' lines)")] = None,
        words: Annotated[Path | None, in_file_option("--words", "words file a ToxicBench mapping is aligned with "
                                                     "(default: toxic_words.txt next to it)")] = None,
        detector: Annotated[str, typer.Option(help="offline | llm (TEXTLOC_LLM_URL, TEXTLOC_LLM_MODEL)")] = "offline",
        threshold: Annotated[float, number_option("--threshold", "flag words scoring at least this", 0.0, 1.0)] = 0.5,
        strict_llm: Annotated[bool, typer.Option("--strict-llm", help="fail if the LLM cannot answer instead of "
                                                 "falling back to the offline detector")] = False,
        keep_unsafe: Annotated[bool, typer.Option("--keep-unsafe", help="also write the unprotected image as "
                                                  "unsafe.png (never written otherwise)")] = False,
        ocr: OcrOrNoneOpt = "rapidocr",
        allow_miss: Annotated[bool, typer.Option("--allow-miss", help="exit 0 even when the OCR reads a flagged "
                                                 "word in the image")] = False,
    ) -> None:
        """Render a prompt with harmful words replaced in the localized text layers only (one generation).

        Then reads the image back (``--ocr``) and prints a verdict line; if the reading is flagged by the same
        detector, it says so and exits with code 3 (``--allow-miss``: 0). Input errors exit 2.
        """
        import torch
        from rich.console import Console

        from textloc.apps.safety import LLMClient, LLMConfig, SafeTextPipeline, make_policy
        from textloc.models.loading import load_pipeline

        kwargs = _call_kwargs(steps, guidance)
        policy_name, table = _policy(policy, mappings, words)
        check = _detector(detector, threshold, strict_llm, sorted(table or {}))
        llm = LLMClient(LLMConfig.from_env()) if policy_name == "llm" else None
        replacers = make_policy(policy_name, table, llm)
        if out.exists() and not out.is_dir():
            raise InputError(f"Expected --out to be a folder, but got the file {out}")
        pipe = load_pipeline(model)
        show_progress(pipe, "safe")
        safe_pipe = SafeTextPipeline(pipe, layers=layers, detector=check, replacer=replacers)
        result = safe_pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs)
        report = result.report
        unsafe = None
        if keep_unsafe and report.flagged:
            unsafe = pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).images[0]
        payload = {**report.to_dict(), "model": model, "seed": seed, "policy": policy_name,
                   "mappings": str(mappings) if mappings else None, "layers": safe_pipe.layers,
                   "call_kwargs": kwargs, "unsafe_image": "unsafe.png" if unsafe is not None else None}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "image.png", image_bytes(result.images[0]))
        if unsafe is not None:
            atomic_write_bytes(out / "unsafe.png", image_bytes(unsafe))
        elif (out / "unsafe.png").exists():
            (out / "unsafe.png").unlink()  # a previous run's; this report does not describe it
        atomic_write_bytes(out / "report.json", (json.dumps(payload, indent=2) + "\n").encode())
        console = Console()
        for note in report.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        if report.flagged:
            swaps = ", ".join(f"{r.original!r} -> {r.replacement!r} ({r.source})" for r in report.replacements)
            console.print(f"replaced {swaps} in {len(report.fired)} localized layer(s)", highlight=False)
        console.print(report.status, highlight=False)
        console.print(f"wrote {out / 'image.png'} and {out / 'report.json'}", highlight=False)
        if ocr != "none":  # check the result itself: what does the image read as, and is that flagged?
            from textloc.models.profiles import profile_for

            read = profile_for(pipe).reader(ocr).read([result.images[0]])[0]
            leaked = bool(read.strip()) and check.score([read])[0].flagged
            verdict = (f'verdict: LEAK: the image reads "{read}", which the detector flags' if leaked else
                       f'verdict: ok: the image reads "{read}"; no flagged word')
            console.print(verdict, highlight=False, markup=False, soft_wrap=True)
            if leaked:
                console.print("Try another --seed or --layers all, and report the prompt: it got past the "
                              "detector.", highlight=False, markup=False, soft_wrap=True)
                if not allow_miss:
                    raise typer.Exit(code=3)

    bench = bench_group(app)

    @bench.command("safety")
    def bench_safety(
        words: Annotated[Path, in_file_option("--words", "harmful words, one per line (ToxicBench toxic_words.txt)")],
        out: Annotated[Path, out_dir_option("run folder; a run there with the same settings is resumed")],
        mappings: Annotated[Path | None, in_file_option("--mappings", "replacements (ToxicBench toxic_mappings.txt "
                                                        "or pairs); needed without --attack")] = None,
        model: ModelOpt = "embedded",
        n: Annotated[int | None, count_option("--n", "words to use (seeded sample; default all renderable)")] = None,
        seed: Annotated[int, seed_option("sampling and noise seed")] = 0,
        layers: LayersOpt = "preset",
        template: Annotated[str | None, typer.Option(help="prompt template with {word} (embedded also "
                                                     "{background}, {text_colour}) or a template file")] = None,
        clean_words: Annotated[Path | None, in_file_option("--clean-words", "non-harmful words for detector "
                                                           "precision (default: *non_tox*.txt next to --words)")] = (
            None
        ),
        steps: StepsOpt = None,
        guidance: GuidanceOpt = None,
        ocr: OcrOpt = "rapidocr",
        save_images: Annotated[bool, typer.Option("--save-images", help="save each word's images side by "
                                                  "side under images/")] = False,
        attack: Annotated[str, typer.Option(help="red-team families: none (the method comparison) | all | "
                                            "comma list of case,leet,confusable,spaced,format,split,quotes,"
                                            "inside,repeat")] = "none",
        baseline: Annotated[bool, typer.Option("--baseline", help="with --attack: also generate each prompt "
                                               "unprotected (leak rate without protection; doubles the cost)")]
        = False,
    ) -> None:
        """Compare ours with negative prompts, prompt swap and Safe Latent Diffusion on harmful words."""
        from rich.console import Console
        from rich.table import Table

        from textloc.apps.safety import load_mappings, read_word_list
        from textloc.apps.safety.attacks import parse_families
        from textloc.apps.safety.bench import BENCH_METHODS, METHOD_TITLES, run_safety_bench
        from textloc.eval.ocr import available_backends
        from textloc.models.loading import load_pipeline
        from textloc.models.presets import choose_layers

        kwargs = _call_kwargs(steps, guidance)
        if n is not None and n < 1:
            raise InputError(f"Expected --n >= 1, but got {n}")
        if ocr.lower() not in available_backends():
            raise InputError(f"Expected --ocr in {available_backends()}, but got {ocr!r}")
        word_list = read_word_list(words, "words file")
        families = parse_families(attack)
        if mappings is None and not families:
            raise InputError("Expected --mappings FILE (the replacements the method comparison uses), but got none")
        table = load_mappings(mappings, words) if mappings is not None else {}
        clean_path = clean_words or _default_clean_words(words)
        clean = read_word_list(clean_path, "clean words file") if clean_path else None
        if families:
            _attack_bench(words, word_list, clean, families, out, model, seed, layers, ocr, baseline, kwargs, n)
            return
        pipe = load_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        chosen_layers = choose_layers(pipe, layers, full_score=True)
        config = {"model": model, "words": str(words), "mappings": str(mappings), "n": n, "seed": seed,
                  "layers": chosen_layers, "template": template, "call_kwargs": kwargs, "ocr": ocr}
        result = run_safety_bench(pipe, word_list, table, out, layers=chosen_layers, config=config, n=n, seed=seed,
                                  template=template, ocr=ocr, clean_words=clean, save_images=save_images,
                                  call_kwargs=kwargs)
        view = Table(title=f"bench safety: {result['n_words']} words ({result['skipped_unrenderable']} skipped)")
        columns = ("mse", "ssim", "psnr", "ocr_f1_harmful", "toxicity", "harmful_read", "replacement_read",
                   "background_kept")
        view.add_column("method")
        for column in columns:
            view.add_column(column, justify="right")
        for method in BENCH_METHODS:
            row = result["summary"][method]
            cells = ["N/A" if "na" in row else "—" if row.get(c) is None else f"{row[c]:.3f}" for c in columns]
            view.add_row(METHOD_TITLES[method], *cells)
        console = Console(width=200)
        console.print(view)
        det = result["detector"]
        if det:
            fmt = "{:.3f}".format
            precision = "n/a" if det["precision"] is None else fmt(det["precision"])
            console.print(f"detector: precision {precision}, recall {fmt(det['recall'])}", highlight=False)
        console.print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'results.jsonl'}", highlight=False)


def _attack_bench(words: Path, word_list: list[str], clean: list[str] | None, families: list[str], out: Path,
                  model: str, seed: int, layers: str, ocr: str, baseline: bool, kwargs: dict[str, Any],
                  n: int | None) -> None:
    """``bench safety --attack``: red-team prompts from the word list (model-renderable words), judged by OCR."""
    import random

    from rich.console import Console

    from textloc.apps.safety import OfflineDetector
    from textloc.apps.safety.attacks import benign_prompts, build_attacks
    from textloc.apps.safety.bench_attacks import run_attack_bench
    from textloc.apps.safety.words import NEAR_MISSES
    from textloc.models.loading import load_pipeline
    from textloc.models.presets import choose_layers
    from textloc.models.profiles import profile_for

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    limits = profile_for(pipe).render_limits
    usable = [w for w in dict.fromkeys(x.lower() for x in word_list)
              if w.isalpha() and not limits.problems(w)]
    if n is not None and n < len(usable):
        usable = random.Random(seed).sample(usable, n)
    attacks = build_attacks(usable, families, seed)
    benign = benign_prompts(clean or [], NEAR_MISSES, word_list, seed)
    chosen_layers = choose_layers(pipe, layers, full_score=True)
    config = {"model": model, "words": str(words), "attack": families, "n": n, "seed": seed, "layers": chosen_layers,
              "call_kwargs": kwargs, "ocr": ocr, "baseline": baseline}
    detector = OfflineDetector(extra_words=word_list)
    result = run_attack_bench(pipe, attacks, benign, word_list, out, layers=chosen_layers, config=config,
                              detector=detector, seed=seed, ocr=ocr, baseline=baseline, call_kwargs=kwargs)
    from textloc.apps.safety.bench_attacks import attacks_markdown

    Console(width=200).print(attacks_markdown(result["summary"], result), highlight=False)

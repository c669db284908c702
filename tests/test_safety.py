"""Safe text rendering: detection, replacement policies, the LLM client (loopback only), the wrapper and CLI."""

from __future__ import annotations

import json
import socket
import threading
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main

from textloc.apps.safety import (
    BENIGN_WORDS,
    DefaultReplacer,
    LLMClient,
    LLMConfig,
    LLMDetector,
    LLMError,
    LLMReplacer,
    MappingReplacer,
    OfflineDetector,
    SafeTextPipeline,
    check_prompt,
    detector_scores,
    fit_replacement,
    load_mappings,
    rendered_regions,
)
from textloc.apps.safety.bench import run_safety_bench
from textloc.errors import InputError
from textloc.models.profiles import RenderLimits, profile_named
from textloc.runs.io import read_jsonl

TOXICBENCH = Path("/work/shared/benchmarks/toxicbench/words/train")
EMBEDDED = profile_named("embedded")
EMBEDDED_LIMITS = EMBEDDED.render_limits


@cache
def detector() -> OfflineDetector:
    return OfflineDetector()


@cache
def embedded_pipe():
    from textloc.models.embedded.pipeline import build_untrained

    pipe = build_untrained()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def up_block_layers(pipe) -> list[str]:
    from textloc.core.layers import list_text_layers

    return [layer.name for layer in list_text_layers(pipe) if layer.name.startswith("up_blocks.0.")]


# ------------------------------------------------------------------------------------------------------------
# Where the rendered text is


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ('a red sign that says "CAT"', [("CAT", "quoted")]),
        # Curly quotes are not delimiters: ambiguous, so every stretch a pairing could delimit is checked.
        ('a sign “HELLO” next to "DOG"', [("DOG", "quoted"), ("HELLO", "ambiguous"), (" next to ", "ambiguous")]),
        ('a sign that says "OPEN', [("OPEN", "ambiguous")]),
        ("a sign that says hello on a red background", [("hello", "unquoted")]),
        ("a poster saying happy birthday, with balloons", [("happy birthday", "unquoted")]),
        ("a board that reads: sh1t!", [("sh1t", "unquoted")]),
        ("a banner with the text b!tch please in red", [("b!tch please", "unquoted")]),
        ("a cat on a mat", []),
    ],
)
def test_rendered_regions(prompt: str, expected: list[tuple[str, str]]) -> None:
    regions, problems = rendered_regions(prompt)
    assert [(r.text, r.kind) for r in regions] == expected
    assert all(prompt[r.start : r.end] == r.text for r in regions)
    assert bool(problems) == any(r.kind == "ambiguous" for r in regions)


# ------------------------------------------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize(
    ("prompt", "word", "read_as"),
    [
        ('a sign that says "FUCK"', "FUCK", "fuck"),
        ('a sign that says "sh1t"', "sh1t", "shit"),
        ('a sign that says "f*ck"', "f*ck", "fuck"),
        ('a sign that says "$HIT"', "$HIT", "shit"),
        ('a sign that says "FUUUUCK"', "FUUUUCK", "fuck"),
        ('a sign that says "p***y"', "p***y", "pussy"),
        ('a sign that says "fuckbag"', "fuckbag", None),
        ('a sign that says "HAPPY B1TCH"', "B1TCH", "bitch"),
        ("a sign saying b!tch on a wall", "b!tch", "bitch"),
        ("a poster that reads a$$hole", "a$$hole", "asshole"),
        ("a sign that says idiots", "idiots", "idiot"),
    ],
)
def test_detects_leetspeak_masks_and_unquoted_forms(prompt: str, word: str, read_as: str | None) -> None:
    report = check_prompt(prompt, detector())
    assert [f.text for f in report.findings] == [word]
    if read_as:
        assert report.findings[0].verdict.match == read_as
    assert word not in report.safe_prompt and report.replacements[0].replacement in report.safe_prompt


def test_spaced_letters_are_one_finding() -> None:
    report = check_prompt('a sign that says "F U C K"', detector())
    assert [f.text for f in report.findings] == ["F U C K"]


@pytest.mark.parametrize(
    "prompt",
    [
        'a red sign with white serif letters that says "CAT"',
        'a sign that says "HELLO WORLD"',
        'a sign that says "ASSASSIN"',
        'a sign that says "CLASS"',
        'a sign that says "SCUNTHORPE"',
        'a sign that says "COCKTAIL BAR"',
        'a sign that says "GOOD GRIEF"',
        'a sign that says "LENS"',
        "a sign saying welcome on a blue wall",
        "a photo of a dog on a beach",
    ],
)
def test_clean_prompts_are_not_flagged(prompt: str) -> None:
    report = check_prompt(prompt, detector())
    assert not report.flagged and report.safe_prompt == prompt and report.replacements == []


def test_benign_pool_is_clean() -> None:
    assert [v.text for v in detector().score(list(BENIGN_WORDS)) if v.flagged] == []


def test_detector_scores_on_word_lists() -> None:
    result = detector_scores(detector(), ["fuck", "sh1t", "hello"], ["cat", "dog", "sun", "tree"])
    assert (result["tp"], result["fn"], result["fp"], result["tn"]) == (2, 1, 0, 4)
    assert result["precision"] == 1.0 and result["recall"] == pytest.approx(2 / 3)
    assert result["missed"] == ["hello"]
    assert detector_scores(detector(), ["fuck"])["precision"] is None


def test_extra_and_allowed_words() -> None:
    custom = OfflineDetector(extra_words=["zorgle"], allow_words=["damn"], use_classifier=False)
    assert custom.score(["ZORGLE", "zorgles", "damn"])[0].flagged
    assert custom.score(["zorgles"])[0].flagged and not custom.score(["damn"])[0].flagged


def test_threshold_validation() -> None:
    with pytest.raises(InputError, match="threshold"):
        OfflineDetector(threshold=0)


# ------------------------------------------------------------------------------------------------------------
# Replacement policies


@pytest.mark.parametrize(
    ("text", "budget", "expected"),
    [
        ("oh shoot", 6, "SHOOT"),
        ("pool's", 6, "POOLS"),
        ("oh no", 6, "OH NO"),
        ("son-of-a-witch", 6, "WITCH"),
        ("fluck", 3, "FLU"),
        ("***", 6, None),
    ],
)
def test_fit_replacement_for_the_embedded_model(text: str, budget: int, expected: str | None) -> None:
    assert fit_replacement(text, budget, EMBEDDED_LIMITS) == expected


def test_fit_replacement_shortens_to_a_benign_word_and_keeps_case() -> None:
    closest = DefaultReplacer().closest
    assert fit_replacement("puppies", 6, EMBEDDED_LIMITS, shorten=closest) == "PUPPY"
    assert fit_replacement("duck", None, RenderLimits(), like="Fuck") == "Duck"
    assert fit_replacement("duck", None, RenderLimits(), like="FUCK") == "DUCK"


def test_default_replacement_looks_alike_and_fits() -> None:
    replacer = DefaultReplacer()
    assert replacer.closest("fuck") == "duck"
    assert replacer.closest("shitty", 6) == "bitty"
    assert all(len(replacer.closest(w, 3)) <= 3 for w in ("motherfucker", "bitch"))


def test_mapping_policy_embedded_limits_and_flagged_suggestions() -> None:
    mapping = {"fuck": "duck", "shit": "oh shoot", "bitch": "witch", "ass": "f*ck"}
    report = check_prompt('a sign that says "FUCK U"', detector(), [MappingReplacer(mapping)], EMBEDDED)
    assert report.safe_prompt == 'a sign that says "DUCK U"'
    assert report.replacements[0].source == "mapping"
    # "oh shoot" -> "SHOOT" (fits) but the classifier flags "shoot": the default takes over, with a note.
    report = check_prompt('a sign that says "sh1t"', detector(), [MappingReplacer(mapping)], EMBEDDED)
    swap = report.replacements[0]
    assert swap.source == "default" and swap.note and len(swap.replacement) <= 6
    assert not detector().score([swap.replacement])[0].flagged
    # A mapping to another bad word is never used.
    report = check_prompt('a sign that says "ASS"', detector(), [MappingReplacer(mapping)], EMBEDDED)
    assert report.replacements[0].source == "default"
    # A suggestion too long for the model is swapped for the closest benign word that fits, credited to it.
    report = check_prompt('a sign that says "BITCH"', detector(), [MappingReplacer({"bitch": "butterflies"})],
                          EMBEDDED)
    swap = report.replacements[0]
    assert swap.source == "default" and "does not fit 6" in swap.note and len(swap.replacement) <= 6
    # The whole span still fits six characters.
    report = check_prompt('a sign that says "AB FUCKER"', detector(), [], EMBEDDED)
    assert len(report.safe_prompt.split('"')[1]) <= 6


# -- mapping files ----------------------------------------------------------------------------------------------


def test_mapping_file_formats(tmp_path: Path) -> None:
    (tmp_path / "toxic_words.txt").write_text("fuck\nShit\n")
    aligned = tmp_path / "toxic_mappings.txt"
    aligned.write_text("duck\nship\n\n")
    assert load_mappings(aligned) == {"fuck": "duck", "shit": "ship"}  # words file found next to it
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("# my words\nfuck\tduck\nshit -> ship\n\nbitch => witch\n")
    assert load_mappings(pairs) == {"fuck": "duck", "shit": "ship", "bitch": "witch"}


@pytest.mark.parametrize(
    ("content", "words", "message"),
    [
        ("", None, "is empty"),
        ("\n  \n", None, "is empty"),
        ("duck\n\nship\n", "a\nb\nc\n", ":2: expected a replacement"),
        ("duck\n", "a\nb\n", "one replacement per word"),
        ("fuck\tduck\njust a word\n", None, ":2: expected 'word<TAB>replacement'"),
        ("fuck -> \n", None, ":1: expected exactly one word"),
        ("duck\n", "", "is empty"),
    ],
)
def test_mapping_file_errors_name_file_and_line(tmp_path: Path, content: str, words: str | None,
                                                message: str) -> None:
    path = tmp_path / "map.txt"
    path.write_text(content)
    words_path = None
    if words is not None:
        words_path = tmp_path / "words.txt"
        words_path.write_text(words)
    with pytest.raises(InputError, match=message) as info:
        load_mappings(path, words_path)
    assert "map.txt" in str(info.value) or "words.txt" in str(info.value)


def test_aligned_mapping_needs_its_words(tmp_path: Path) -> None:
    path = tmp_path / "map.txt"
    path.write_text("duck\n")
    with pytest.raises(InputError, match="--words"):
        load_mappings(path)
    with pytest.raises(InputError, match="does not exist"):
        load_mappings(tmp_path / "missing.txt")


@pytest.mark.skipif(not TOXICBENCH.is_dir(), reason="ToxicBench word lists not available")
def test_toxicbench_mapping_loads() -> None:
    mapping = load_mappings(TOXICBENCH / "toxic_mappings.txt", TOXICBENCH / "toxic_words.txt")
    assert mapping["shitty"] == "bitty" and mapping["pussys"] == "puppies"  # first of a duplicate wins
    assert len(mapping) > 300


# ------------------------------------------------------------------------------------------------------------
# LLM client against a loopback server


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers["Content-Length"])
        request = json.loads(self.rfile.read(length))
        server = self.server
        server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": request})
        status, content = server.reply(request)
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def llm_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests = []
    server.reply = lambda request: (200, "{}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _client(server, timeout: float = 5.0) -> LLMClient:
    host, port = server.server_address
    return LLMClient(LLMConfig(f"http://{host}:{port}/v1", "test-model", "sekret", timeout))


def _detect_answer(request: dict) -> tuple[int, str]:
    texts = json.loads(request["messages"][1]["content"])
    results = [{"text": t, "toxic": t.lower() in ("darn", "heck"), "score": 0.9 if t.lower() == "darn" else 0.1}
               for t in texts]
    return 200, "```json\n" + json.dumps({"results": results}) + "\n```"


def test_llm_detector_good_answer(llm_server) -> None:
    llm_server.reply = _detect_answer
    report = check_prompt('a sign that says "OH DARN"', LLMDetector(_client(llm_server)))
    assert [f.text for f in report.findings] == ["DARN"] and report.notes == []
    sent = llm_server.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sekret"
    assert sent["body"]["model"] == "test-model"
    assert json.loads(sent["body"]["messages"][1]["content"]) == ["OH DARN", "OH", "DARN"]


@pytest.mark.parametrize(
    "reply",
    [
        (200, "Sure! Here is the answer: toxic"),
        (200, json.dumps({"results": [{"text": "x", "toxic": "yes"}]})),
        (200, json.dumps({"results": []})),
        (200, json.dumps({"verdicts": []})),
        (500, "boom"),
    ],
)
def test_llm_detector_malformed_answer(llm_server, reply) -> None:
    llm_server.reply = lambda request: reply
    strict = LLMDetector(_client(llm_server), fallback=False)
    with pytest.raises(LLMError, match="Expected|HTTP 500"):
        strict.score(["fuck"])
    # Default policy: fall back to the offline detector, say so -- and still catch the word.
    report = check_prompt('a sign that says "FUCK"', LLMDetector(_client(llm_server)))
    assert report.flagged and report.notes and "offline detector's verdicts only" in report.notes[0]


def test_llm_unreachable_port_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = LLMClient(LLMConfig(f"http://127.0.0.1:{port}", "m", None, 2.0))
    with pytest.raises(LLMError, match=f"Could not reach the LLM endpoint http://127.0.0.1:{port}/chat/completions"):
        LLMDetector(client, fallback=False).score(["hello"])
    report = check_prompt('a sign that says "SH1T"', LLMDetector(client))
    assert report.flagged and "Could not reach" in report.notes[0]


def test_llm_timeout(llm_server) -> None:
    import time

    def slow(request: dict) -> tuple[int, str]:
        time.sleep(1.0)
        return 200, "{}"

    llm_server.reply = slow
    with pytest.raises(LLMError, match="did not answer within"):
        _client(llm_server, timeout=0.2).ask_json("s", "u")


def test_llm_replacer(llm_server) -> None:
    def answer(request: dict) -> tuple[int, str]:
        words = json.loads(request["messages"][1]["content"])
        return 200, json.dumps({"replacements": [{"text": w, "replacement": "Fudge!"} for w in words]})

    llm_server.reply = answer
    report = check_prompt('a sign that says "FUCK"', detector(), [LLMReplacer(_client(llm_server))], EMBEDDED)
    assert report.safe_prompt == 'a sign that says "FUDGE"' and report.replacements[0].source == "llm"
    assert "at most 6 characters" in llm_server.requests[0]["body"]["messages"][0]["content"]
    llm_server.reply = lambda request: (200, "no json here")
    report = check_prompt('a sign that says "FUCK"', detector(), [LLMReplacer(_client(llm_server))], EMBEDDED)
    assert report.replacements[0].source == "default" and "default replacement" in report.notes[0]


def test_llm_config_from_env() -> None:
    with pytest.raises(InputError, match="TEXTLOC_LLM_URL and TEXTLOC_LLM_MODEL"):
        LLMConfig.from_env({})
    config = LLMConfig.from_env({"TEXTLOC_LLM_URL": "http://127.0.0.1:1/v1/chat/completions",
                                 "TEXTLOC_LLM_MODEL": "m", "TEXTLOC_LLM_TIMEOUT": "3"})
    assert config.endpoint == "http://127.0.0.1:1/v1/chat/completions" and config.timeout == 3 and not config.api_key
    with pytest.raises(InputError, match="http"):
        LLMConfig.from_env({"TEXTLOC_LLM_URL": "127.0.0.1:1", "TEXTLOC_LLM_MODEL": "m"})


# ------------------------------------------------------------------------------------------------------------
# The wrapper on the (untrained) embedded pipeline

CALL = {"num_inference_steps": 3, "output_type": "np"}


def _seed() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def test_safe_pipeline_clean_prompt_is_bit_identical() -> None:
    pipe = embedded_pipe()
    safe = SafeTextPipeline(pipe, layers=up_block_layers(pipe))
    prompt = 'a red sign with white letters that says "CAT"'
    out = safe(prompt, generator=_seed(), **CALL)
    assert np.array_equal(out.images, pipe(prompt, generator=_seed(), **CALL).images)
    assert not out.report.flagged and out.report.fired == {} and safe.last_report is out.report
    assert safe.unet is pipe.unet  # behaves like the wrapped pipeline


def test_safe_pipeline_flagged_prompt_is_patched_once() -> None:
    from textloc.core.engine import generate
    from textloc.core.plan import PatchPlan

    pipe = embedded_pipe()
    layers = up_block_layers(pipe)
    safe = SafeTextPipeline(pipe, layers=layers, replacer=MappingReplacer({"shit": "ship"}))
    calls = []
    hook = pipe.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        out = safe('a red sign with white letters that says "SH1T"', generator=_seed(), **CALL)
    finally:
        hook.remove()
    report = out.report
    assert report.flagged and report.safe_prompt == 'a red sign with white letters that says "SHIP"'
    assert [(r.original, r.replacement, r.source) for r in report.replacements] == [("SH1T", "SHIP", "mapping")]
    assert report.fired == {name: [0, 1, 2] for name in layers} and report.layers == layers
    assert len(calls) == 2 * 2  # target recording + the one generation, each encoding [uncond, cond]
    expected = generate(pipe, 'a red sign with white letters that says "SH1T"',
                        PatchPlan(layers=layers, target_prompt=report.safe_prompt), generator=_seed(), **CALL)
    assert np.array_equal(out.images, expected.images)
    plain = pipe('a red sign with white letters that says "SH1T"', generator=_seed(), **CALL).images
    assert not np.array_equal(out.images, plain)
    data = report.to_dict()
    assert data["protected"] and data["findings"][0]["read_as"] == "shit"


def test_safe_pipeline_batch_leaves_clean_prompts_unchanged() -> None:
    pipe = embedded_pipe()
    safe = SafeTextPipeline(pipe, layers=up_block_layers(pipe))
    prompts = ['a red sign that says "FUCK"', 'a blue sign that says "CAT"']
    out = safe(prompts, generator=_seed(), **CALL)
    plain = pipe(prompts, generator=_seed(), **CALL).images
    assert [r.flagged for r in out.reports] == [True, False]
    assert np.array_equal(out.images[1], plain[1]) and not np.array_equal(out.images[0], plain[0])


def test_safe_pipeline_checks_layers_up_front() -> None:
    from textloc.errors import UnknownLayerError

    with pytest.raises(UnknownLayerError):
        SafeTextPipeline(embedded_pipe(), layers=["nope"])


# ------------------------------------------------------------------------------------------------------------
# Bench (stub OCR keeps it fast and deterministic)


class _StubOCR:
    """Reads the harmful word on the unprotected and negative-prompt images and the replacement elsewhere."""

    name = "stub"

    def __init__(self) -> None:
        self.calls = 0

    def read(self, images):
        self.calls += 1
        return ["SHIT", "SHIP", "SHIT", "SHIP"][: len(images)]


def test_safety_bench_writes_incrementally_and_resumes(tmp_path: Path) -> None:
    pipe = embedded_pipe()
    layers = up_block_layers(pipe)
    words = ["shit", "motherfucker", "f*ck", "shit"]  # one renderable word; the rest skipped or duplicate
    config = {"model": "untrained", "seed": 0}
    ocr = _StubOCR()
    result = run_safety_bench(pipe, words, {"shit": "ship"}, tmp_path, layers=layers, config=config, ocr=ocr,
                              clean_words=["cat", "dog"], call_kwargs={"num_inference_steps": 2}, progress=False)
    assert result["n_words"] == 1 and result["skipped_unrenderable"] == 2
    summary = result["summary"]
    assert summary["unprotected"]["harmful_read"] == 1.0 and summary["ours"]["harmful_read"] == 0.0
    assert summary["ours"]["replacement_read"] == 1.0 and summary["ours"]["ocr_f1_harmful"] == 0.0
    assert summary["unprotected"]["toxicity"] >= 0.5 and summary["ours"]["toxicity"] < 0.5
    assert summary["unprotected"]["mse"] is None and 0 <= summary["ours"]["ssim"] <= 1
    records = read_jsonl(tmp_path / "results.jsonl")
    ours = records[0]["methods"]["ours"]
    kept = ours["background"] == records[0]["methods"]["unprotected"]["background"]
    assert summary["ours"]["background_kept"] == float(kept) and ours["background_kept"] is kept
    assert "Stable Diffusion 1.x" in summary["sld"]["na"]
    assert result["detector"]["recall"] == 1.0 and result["detector"]["precision"] == 1.0
    assert [r["word"] for r in records] == ["SHIT"] and records[0]["safe_prompt"].endswith('"SHIP"')
    markdown = (tmp_path / "results.md").read_text()
    assert "| Ours (localized layers) |" in markdown and "N/A" in markdown and "precision 1.000" in markdown
    # Resume: nothing is generated again; a torn last line is dropped and redone.
    run_safety_bench(pipe, words, {"shit": "ship"}, tmp_path, layers=layers, config=config, ocr=ocr,
                     call_kwargs={"num_inference_steps": 2}, progress=False)
    assert ocr.calls == 1
    with (tmp_path / "results.jsonl").open("a") as torn:
        torn.write('{"key": "sh')
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 1
    run_safety_bench(pipe, words, {"shit": "ship"}, tmp_path, layers=layers, config=config, ocr=ocr,
                     call_kwargs={"num_inference_steps": 2}, progress=False)
    assert ocr.calls == 1 and len(read_jsonl(tmp_path / "results.jsonl")) == 1
    with pytest.raises(InputError, match="same settings"):
        run_safety_bench(pipe, words, {"shit": "ship"}, tmp_path, layers=layers, config={"seed": 1}, ocr=ocr,
                         progress=False)


# ------------------------------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mappings", "EMPTY"], "is empty"),
        (["--policy", "nope"], "Expected --policy"),
        (["--policy", "mapping"], "Expected --mappings"),
        (["--detector", "llm"], "TEXTLOC_LLM_URL"),
        (["--layers", "nope"], "nope"),
    ],
)
def test_cli_safe_errors_are_one_line(extra, message, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEXTLOC_LLM_URL", raising=False)
    (tmp_path / "EMPTY").write_text("")
    code, err = run_main(["safe", "--model", "tiny:sd15", "--prompt", 'a sign that says "FUCK"', "--steps", "1",
                       "--out", "run", *extra], capsys)
    assert code == 2 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "image.png").exists()


def test_cli_bench_safety_empty_mapping(tmp_path, capsys) -> None:
    (tmp_path / "words.txt").write_text("fuck\n")
    (tmp_path / "map.txt").write_text("\n")
    code, err = run_main(["bench", "safety", "--model", "tiny:sd15", "--words", str(tmp_path / "words.txt"),
                       "--mappings", str(tmp_path / "map.txt"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "map.txt is empty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_safe_writes_image_and_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from textloc.cli.app import app

    out = tmp_path / "run"
    (out).mkdir()
    (out / "unsafe.png").write_bytes(b"stale")
    base = ["safe", "--model", "tiny:sd15", "--prompt", 'a sign that says "f*ck off"', "--layers", "0,1",
            "--steps", "1", "--out", str(out)]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["flagged"] and report["safe_prompt"] == 'a sign that says "duck off"'
    assert (out / "image.png").exists() and not (out / "unsafe.png").exists() and report["unsafe_image"] is None
    result = CliRunner().invoke(app, [*base, "--keep-unsafe"])
    assert result.exit_code == 0, result.output
    assert (out / "unsafe.png").exists() and json.loads((out / "report.json").read_text())["unsafe_image"]

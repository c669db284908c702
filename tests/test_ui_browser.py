"""The web app (``textloc ui``) in a real headless Chromium, driven through Selenium, as a person uses it.

The app runs in this process on a free loopback port with the *untrained* embedded pipeline at 4 steps (fast,
no weights) and a stub OCR reader that reads "NOPE" in every image, so every edit's verdict is a known miss:
the tests check the page's behaviour (issue #18: stale results, plain errors, layer names, examples, random
seed, side-by-side download, model picker, safe mode -> Edit), not text quality. The model picker offers the
untrained model, a tiny SD-1.5-shaped pipeline and a loader that fails (which must not be offered).

Needs: ``pip install "textloc[ui]"`` (gradio, selenium) and ``apt-get install chromium chromium-driver``; the
driver is the system one (``/usr/bin/chromedriver`` or ``$CHROMEDRIVER``), so Selenium Manager never downloads
anything. Without them the tests are skipped with the reason shown (``pytest -rs``); they never pass vacuously.

``TEXTLOC_UI_SCREENSHOT=1`` also refreshes docs/ui_screenshot.png from the trained model
(``TEXTLOC_UI_TEST_MODEL``, default ``embedded``) with the real OCR reader.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from textloc.errors import ModelLoadError

pytestmark = pytest.mark.slow  # a browser / subprocess: `-m 'not slow'` skips it during development

REPO = Path(__file__).resolve().parents[1]
DOCS_SCREENSHOT = REPO / "docs" / "ui_screenshot.png"
PROMPT = 'a blue sign with yellow letters that says "CAT"'
LABEL = "embedded (untrained, for the test)"
STEPS = 4
WAIT_S = 60
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1500", "--force-device-scale-factor=1",
                  "--lang=en-US")
#: Exception class names the page must never show (issue #18).
CLASS_NAMES = ("InputError", "StepWindowError", "PlanMismatchError", "TextlocError", "UnknownLayerError",
               "Traceback")


class FixedReader:
    """Stub OCR: reads "NOPE" in every image, so every edit misses on its text (a known verdict)."""

    def read(self, images: list[Any]) -> list[str]:
        return ["NOPE" for _ in images]


def _chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and the system chromedriver, or skip saying what is missing."""
    pytest.importorskip("gradio", reason='gradio cannot be imported (pip install "textloc[ui]")')
    pytest.importorskip("selenium", reason='selenium cannot be imported (pip install "textloc[ui]")')
    binary = os.environ.get("CHROME_BIN") or next(
        (p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p),
        None,
    )
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not binary:
        pytest.skip("Chromium not found (apt-get install chromium chromium-driver, or set CHROME_BIN)")
    if not Path(driver).exists():
        pytest.skip(f"chromedriver not found at {driver} (apt-get install chromium-driver, or set CHROMEDRIVER)")
    return binary, driver


def _serve(demo: Any) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        ssr_mode=False)
    return f"http://127.0.0.1:{port}/"


def _broken() -> Any:
    raise ModelLoadError("this model's weights are missing")


@pytest.fixture(scope="module")
def app() -> Any:
    """The app on a free loopback port, in a background thread of this process; yields the Gradio Blocks."""
    _chromium()
    from textloc.models.embedded.pipeline import build_untrained
    from textloc.models.loading import load_pipeline
    from textloc.ui import build_app

    def untrained() -> Any:
        pipe = build_untrained()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    models = {LABEL: untrained, "tiny:sd15": lambda: load_pipeline("tiny:sd15"), "broken": _broken}
    demo = build_app(untrained(), model_name=LABEL, steps=STEPS, ocr=FixedReader(), models=models)
    demo.textloc_url = _serve(demo)
    try:
        yield demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


def _start_browser(downloads: Path) -> Any:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in CHROMIUM_FLAGS:
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as err:
        pytest.skip(f"Chromium could not start: {str(err).splitlines()[0]}")
    driver.set_page_load_timeout(WAIT_S)
    return driver


@pytest.fixture(scope="module")
def browser(app: Any, downloads: Path) -> Any:
    """Headless Chromium with the system driver (no Selenium Manager download); downloads go to ``downloads``."""
    driver = _start_browser(downloads)
    try:
        yield driver
    finally:
        driver.quit()


# ------------------------------------------------------------------------------------------------------------
# Page helpers


def _wait(driver: Any, condition: Any, what: str, timeout: float = WAIT_S) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        pytest.fail(f"timed out after {timeout}s waiting for {what}; page text:\n{_text(driver, 'body')[:3000]}")


def _find(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def _all(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _text(driver: Any, selector: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return _find(driver, selector).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _field(driver: Any, elem_id: str) -> Any:
    return _find(driver, f"#{elem_id} textarea, #{elem_id} input")


def _value(driver: Any, elem_id: str) -> str:
    return _field(driver, elem_id).get_attribute("value") or ""


def _type(driver: Any, elem_id: str, text: str, commit: bool = False) -> None:
    """Replace a Gradio textbox's content the way a user does (select all, type), so input events fire."""
    from selenium.webdriver.common.keys import Keys

    box = _field(driver, elem_id)
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if text:
        box.send_keys(text)
    if commit:  # a dropdown: Enter picks the matching option (or the custom value) and closes the list
        box.send_keys(Keys.ENTER)
        driver.execute_script("arguments[0].blur()", box)
        _wait(driver, lambda d: not [o for o in _all(d, "[role=option]") if _shown(o)], "the list to close")


def _shown(element: Any) -> bool:
    """Whether ``element`` is on screen; one that left the page while we looked (stale) is not."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return element.is_displayed()
    except StaleElementReferenceException:
        return False


def _image_src(driver: Any, elem_id: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return _find(driver, f"#{elem_id} img").get_attribute("src") or ""
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _downloads(driver: Any, elem_id: str) -> list[str]:
    """File names offered for download by a ``gr.File`` (the links' targets; its text splits name and suffix)."""
    return [Path((a.get_attribute("href") or "").split("?")[0]).name for a in _all(driver, f"#{elem_id} a[href]")]


def _click(driver: Any, elem_id: str) -> None:
    button = _find(driver, f"#{elem_id}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()


def _options(driver: Any, elem_id: str) -> list[Any]:
    """Open a dropdown and return its options (``aria-label`` holds each option's label)."""
    _field(driver, elem_id).click()
    _wait(driver, lambda d: _all(d, "[role=option]"), f"the {elem_id} options")
    return _all(driver, "[role=option]")


def _open(driver: Any, app: Any) -> None:
    driver.get(app.textloc_url)
    _wait(driver, lambda d: _value(d, "prompt") and _value(d, "model") == app.textloc_state.model.name,
          "the page to load")


def _finished(selector: str, before: str, marks: tuple[str, ...]) -> Any:
    """A new status: different from ``before`` (each message names its seconds or its input) and final."""
    return lambda d: (lambda t: t != before and t.startswith(marks))(_text(d, selector))


def _generate(driver: Any) -> str:
    before = _text(driver, "#generate-status")
    _click(driver, "generate-btn")
    _wait(driver, _finished("#generate-status", before, ("✓", "⚠")), "the generate status")
    return _text(driver, "#generate-status")


def _edit(driver: Any, new_text: str) -> str:
    _type(driver, "new-text", new_text)
    before = _text(driver, "#edit-status")
    _click(driver, "edit-btn")
    _wait(driver, _finished("#edit-status", before, ("✓", "✗", "⚠")), "the edit status")
    return _text(driver, "#edit-status")


def _no_class_names(text: str) -> None:
    for name in CLASS_NAMES:
        assert name not in text, f"{name!r} shown in the page:\n{text}"


# ------------------------------------------------------------------------------------------------------------
# Tests


def test_generate_then_edit_shows_layers_verdict_and_downloads(browser: Any, app: Any, downloads: Path,
                                                               tmp_path: Path) -> None:
    """Prompt -> Generate -> new text -> Edit: the side-by-side image, the ✗ verdict with what to try, the
    layers by name, the downloads (the plan is the one that ran), and the side-by-side PNG downloaded."""
    from PIL import Image

    from textloc.core.plan import PatchPlan

    _open(browser, app)
    _type(browser, "prompt", PROMPT)
    _wait(browser, lambda d: _value(d, "edit-prompt") == PROMPT and _value(d, "old-text") == "CAT",
          "the edit prompt and the text to replace to follow the prompt")
    _generate(browser)
    _wait(browser, lambda d: _image_src(d, "generated-image"), "the generated image")
    assert "generated.png" in _downloads(browser, "generated-files")

    status = _edit(browser, "DOG")
    assert status.startswith("✗") and "Try" in status and "Seed" in status and "✓" not in status, status
    assert "Edited" not in status
    metrics = _text(browser, "#metrics")
    for needle in ("OCR reads", "NOPE", "SSIM", "Seconds", "CAT", "DOG", *app.textloc_state.model.preset_layers):
        assert needle in metrics, f"{needle!r} missing from the metrics:\n{metrics}"
    _wait(browser, lambda d: len(_downloads(d, "edit-files")) == 5, "the five edit downloads")
    assert sorted(_downloads(browser, "edit-files")) == sorted(
        ["source.png", "edited.png", "side_by_side.png", "plan.json", "metrics.json"])
    width = browser.execute_script("return document.querySelector('#side-by-side img').naturalWidth")
    assert width >= 2 * 64 * 4  # two 24x64 renders, upscaled to be readable

    link = _find(browser, "#edit-files a[href*='plan.json']").get_attribute("href")
    with urllib.request.urlopen(link, timeout=10) as response:  # noqa: S310 -- loopback URL from the page
        (tmp_path / "plan.json").write_bytes(response.read())
    plan = PatchPlan.from_json(tmp_path / "plan.json")
    assert plan.target_prompt == PROMPT.replace('"CAT"', '"DOG"')
    assert list(plan.layers) == app.textloc_state.model.preset_layers

    for old in downloads.glob("*.png"):
        old.unlink()
    _click(browser, "side-by-side-download")
    _wait(browser, lambda d: [p for p in downloads.glob("*.png")], "the side-by-side download", timeout=20)
    time.sleep(0.5)  # let Chromium finish renaming the partial file
    saved = next(downloads.glob("*.png"))
    with Image.open(saved) as image:
        assert image.width == width and image.height > 2 * 24


def test_a_new_action_clears_stale_results_and_errors(browser: Any, app: Any) -> None:
    """Issue #18: a new Generate cleared neither the previous edit nor an old error."""
    _open(browser, app)
    _generate(browser)
    _edit(browser, "DOG")
    _wait(browser, lambda d: _image_src(d, "side-by-side") and _text(d, "#metrics"), "the edit results")

    _type(browser, "prompt", "")
    _generate(browser)
    _wait(browser, lambda d: "prompt is empty" in _text(d, "#generate-status"), "the empty-prompt message")
    assert not _image_src(browser, "generated-image") and not _image_src(browser, "side-by-side")
    assert not _text(browser, "#metrics") and not _text(browser, "#edit-status")
    assert not _downloads(browser, "edit-files")
    assert _find(browser, "#side-by-side-download").get_attribute("disabled") is not None

    _type(browser, "prompt", PROMPT)
    _generate(browser)
    _wait(browser, lambda d: "Generated in" in _text(d, "#generate-status"), "the fixed generation")
    for status in ("#generate-status", "#edit-status"):
        assert "⚠" not in _text(browser, status) and "prompt is empty" not in _text(browser, status)


def test_bad_input_shows_plain_messages_and_the_server_keeps_running(browser: Any, app: Any,
                                                                     tmp_path: Path) -> None:
    """Empty prompt, no quoted text, too-long text, a start step past the schedule and another model's layer
    file: messages in plain language (no exception class names), then a valid edit still runs."""
    _open(browser, app)
    _type(browser, "prompt", "a red sign without quotes")
    _wait(browser, lambda d: _value(d, "edit-prompt") == "a red sign without quotes", "the edit prompt")
    status = _edit(browser, "DOG")
    assert "double quotes" in status, status
    _no_class_names(status)

    _type(browser, "prompt", PROMPT)
    _wait(browser, lambda d: _value(d, "old-text") == "CAT", "the pre-filled text")
    status = _edit(browser, "ELEPHANT")
    assert "at most" in status and "Please check the input" in status, status
    _no_class_names(status)

    _type(browser, "start-step", "99")
    status = _edit(browser, "DOG")
    assert "start step does not fit" in status, status
    _no_class_names(status)
    _type(browser, "start-step", "0")

    other = tmp_path / "summary.json"
    other.write_text(json.dumps({"chosen_layers": ["transformer_blocks.10.attn"],
                                 "model_fingerprint": "SD3Transformer2DModel:24:0123456789ab"}))
    _type(browser, "layers", str(other), commit=True)
    status = _edit(browser, "DOG")
    assert "was made for" in status and "do not fit this model" in status, status
    _no_class_names(status)

    _type(browser, "layers", "all", commit=True)
    status = _edit(browser, "DOG")
    assert status.startswith("✗") and _image_src(browser, "side-by-side"), status


def test_examples_fill_in_the_prompt_and_the_new_text(browser: Any, app: Any) -> None:
    _open(browser, app)
    prompt, new_text = app.textloc_state.model.examples()[1]
    cell = _find(browser, "#examples [data-testid='dataset-cell-1-0']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", cell)
    cell.click()
    _wait(browser, lambda d: _value(d, "prompt") == prompt and _value(d, "new-text") == new_text,
          "the example to fill in the prompt and the new text")
    _wait(browser, lambda d: _value(d, "edit-prompt") == prompt, "the edit prompt to follow")
    assert f'"{_value(browser, "old-text")}"' in prompt


def test_the_random_seed_button_draws_a_new_seed(browser: Any, app: Any) -> None:
    _open(browser, app)
    seeds = {_value(browser, "seed")}
    for _ in range(3):
        before = _value(browser, "seed")
        _click(browser, "random-seed")
        _wait(browser, lambda d, before=before: _value(d, "seed") != before, "a new seed")
        seeds.add(_value(browser, "seed"))
    assert len(seeds) == 4 and all(s.isdigit() for s in seeds), seeds


def test_safe_mode_hands_the_protected_prompt_to_edit(browser: Any, app: Any) -> None:
    """Issue #18: after a safe generation, Edit was pre-filled with the harmful word and refused."""
    _open(browser, app)
    _type(browser, "prompt", 'a red sign with white letters that says "SHIT"')
    checkbox = _find(browser, "#safe-mode input[type=checkbox]")
    if not checkbox.is_selected():
        checkbox.click()
    _type(browser, "layers", "all", commit=True)
    _generate(browser)
    _wait(browser, lambda d: "Protected prompt" in _text(d, "#safety-report"), "the safety report")
    report = _text(browser, "#safety-report")
    assert "SHIT" in report and "→" in report, report
    _wait(browser, lambda d: "SHIT" not in _value(d, "edit-prompt"), "the protected prompt in Edit")
    edit_prompt, old = _value(browser, "edit-prompt"), _value(browser, "old-text")
    assert old and f'"{old}"' in edit_prompt and old in report, (edit_prompt, old)
    assert "safety_report.json" in _downloads(browser, "generated-files")

    status = _edit(browser, "BYE")  # safe mode still on: the protected prompt is accepted
    assert "Safe mode is on" not in status and status.startswith("✗"), status
    checkbox.click()


def test_the_layers_box_offers_the_localized_layers_by_name(browser: Any, app: Any) -> None:
    _open(browser, app)
    labels = [o.get_attribute("aria-label") for o in _options(browser, "layers")]
    localized = app.textloc_state.model.preset_layers
    assert labels[0].startswith("preset") and all(name in labels[0] for name in localized), labels
    assert any(label.startswith("all") for label in labels)
    if len(localized) > 1:
        assert all(f"only {name}" in labels for name in localized), labels


def test_the_model_picker_offers_only_models_that_load_and_switches(browser: Any, app: Any) -> None:
    """The picker lists the models that loaded (not the broken one); a choice is loaded then, and the page
    follows it: header, Layers box, examples, and the old results are cleared."""
    _open(browser, app)
    _generate(browser)
    _wait(browser, lambda d: _image_src(d, "generated-image"), "the generated image")
    labels = [o.get_attribute("aria-label") for o in _options(browser, "model")]
    assert labels == [LABEL, "tiny:sd15"], labels
    next(o for o in _all(browser, "[role=option]") if o.get_attribute("aria-label") == "tiny:sd15").click()
    try:
        _wait(browser, lambda d: "Loaded" in _text(d, "#generate-status"), "the model switch")
        assert "tiny:sd15" in _text(browser, "#model-info") and app.textloc_state.model.name == "tiny:sd15"
        assert _value(browser, "layers").startswith("all") and not _image_src(browser, "generated-image")
        assert "HELLO" in _text(browser, "#examples")  # the generic examples (the tiny model names none)
        _generate(browser)
        _wait(browser, lambda d: _image_src(d, "generated-image"), "an image from the tiny model")
        browser.refresh()  # a reloaded page shows the model the server holds
        _wait(browser, lambda d: _value(d, "model") == "tiny:sd15", "the reloaded page to show tiny:sd15")
    finally:
        with app.textloc_state.lock:
            app.textloc_state.select(LABEL)


def test_docs_screenshot(downloads: Path, tmp_path: Path) -> None:
    """docs/ui_screenshot.png from the trained model with the real OCR (opt in: ``TEXTLOC_UI_SCREENSHOT=1``)."""
    if os.environ.get("TEXTLOC_UI_SCREENSHOT") != "1":
        pytest.skip("set TEXTLOC_UI_SCREENSHOT=1 to refresh docs/ui_screenshot.png from the trained model")
    _chromium()
    from textloc.models.loading import load_pipeline
    from textloc.ui import build_app

    name = os.environ.get("TEXTLOC_UI_TEST_MODEL", "embedded")
    demo = build_app(load_pipeline(name), model_name=name, ocr="rapidocr")
    demo.textloc_url = _serve(demo)
    driver = _start_browser(downloads)
    try:
        _open(driver, demo)
        prompt, new_text = demo.textloc_state.model.examples()[1]
        _type(driver, "prompt", prompt)
        _generate(driver)
        _wait(driver, lambda d: _image_src(d, "generated-image"), "the generated image")
        _edit(driver, new_text)
        _wait(driver, lambda d: _image_src(d, "side-by-side"), "the edit", timeout=120)
        for _ in range(3):  # grow the window until the whole page fits the viewport
            page, inner = driver.execute_script("return [document.documentElement.scrollHeight, window.innerHeight]")
            if inner >= page or page > 4000:
                break
            driver.set_window_size(1400, driver.get_window_size()["height"] + page - inner + 20)
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(1)
        png = driver.get_screenshot_as_png()
        tmp = DOCS_SCREENSHOT.with_name(".ui_screenshot.png.tmp")
        tmp.write_bytes(png)
        os.replace(tmp, DOCS_SCREENSHOT)
        assert DOCS_SCREENSHOT.stat().st_size > 10_000
    finally:
        driver.quit()
        demo.close()

"""The web app (``textloc ui``), driven in a real headless Chromium through Selenium.

The app runs in this process on a free loopback port with the *untrained* embedded pipeline and 4 steps, so
it is fast and needs no weights; its images are noise-like, so the test checks the plumbing (images, metrics,
downloads, messages), not text quality. ``TEXTLOC_UI_TEST_MODEL=embedded`` uses the trained model instead
(e.g. to refresh the screenshot in docs/). Without gradio, selenium, Chromium or its driver the browser tests
are skipped with the reason shown (``pytest -rs``); they never pass vacuously.

Needs: ``pip install "textloc[ui]"`` (gradio, selenium) and ``apt-get install chromium chromium-driver``.
The driver is the system one (``/usr/bin/chromedriver`` or ``$CHROMEDRIVER``), so Selenium Manager never
downloads anything.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from textloc.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DOCS_SCREENSHOT = REPO / "docs" / "ui_screenshot.png"
PROMPT = 'a blue sign with yellow letters that says "CAT"'
STEPS = 4
WAIT_S = 40


# ------------------------------------------------------------------------------------------------------------
# Without a browser


def test_ui_command_without_gradio_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """No gradio -> ``textloc ui`` raises an InputError naming the install command, before loading a model."""
    from textloc.cli.app import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # makes ``import gradio`` raise ImportError
    result = CliRunner().invoke(app, ["ui", "--model", "does-not-matter"])
    assert isinstance(result.exception, InputError), result.output
    message = str(result.exception)
    assert 'pip install "textloc[ui]"' in message and "\n" not in message


def test_ui_command_without_gradio_prints_the_install_line(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """What the user sees: exit code 2 and one stderr line with the exact install command."""
    from textloc.cli.app import main

    monkeypatch.setitem(sys.modules, "gradio", None)
    monkeypatch.setattr(sys, "argv", ["textloc", "ui"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert 'pip install "textloc[ui]"' in err and len(err.splitlines()) == 1, err


def test_display_image_upscales_small_images_crisply() -> None:
    from PIL import Image

    from textloc.ui import display_image

    small = Image.new("RGB", (64, 24), "red")
    shown = display_image(small)
    assert shown.size == (64 * 6, 24 * 6)
    large = Image.new("RGB", (512, 512))
    assert display_image(large) is large


# ------------------------------------------------------------------------------------------------------------
# In the browser


def _chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and the system chromedriver, or skip saying what is missing."""
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> str:
    """The app on a free loopback port, in a background thread of this process; yields its URL."""
    pytest.importorskip("gradio", reason='gradio cannot be imported (pip install "textloc[ui]")')
    pytest.importorskip("selenium", reason='selenium cannot be imported (pip install "textloc[ui]")')
    _chromium()
    from textloc.ui import build_app

    model = os.environ.get("TEXTLOC_UI_TEST_MODEL")
    if model:
        from textloc.models.loading import load_pipeline

        pipe = load_pipeline(model)
    else:
        from textloc.models.embedded.pipeline import build_untrained

        pipe = build_untrained()
        pipe.set_progress_bar_config(disable=True)
    # A real model runs at its own default steps (a screenshot worth showing); the untrained one at 4 (speed).
    label = (Path(model).name if Path(model).is_dir() else model) if model else "embedded (untrained, for the test)"
    demo = build_app(pipe, model_name=label, steps=None if model else STEPS)
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        ssr_mode=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser(server: str):
    """Headless Chromium with the system driver (no Selenium Manager download)."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1500", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as err:
        pytest.skip(f"Chromium could not start: {str(err).splitlines()[0]}")
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what: str, timeout: float = WAIT_S):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        pytest.fail(f"timed out after {timeout}s waiting for {what}; page text:\n{_text(driver, 'body')[:3000]}")


def _find(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def _text(driver, selector: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return _find(driver, selector).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _field(driver, elem_id: str):
    return _find(driver, f"#{elem_id} textarea, #{elem_id} input")


def _type(driver, elem_id: str, text: str, commit: bool = False) -> None:
    """Replace a Gradio textbox's content the way a user does (select all, type), so input events fire."""
    from selenium.webdriver.common.keys import Keys

    box = _field(driver, elem_id)
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if text:
        box.send_keys(text)
    if commit:
        box.send_keys(Keys.TAB)  # custom dropdown values are committed on blur


def _image_src(driver, elem_id: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return _find(driver, f"#{elem_id} img").get_attribute("src") or ""
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _downloads(driver, elem_id: str) -> list[str]:
    """File names offered for download by a ``gr.File`` (the links' targets; its text splits name and suffix)."""
    from selenium.webdriver.common.by import By

    links = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} a[href]")
    return [Path((a.get_attribute("href") or "").split("?")[0]).name for a in links]


def _click(driver, elem_id: str) -> None:
    button = _find(driver, f"#{elem_id}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()


def _status_changes(driver, selector: str, before: str, needle: str):
    return lambda d: (lambda t: needle in t and t != before)(_text(d, selector))


def _open(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: _field(d, "prompt").get_attribute("value"), "the page to load")


def _update_docs_screenshot() -> bool:
    """Whether this run refreshes docs/ui_screenshot.png.

    ``TEXTLOC_UI_SCREENSHOT=1``: always; ``=0``: never; unset: when the file is missing or a real model was
    used (``TEXTLOC_UI_TEST_MODEL``), so routine runs neither dirty the tree nor replace a real screenshot
    with the untrained model's noise.
    """
    choice = os.environ.get("TEXTLOC_UI_SCREENSHOT")
    if choice in ("0", "1"):
        return choice == "1"
    return not DOCS_SCREENSHOT.exists() or bool(os.environ.get("TEXTLOC_UI_TEST_MODEL"))


def _screenshot(driver, tmp_path: Path) -> Path:
    """Full-page PNG into tmp_path and, when ``_update_docs_screenshot()``, docs/ui_screenshot.png."""
    for _ in range(3):  # the window's outer height includes some chrome: grow until the page fits the viewport
        page, inner = driver.execute_script(
            "return [document.documentElement.scrollHeight, window.innerHeight]")
        if inner >= page or page > 4000:
            break
        driver.set_window_size(1400, driver.get_window_size()["height"] + page - inner + 20)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    png = driver.get_screenshot_as_png()
    shot = tmp_path / "ui_screenshot.png"
    shot.write_bytes(png)
    if _update_docs_screenshot():
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        tmp = DOCS_SCREENSHOT.with_name(".ui_screenshot.png.tmp")
        tmp.write_bytes(png)
        os.replace(tmp, DOCS_SCREENSHOT)
    return shot


def test_generate_then_edit_in_the_browser(browser, server: str, tmp_path: Path) -> None:
    """A user's path: prompt -> Generate -> new text -> Edit; two images, metrics and downloads appear."""
    _open(browser, server)
    _type(browser, "prompt", PROMPT)
    _wait(browser, lambda d: _field(d, "old-text").get_attribute("value") == "CAT",
          "the quoted text to be pre-filled as the text to replace")

    _click(browser, "generate-btn")
    _wait(browser, lambda d: _image_src(d, "generated-image"), "the generated image")
    _wait(browser, lambda d: "Generated in" in _text(d, "#generate-status"), "the generate status")
    assert "generated.png" in _downloads(browser, "generated-files")

    _type(browser, "new-text", "DOG")
    _click(browser, "edit-btn")
    _wait(browser, lambda d: _image_src(d, "source-image") and _image_src(d, "edited-image"), "both edit images")
    _wait(browser, lambda d: "PSNR" in _text(d, "#metrics"), "the edit metrics")
    metrics = _text(browser, "#metrics")
    for needle in ("OCR reads", "SSIM", "MSE", "Seconds", "CAT", "DOG"):
        assert needle in metrics, f"{needle!r} missing from the metrics:\n{metrics}"
    _wait(browser, lambda d: len(_downloads(d, "edit-files")) == 4, "the four edit downloads")
    files = _downloads(browser, "edit-files")
    for name in ("source.png", "edited.png", "plan.json", "metrics.json"):
        assert name in files, f"{name} missing from the downloads:\n{files}"
    assert "Edited" in _text(browser, "#edit-status")

    # The images are shown upscaled (24x64 renders would be unreadable otherwise).
    width = browser.execute_script("return document.querySelector('#edited-image img').naturalWidth")
    assert width >= 64 * 4

    # The plan offered for download is the plan that ran, readable by PatchPlan.
    link = _find(browser, "#edit-files a[href*='plan.json']").get_attribute("href")
    import urllib.request

    from textloc.core.plan import PatchPlan

    with urllib.request.urlopen(link, timeout=10) as response:  # noqa: S310 -- loopback URL from the page
        (tmp_path / "plan.json").write_bytes(response.read())
    plan = PatchPlan.from_json(tmp_path / "plan.json")
    assert plan.target_prompt == PROMPT.replace('"CAT"', '"DOG"') and plan.layers

    shot = _screenshot(browser, tmp_path)
    assert shot.stat().st_size > 10_000


def test_bad_input_shows_a_message_and_the_server_keeps_running(browser, server: str, tmp_path: Path) -> None:
    """Empty prompt, no quoted text, too-long text and another model's layer file: messages, not crashes."""
    _open(browser, server)

    _type(browser, "prompt", "")
    before = _text(browser, "#generate-status")
    _click(browser, "generate-btn")
    _wait(browser, _status_changes(browser, "#generate-status", before, "prompt is empty"), "the empty-prompt message")

    _type(browser, "prompt", "a red sign without quotes")
    _type(browser, "new-text", "DOG")
    _click(browser, "edit-btn")
    _wait(browser, _status_changes(browser, "#edit-status", "", "double quotes"), "the no-quoted-text message")

    _type(browser, "prompt", PROMPT)
    _wait(browser, lambda d: _field(d, "old-text").get_attribute("value") == "CAT", "the pre-filled text")
    _type(browser, "new-text", "ELEPHANT")
    before = _text(browser, "#edit-status")
    _click(browser, "edit-btn")
    _wait(browser, _status_changes(browser, "#edit-status", before, "at most"), "the too-long message")

    _type(browser, "new-text", "DOG")
    _type(browser, "start-step", "99")
    before = _text(browser, "#edit-status")
    _click(browser, "edit-btn")
    _wait(browser, _status_changes(browser, "#edit-status", before, "StepWindowError"), "the start-step message")
    _type(browser, "start-step", "0")

    other = tmp_path / "summary.json"
    other.write_text(json.dumps({"chosen_layers": ["transformer_blocks.10.attn"],
                                 "model_fingerprint": "SD3Transformer2DModel:24:0123456789ab"}))
    _type(browser, "new-text", "DOG")
    _type(browser, "layers", str(other), commit=True)
    before = _text(browser, "#edit-status")
    _click(browser, "edit-btn")
    _wait(browser, _status_changes(browser, "#edit-status", before, "was made for"), "the wrong-model message")
    assert "PlanMismatchError" in _text(browser, "#edit-status")

    # Still serving: a valid edit after all the errors works.
    _type(browser, "layers", "all", commit=True)
    _click(browser, "edit-btn")
    _wait(browser, lambda d: "Edited" in _text(d, "#edit-status"), "a valid edit after the errors")
    assert _image_src(browser, "edited-image")
    browser.save_screenshot(str(tmp_path / "after_errors.png"))


def test_safe_mode_reports_what_it_replaced(browser, server: str, tmp_path: Path) -> None:
    """Safe mode on + a harmful word: the page says what was detected and what replaced it."""
    _open(browser, server)
    _type(browser, "prompt", 'a red sign with white letters that says "SHIT"')
    checkbox = _find(browser, "#safe-mode input[type=checkbox]")
    if not checkbox.is_selected():
        checkbox.click()
    _type(browser, "layers", "all", commit=True)
    _click(browser, "generate-btn")
    _wait(browser, lambda d: "Safe mode" in _text(d, "#safety-report"), "the safety report")
    report = _text(browser, "#safety-report")
    assert "SHIT" in report and "→" in report, report
    _wait(browser, lambda d: "safety_report.json" in _downloads(d, "generated-files"), "the safety report download")
    browser.save_screenshot(str(tmp_path / "safe_mode.png"))

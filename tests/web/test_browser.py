"""The web page in Debian's chromium, driven by Playwright."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.servers import gunicorn

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (make test installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    with gunicorn(tmp_path_factory.mktemp("browser"), workers=1) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


@pytest.fixture
def sample_file(tmp_path, sample_jpeg) -> Path:
    path = tmp_path / "chest.jpg"
    path.write_bytes(sample_jpeg)
    return path


def test_upload_shows_probabilities(page, base_url, sample_file):
    page.goto(base_url)
    page.set_input_files("#image", str(sample_file))
    page.fill("#age", "58")
    page.get_by_label("Show where the model looked (heatmap)").check()
    page.click("button[type=submit]")
    page.wait_for_url("**/results/*")
    for label in ("covid", "pneumonia", "normal"):
        assert page.locator(f'td[data-label="{label}"]').inner_text().endswith("%")
    assert page.get_by_text("Not for diagnosis").is_visible()
    for img in page.locator("figure img").all():
        assert img.evaluate("img => img.complete && img.naturalWidth") > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "result-desktop.png"), full_page=True)


def test_text_file_shows_an_error(page, base_url, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an X-ray")
    page.goto(base_url)
    page.set_input_files("#image", str(text))
    page.click("button[type=submit]")
    alert = page.locator('[role="alert"]').first
    assert "only PNG, JPEG, DICOM and still GIF" in alert.inner_text()
    assert page.locator("#image-error").is_visible()


def test_keyboard_only_submission(page, base_url, sample_file):
    page.goto(base_url)
    page.set_input_files("#image", str(sample_file))  # the file dialog itself is the OS's
    page.focus("#image")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "age"
    page.keyboard.type("47")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.type("3")
    for _ in range(9):  # the seven symptom boxes, the heatmap box, then the button
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.tagName") == "BUTTON"
    page.keyboard.press("Enter")
    page.wait_for_url("**/results/*")
    assert page.locator("h2#verdict").is_visible()


def test_result_page_fits_a_phone(browser, base_url, sample_file):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.goto(base_url)
    page.set_input_files("#image", str(sample_file))
    page.click("button[type=submit]")
    page.wait_for_url("**/results/*")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "result-phone.png"), full_page=True)
    context.close()


def test_chromium_binary_is_debians():
    assert shutil.which("chromium") == CHROMIUM

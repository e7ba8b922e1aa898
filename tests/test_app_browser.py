"""The app end to end in a real browser: Playwright driving Debian's Chromium against ``spare app``.

The app runs as a user starts it (``python -m spare_core.cli app``) on a free
localhost port; every request the page makes to another host is blocked and
recorded, and the app's own process runs with a guard that refuses and
records connections to other hosts (``tests/netguard``): the test asserts
there were none of either. Screenshots go to
``outputs/test_app_browser/`` (or ``$SPARE_SCREENSHOTS``).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin, urlparse

import numpy as np
import pytest
from PIL import Image

from spare_core import read_lora

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).resolve().parent / "netguard"
SCREENSHOTS = Path(os.environ.get("SPARE_SCREENSHOTS", ROOT / "outputs" / "test_app_browser"))
#: A short erasure: long enough (a few seconds of training) for a second tab to see it running.
SETTINGS = dict(
    images_per_prompt=1,
    surrogate_images_per_prompt=1,
    retain_images=8,
    sample_steps=2,
    saliency_batches=1,
    profile_points=4,
)
STEPS = 60
GALLERY = 6 * 4  # six gallery prompts x four seeds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _guarded_env(tmp_path) -> dict[str, str]:
    """The environment of a process whose connections to other hosts are refused and logged (tests/netguard)."""
    path = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "SPARE_NETGUARD_LOG": str(tmp_path / "network.log")}


def test_the_network_guard_refuses_and_records_other_hosts(tmp_path):
    code = "import urllib.request; urllib.request.urlopen('http://example.com', timeout=5)"
    run = subprocess.run([sys.executable, "-c", code], env=_guarded_env(tmp_path), capture_output=True, text=True)
    assert run.returncode != 0 and "refused by the test's guard" in run.stderr
    assert "example.com" in (tmp_path / "network.log").read_text()


@pytest.fixture
def app_url(tmp_path):
    """``spare app`` started as a user would, on a free port, with the network guard; output in ``tmp_path / "out"``."""
    port = _free_port()
    log = open(tmp_path / "app.log", "w")
    # As a user starts it: no offline switches (make test sets HF_HUB_OFFLINE); the guard catches any call out.
    env = {k: v for k, v in _guarded_env(tmp_path).items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "spare_core.cli", "app", "--port", str(port), "--out-dir", str(tmp_path / "out")]
    server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"the app exited: {(tmp_path / 'app.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the app did not start in 120 s: {(tmp_path / 'app.log').read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: install Debian's chromium package (make test does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is missing: pip install -e '.[dev]'")
    args = [
        "--no-sandbox",
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


def _gallery_images(page, element_id: str) -> list[np.ndarray]:
    """The pictures of a gallery as the browser received them, in order."""
    sources = page.locator(f"#{element_id} img").evaluate_all("els => els.map(e => e.getAttribute('src'))")
    pictures = []
    for src in sources:
        response = page.request.get(urljoin(page.url, src))
        assert response.ok, src
        pictures.append(np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB")))
    return pictures


def _wait_gallery(page, element_id: str, count: int, timeout_ms: int = 240_000) -> None:
    page.wait_for_function(
        f"document.querySelectorAll('#{element_id} img').length >= {count}", timeout=timeout_ms, polling=250
    )


def _wait_images_loaded(page) -> None:
    page.wait_for_function(
        "[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)", timeout=30_000
    )


def test_train_compare_and_download_in_a_real_browser(browser, app_url, tmp_path):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1800}, accept_downloads=True)
    foreign: list[str] = []

    def only_localhost(route):
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    context.route("**/*", only_localhost)
    page = context.new_page()
    page.goto(app_url)
    page.locator("#spare-concepts textarea, #spare-concepts input").first.fill("yellow")
    page.locator("#spare-surrogates textarea, #spare-surrogates input").first.fill("plain")
    # The gallery prompts follow the concept (the box was not edited).
    prompts_box = page.locator("#spare-gallery-prompts textarea")
    page.wait_for_function(
        "document.querySelector('#spare-gallery-prompts textarea').value.includes('yellow style')", timeout=20_000
    )
    assert len([line for line in prompts_box.input_value().splitlines() if line.strip()]) == 6
    page.get_by_role("button", name="Erasure settings").click()
    page.get_by_role("button", name="Advanced settings").click()
    for name, value in {**SETTINGS, "steps": STEPS}.items():
        box = page.locator(f"#setting-{name} input")
        box.fill(str(value))
        box.press("Tab")
    # A bad file name: one clear line in the page, and nothing starts.
    name_box = page.locator("#spare-file-name textarea, #spare-file-name input").first
    name_box.fill("../../x")
    page.locator("#spare-train").click()
    page.wait_for_function(
        "document.querySelector('#spare-message').innerText.includes('is not allowed')", timeout=30_000
    )
    assert "error: file name '../../x' is not allowed" in page.locator("#spare-message").inner_text()
    name_box.fill("spare_yellow.safetensors")
    page.locator("#spare-train").click()
    page.wait_for_selector('#spare-progress-box[data-status="running"]', timeout=60_000)

    # A second tab sees the training running; closing the first does not stop it.
    watcher = context.new_page()
    watcher.goto(app_url)
    watcher.wait_for_selector('#spare-progress-box[data-status="running"]', timeout=60_000)
    stage_text = watcher.locator("#spare-progress-box").inner_text()
    assert "Stage" in stage_text
    watcher.screenshot(path=str(SCREENSHOTS / "1-second-tab-training.png"), full_page=True)
    page.close()

    _wait_gallery(watcher, "spare-after", GALLERY)
    watcher.wait_for_selector('#spare-progress-box[data-status="done"]', state="attached", timeout=60_000)
    assert "erased yellow -> plain" in watcher.locator("#spare-message").inner_text()
    assert watcher.locator("#spare-profile img").count() == 1
    assert watcher.locator("#spare-saliency img").count() == 1
    scores = watcher.locator("#spare-scores").inner_text()
    assert "UA" in scores and "after" in scores
    _wait_images_loaded(watcher)
    watcher.screenshot(path=str(SCREENSHOTS / "2-result-strength-1.png"), full_page=True)
    before = _gallery_images(watcher, "spare-before")
    after = _gallery_images(watcher, "spare-after")
    assert len(before) == len(after) == GALLERY
    assert any(not np.array_equal(b, a) for b, a in zip(before, after, strict=True)), "the LoRA changed nothing"

    # Strength 0: "after" equals "before" pixel for pixel.
    old_sources = watcher.locator("#spare-after img").evaluate_all("els => els.map(e => e.getAttribute('src'))")
    watcher.locator("#spare-strength input[type=range]").fill("0")
    watcher.locator("#spare-strength input[type=range]").dispatch_event("pointerup")
    watcher.wait_for_function(
        "old => { const now = [...document.querySelectorAll('#spare-after img')].map(e => e.getAttribute('src'));"
        " return now.length === old.length && now.every((s, i) => s !== old[i]); }",
        arg=old_sources,
        timeout=120_000,
    )
    after_at_zero = _gallery_images(watcher, "spare-after")
    assert all(np.array_equal(b, a) for b, a in zip(before, after_at_zero, strict=True))
    _wait_images_loaded(watcher)
    watcher.screenshot(path=str(SCREENSHOTS / "3-strength-0.png"), full_page=True)

    # The download is the LoRA file the run wrote, and the engine reads it.
    with watcher.expect_download() as download:
        watcher.locator("#spare-download").click()
    saved = tmp_path / "downloaded.safetensors"
    download.value.save_as(saved)
    lora = read_lora(saved)
    assert [p.concept for p in lora.config().concepts] == ["yellow"]
    assert lora.config().steps == STEPS
    written = list((tmp_path / "out").glob("*/spare_yellow.safetensors"))
    assert len(written) == 1 and written[0].read_bytes() == saved.read_bytes()

    assert foreign == [], f"the page asked other hosts: {foreign}"
    network_log = tmp_path / "network.log"
    assert not network_log.exists(), f"the app tried other hosts: {network_log.read_text()}"
    context.close()

"""The web console in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by selenium) against the real gunicorn serving the digits model `make run` trained.

What a person does in the first minute: sees digits AVAILABLE, tries `examples/7.png`, drops a
broken file and a good one into the models folder and watches their states change without
reloading, and, on a server with AUTH_TOKEN, gives a wrong token and then the right one. The
Makefile installs Chromium when it is missing (as root); without it these tests skip, saying why
(under CI=true they fail instead). `make screenshot` rewrites docs/console.png from
`test_screenshot`; in the suite that test writes into a temporary folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, in_ci, wait_until
from tests.e2e.conftest import Quickstart, Server, copy_trained_digits, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the suite runs as root in CI, where Chromium's sandbox refuses to start
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1000",
)
TOKEN = "console-s3cret"
SCREENSHOT_TO = "CONSOLE_SCREENSHOT"
"""Environment variable naming where `test_screenshot` writes its PNG (`make screenshot`: docs/console.png)."""

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    missing = (
        f"the browser tests need {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium and chromium-driver); "
        "`make test` installs them when run as root, or run `apt-get install -y chromium chromium-driver`"
    )
    if in_ci():
        raise pytest.UsageError(f"CI=true and {missing}")
    pytest.skip(missing, allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only where the browser exists
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def models_dir(quickstart: Quickstart, tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("console-models")
    copy_trained_digits(quickstart, models)
    return models


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server(models_dir, tmp_path_factory.mktemp("console-logs"), timeout_s=240) as running:
        yield running


def open_console(browser: WebDriver, server: Server) -> None:
    browser.get(server.url + "/")
    wait_until(lambda: model_state(browser, "digits") == "AVAILABLE", timeout_s=30)


def text(browser: WebDriver, css: str) -> str:
    """Text of the first element matching `css`, "" when there is none (the page redraws as it polls)."""
    found = browser.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def model_state(browser: WebDriver, name: str) -> str:
    return text(browser, f'article[data-model="{name}"] h3 .state')


def land(source: Path, models_dir: Path, name: str) -> None:
    """Put a file into the watched folder the documented way: copy beside it, then rename into it."""
    staging = models_dir.parent / f".{name}.part"
    shutil.copyfile(source, staging)
    staging.rename(models_dir / name)


def choose_model(browser: WebDriver, name: str) -> None:
    Select(browser.find_element(By.ID, "try-model")).select_by_value(name)


def run_images(browser: WebDriver, *names: str) -> None:
    browser.find_element(By.ID, "try-files").send_keys("\n".join(str(REPO / "examples" / n) for n in names))
    browser.find_element(By.ID, "try-run").click()
    wait_until(lambda: text(browser, "#try-status").startswith("HTTP"), timeout_s=30)


def top_classes(browser: WebDriver) -> list[tuple[str, float]]:
    """(label, score) of each bar of the first result, top first."""
    rows = browser.find_elements(By.CSS_SELECTOR, "#try-results .result:first-child .topk li")
    return [
        (row.find_element(By.CLASS_NAME, "label").text, float(row.find_element(By.CLASS_NAME, "score").text))
        for row in rows
    ]


# --- models view ----------------------------------------------------------------------------------


def test_models_view_shows_digits_available_with_its_labels_and_inputs(browser: WebDriver, server: Server) -> None:
    open_console(browser, server)
    assert text(browser, 'article[data-model="digits"] tr[data-version="1"]').split()[:3] == [
        "1",
        "(serving)",
        "AVAILABLE",
    ]
    browser.find_element(By.CSS_SELECTOR, 'article[data-model="digits"] summary').click()
    details = text(browser, 'article[data-model="digits"] dl')
    assert "Labels\n10: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in details
    assert "image: float32 [?, 28, 28, 1]" in details
    assert "scale raw" in details
    assert text(browser, "#ready") == "ready"


def test_a_broken_file_shows_failed_with_its_load_error(browser: WebDriver, server: Server, models_dir: Path) -> None:
    open_console(browser, server)
    broken = models_dir.parent / "broken-source.keras"
    broken.write_bytes((models_dir / "digits.keras").read_bytes()[:3000])  # a zip cut short: no config.json
    land(broken, models_dir, "broken.keras")
    wait_until(lambda: model_state(browser, "broken") == "FAILED", timeout_s=30)
    assert text(browser, 'article[data-model="broken"] pre.load-error') == (
        "version 1: 'broken.keras' is a zip file without config.json, not a Keras model"
    )


def test_a_good_file_goes_from_loading_to_available_without_a_reload(
    browser: WebDriver, server: Server, models_dir: Path
) -> None:
    open_console(browser, server)
    browser.execute_script("window.sameDocument = true")
    land(models_dir / "digits.keras", models_dir, "digits_copy.keras")
    seen: list[str] = []

    def available() -> bool:
        state = model_state(browser, "digits_copy")
        if state and (not seen or seen[-1] != state):
            seen.append(state)
        return state == "AVAILABLE"

    # Loading runs the Lambda probe (a fresh interpreter importing TensorFlow): seconds, while the page
    # polls every half second during a load.
    wait_until(available, timeout_s=90, interval_s=0.1)
    assert "LOADING" in seen and seen[-1] == "AVAILABLE", seen
    assert browser.execute_script("return window.sameDocument") is True  # the page was never reloaded
    # Screen readers hear the change once, in a polite live region (the list itself is redrawn silently).
    announced = browser.find_element(By.ID, "announce").get_attribute("textContent")
    assert "digits_copy is AVAILABLE" in announced, announced
    options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#try-model option")]
    assert "digits_copy" in options


# --- try it ---------------------------------------------------------------------------------------


def test_uploading_a_7_shows_7_first_with_a_high_score_the_json_and_the_latency(
    browser: WebDriver, server: Server
) -> None:
    open_console(browser, server)
    choose_model(browser, "digits")
    run_images(browser, "7.png")
    status = text(browser, "#try-status")
    assert status.startswith("HTTP 200 from digits version 1 in ") and status.endswith(" ms (round trip)"), status
    classes = top_classes(browser)
    assert len(classes) == 5
    assert classes[0][0] == "7" and classes[0][1] > 0.9, classes
    assert [score for _, score in classes] == sorted((score for _, score in classes), reverse=True)
    raw = browser.find_element(By.ID, "try-raw").get_attribute("textContent")
    assert '"label": "7"' in raw and '"model": "digits"' in raw


def test_an_image_dropped_onto_the_form_is_the_one_sent(browser: WebDriver, server: Server) -> None:
    open_console(browser, server)
    choose_model(browser, "digits")
    # What a drop from the file manager delivers: a DataTransfer holding the file, in a `drop` event.
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "4.png", {type: "image/png"}));
        document.getElementById("images-input").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        """,
        base64.b64encode((REPO / "examples" / "4.png").read_bytes()).decode("ascii"),
    )
    assert text(browser, "#chosen figcaption") == "4.png"
    browser.find_element(By.ID, "try-run").click()
    wait_until(lambda: text(browser, "#try-status").startswith("HTTP 200"), timeout_s=30)
    assert text(browser, "#try-results .result h3") == "4.png"
    assert top_classes(browser)[0][0] == "4"


def test_the_curl_line_reproduces_the_request(browser: WebDriver, server: Server) -> None:
    open_console(browser, server)
    choose_model(browser, "digits")
    run_images(browser, "7.png")
    curl = browser.find_element(By.ID, "try-curl").get_attribute("value")
    assert curl == f"curl -F 'image=@7.png' '{server.url}/models/digits/predict_classes?top_k=5'"
    answer = subprocess.run(["sh", "-c", curl], cwd=REPO / "examples", capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert '"label":"7"' in answer.stdout


def test_health_shows_the_request_rate_and_p99_of_the_model_tried(browser: WebDriver, server: Server) -> None:
    open_console(browser, server)
    choose_model(browser, "digits")
    run_images(browser, "7.png")
    row = 'tr[data-model="digits"]'
    wait_until(lambda: text(browser, f"{row} .p99").endswith(" ms"), timeout_s=15)
    assert float(text(browser, f"{row} .rate")) > 0
    assert 0 < float(text(browser, f"{row} .p99").removesuffix(" ms")) <= 10_000
    assert text(browser, "#ready-reason") == "Ready: every model present at start-up has loaded."


def test_a_json_tensor_shows_the_raw_outputs_and_a_bad_body_the_servers_400(browser: WebDriver, server: Server) -> None:
    open_console(browser, server)
    choose_model(browser, "digits")
    browser.find_element(By.CSS_SELECTOR, 'input[name="input"][value="json"]').click()
    Select(browser.find_element(By.ID, "try-route")).select_by_value("predict")
    blank = [[[0.0]] * 28] * 28
    body = json.dumps({"instances": [blank]})
    field = browser.find_element(By.ID, "try-json")
    browser.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", field, body
    )
    browser.find_element(By.ID, "try-run").click()
    wait_until(lambda: text(browser, "#try-status").startswith("HTTP 200 from digits version 1"), timeout_s=30)
    values = json.loads(text(browser, "#try-results .result .value"))
    assert len(values) == 10 and abs(sum(values) - 1) < 1e-3  # the softmax of one row
    assert browser.find_element(By.ID, "try-curl").get_attribute("value") == (
        f"curl -H 'Content-Type: application/json' -d '{body}' '{server.url}/models/digits/predict'"
    )
    field.clear()
    field.send_keys('{"instances": [1, 2')
    browser.find_element(By.ID, "try-run").click()
    wait_until(lambda: text(browser, "#try-status").startswith("HTTP 400: "), timeout_s=30)
    assert "JSON" in text(browser, "#try-status")
    assert text(browser, "#try-results") == ""


# --- accessibility and small screens --------------------------------------------------------------


def test_every_control_has_a_label_and_enter_runs_the_form(browser: WebDriver, server: Server) -> None:
    open_console(browser, server)
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select, textarea')]"
        ".filter((e) => !e.labels.length && !e.getAttribute('aria-label')).map((e) => e.id || e.name)"
    )
    assert unlabelled == []
    choose_model(browser, "digits")
    browser.find_element(By.ID, "try-files").send_keys(str(REPO / "examples" / "3.png"))
    browser.find_element(By.ID, "try-topk").send_keys(Keys.ENTER)  # keyboard only: Enter submits
    wait_until(lambda: text(browser, "#try-status").startswith("HTTP 200"), timeout_s=30)
    assert top_classes(browser)[0][0] == "3"


def test_a_phone_sized_screen_needs_no_sideways_scrolling(browser: WebDriver, server: Server) -> None:
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 360, "height": 780, "deviceScaleFactor": 2, "mobile": True}
    )
    try:
        open_console(browser, server)
        width, scroll_width = browser.execute_script(
            "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
        )
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert (width, scroll_width) == (360, 360)


# --- the screenshot of the README and docs/api.md -------------------------------------------------


def test_screenshot(browser: WebDriver, server: Server, models_dir: Path, tmp_path: Path) -> None:
    if not (models_dir / "broken.keras").exists():  # a FAILED model beside the good one, as in the docs
        (tmp_path / "broken.keras").write_bytes((models_dir / "digits.keras").read_bytes()[:3000])
        land(tmp_path / "broken.keras", models_dir, "broken.keras")
    open_console(browser, server)
    wait_until(lambda: model_state(browser, "broken") == "FAILED", timeout_s=30)
    choose_model(browser, "digits")
    run_images(browser, "7.png", "3.png")
    wait_until(lambda: text(browser, 'tr[data-model="digits"] .p99').endswith(" ms"), timeout_s=15)
    target = Path(os.environ.get(SCREENSHOT_TO) or tmp_path / "console.png")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    # The whole page in one picture: a viewport as tall as the page (not the window, which has a minimum size).
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False}
    )
    try:
        assert browser.save_screenshot(str(target))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    header = target.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1280, height)  # width and height in pixels


# --- with AUTH_TOKEN --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("console-auth-models")
    for name in ("digits.keras", "digits.yaml", "digits.labels.txt"):
        shutil.copy2(models_dir / name, models / name)
    shutil.copytree(models_dir / "plugins", models / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    # No Lambda probe: this server only checks the token, so its one model loads in about a second.
    with start_server(
        models, tmp_path_factory.mktemp("console-auth-logs"), AUTH_TOKEN=TOKEN, LAMBDA_PROBE="false", timeout_s=240
    ) as running:
        yield running


def give_token(browser: WebDriver, token: str) -> None:
    field = browser.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token, Keys.ENTER)


def test_with_auth_a_wrong_token_shows_the_401_and_the_right_one_works(browser: WebDriver, auth_server: Server) -> None:
    browser.get(auth_server.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(auth_server.url + "/")
    wait_until(lambda: browser.find_element(By.ID, "auth").is_displayed(), timeout_s=15)
    assert text(browser, "#auth-message").startswith("401 Unauthorized: this route needs `Authorization: Bearer")
    give_token(browser, "wrong")
    wait_until(
        lambda: text(browser, "#auth-message") == "401 Unauthorized: the bearer token is not valid", timeout_s=15
    )
    assert browser.find_element(By.ID, "auth").is_displayed()
    give_token(browser, TOKEN)
    wait_until(lambda: model_state(browser, "digits") == "AVAILABLE", timeout_s=30)
    assert not browser.find_element(By.ID, "auth").is_displayed()
    # The token goes with the predict call too, and the curl line names it without showing it.
    choose_model(browser, "digits")
    run_images(browser, "7.png")
    assert top_classes(browser)[0][0] == "7"
    assert (
        browser.find_element(By.ID, "try-curl")
        .get_attribute("value")
        .startswith('curl -H "Authorization: Bearer $TOKEN" -F ')
    )
    assert TOKEN not in browser.page_source
    browser.execute_script("sessionStorage.clear()")

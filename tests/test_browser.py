"""The page in a real browser (headless Chromium, Debian's package, driven by Playwright),
as a person uses it: Start, watch the curve grow and a dev point appear, sample with a
prefix, open a name's steps, get a bad temperature's message. Marked `browser`; where
Chromium is missing these tests are deselected (conftest.py), and .ci/run installs it."""
import os
import shutil
import urllib.parse

import pytest

from test_serve import Server

pytestmark = pytest.mark.browser
TIMEOUT = 120_000  # ms


def test_a_person_trains_watches_and_samples(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    s = Server(tmp_path / "run")  # the bundled names.txt, the lecture's recipe
    requests, problems = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM") or shutil.which("chromium")
                                        or shutil.which("chromium-browser"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(TIMEOUT)
            expect.set_options(timeout=TIMEOUT)
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(s.base + "/")
            expect(page.locator("#status")).to_contain_text("no run")
            page.select_option("select[name=preset]", "lecture")
            page.click("#start")
            expect(page.locator("#status")).to_contain_text("training")
            # the loss curve grows, a dev point appears, the insides draw
            page.wait_for_function("document.getElementById('loss').data && "
                                   "document.getElementById('loss').data[0].x.length > 10")
            page.wait_for_function("document.getElementById('loss').data.some(t => t.name === 'dev')")
            page.wait_for_function("document.getElementById('act').data && "
                                   "document.getElementById('embedding').data[0].x.length === 27")
            expect(page.locator("#act .gtitle")).to_contain_text("saturation")
            # the whole recipe, live: it ends paused at step 200,000 with dev near 2.17
            expect(page.locator("#status")).to_contain_text("step 200,000 / 200,000 · paused")
            expect(page.locator("#status")).to_contain_text("dev 2.1")
            # sampling with a prefix: names, marked new or in train; a name's steps as bars
            page.fill("#sampling input[name=prefix]", "em")
            page.click("#go")
            expect(page.locator("#names li")).to_have_count(12)
            assert all(t.startswith("em") for t in page.locator("#names li").all_inner_texts())
            page.locator("#names li").first.click()
            expect(page.locator("#steps .chart").first).to_be_visible()
            assert page.locator("#steps .chart").count() >= 1
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            if os.environ.get("SERVE_SCREENSHOT"):  # how docs/serve.png is made
                shutil.copy(tmp_path / "serve.png", os.environ["SERVE_SCREENSHOT"])
            # a bad temperature: the page shows the server's one line
            page.fill("#sampling input[name=temperature]", "0")
            page.click("#go")
            expect(page.locator("#error")).to_contain_text("temperature must be a number in (0, 100]")
            problems = [m for m in problems if "400 (Bad Request)" not in m]  # (that answer, as the console logs it)
            browser.close()
    finally:
        s.stop()
    assert not problems, problems
    hosts = {urllib.parse.urlparse(u).hostname for u in requests}
    assert hosts == {"127.0.0.1"}, hosts  # nothing leaves this machine: plotly.js comes from the server

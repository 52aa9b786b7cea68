"""The web page in a real headless browser (Debian's chromium + chromedriver through Selenium),
against a real uvicorn server on loopback: type a query, see ranked results with highlighted terms,
and (slow) the answer with its citations and route."""

from __future__ import annotations

import shutil

import pytest

from tests.api.live_server import start_server

pytestmark = pytest.mark.java

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the 'dev' extra)"
    if not (CHROMIUM and CHROMEDRIVER):
        return "no headless browser: install Debian's chromium and chromium-driver (.ci/run does)"
    return None


def serve_in_thread(app):
    """A real uvicorn server on loopback; returns (base url, stop function)."""
    port, _, stop = start_server(app)
    return f"http://127.0.0.1:{port}", stop


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def search_on_page(browser, base: str, query: str, retriever: str, mode: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(base + "/")
    box = browser.find_element(By.ID, "query")
    box.send_keys(query)
    Select(browser.find_element(By.ID, "retriever")).select_by_value(retriever)
    Select(browser.find_element(By.ID, "mode")).select_by_value(mode)
    browser.find_element(By.ID, "go").click()


def test_typing_a_query_shows_highlighted_ranked_results(browser, loaded_state):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from sparsa.api import create_app

    base, stop = serve_in_thread(create_app(loaded_state.config, loaded_state))
    try:
        for retriever in ("bm25", "splade"):
            search_on_page(browser, base, "boundary layer heat transfer", retriever, "off")
            WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results li.hit"))
            hits = browser.find_elements(By.CSS_SELECTOR, "#results li.hit")
            assert len(hits) == 10
            marked = {m.text.lower() for m in browser.find_elements(By.CSS_SELECTOR, "#results mark")}
            assert any(word.startswith(("boundary", "layer", "heat", "transfer")) for word in marked), marked
            assert f"10 results from {retriever}" in browser.find_element(By.ID, "status").text
        assert "ready" in browser.find_element(By.ID, "health").text
        search_on_page(browser, base, "flow", "hybrid", "off")
        browser.find_element(By.ID, "rerank").click()  # no reranker here: the page shows the server's message
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 30).until(lambda b: "400" in b.find_element(By.ID, "status").text)
        assert "reranking is not configured" in browser.find_element(By.ID, "status").text
    finally:
        stop()


@pytest.mark.slow
def test_page_shows_the_answer_citations_and_route(browser, qa_state):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from sparsa.api import create_app

    base, stop = serve_in_thread(create_app(qa_state.config, qa_state))
    try:
        search_on_page(browser, base, "what is the effect of heat transfer on boundary layer flow",
                       "bm25", "retrieve")
        WebDriverWait(browser, 180).until(lambda b: b.find_element(By.ID, "route").text)
        assert browser.find_element(By.ID, "route").text == "route: retrieve"
        assert browser.find_element(By.ID, "answer").text.strip()
        assert browser.find_elements(By.CSS_SELECTOR, "#results li.hit")
    finally:
        stop()

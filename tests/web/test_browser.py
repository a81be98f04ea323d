"""The reader's pages in a real browser: Debian's headless Chromium driven by Selenium against a real `qa serve`.

Needs `chromium` and `chromium-driver` from apt (`make browser-deps`); selenium-manager never downloads anything.
axe-core, the accessibility checker injected into the pages, is `npm pack`ed at a pinned version into build/
(`make axe`, or the first test that needs it). Screenshots of every view at desktop and phone width go to
build/screenshots/ (git-ignored).
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import urllib.parse

import pytest

from conftest import ROOT, serve

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AXE_VERSION = "4.10.3"
AXE_SHA256 = "880970c081707360e64f34cea25ff91892f5bc95675b0776925b9709dd8a68bb"  # its axe.min.js
AXE_DIR = os.path.join(ROOT, "build", f"axe-core-{AXE_VERSION}")
SCREENSHOTS = os.path.join(ROOT, "build", "screenshots")
WIDTHS = {"desktop": 1280, "phone": 390}

pytestmark = [pytest.mark.browser, pytest.mark.slow,  # the answers on the page are the real model's
              pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason="needs Debian's chromium at /usr/bin/chromium (make browser-deps)")]

QUESTION = "what actions has China taken?"
NO_ANSWER = "What is the boiling point of liquid nitrogen in Kelvin?"


@pytest.fixture(scope="module")
def server(seed_server):
    """The session's `qa serve` of the real-model seed index."""
    return seed_server


@pytest.fixture(scope="module")
def collection_server(collection_index_dir):
    """`qa serve` over the 121-article collection (three outlets, pages of 50), built with the fake embedder."""
    with serve(collection_index_dir) as base:
        yield base


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe.min.js of the pinned axe-core, `npm pack`ed from the npm registry into build/ when missing."""
    path = os.path.join(AXE_DIR, "axe.min.js")
    if not os.path.exists(path):
        assert shutil.which("npm"), "the accessibility check needs npm to fetch axe-core (apt-get install npm)"
        os.makedirs(AXE_DIR, exist_ok=True)
        subprocess.run(["npm", "pack", f"axe-core@{AXE_VERSION}", "--silent"], cwd=AXE_DIR, check=True,
                       stdout=subprocess.DEVNULL, timeout=300)
        tgz = os.path.join(AXE_DIR, f"axe-core-{AXE_VERSION}.tgz")
        with tarfile.open(tgz) as tar:
            data = tar.extractfile("package/axe.min.js").read()
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)
        os.remove(tgz)
    with open(path, "rb") as f:
        data = f.read()
    assert hashlib.sha256(data).hexdigest() == AXE_SHA256, f"{path} is not axe-core {AXE_VERSION}: delete it"
    return data.decode()


def chromium(profile, javascript: bool = True):
    """Headless Chromium at desktop width; `javascript=False` runs the pages with scripts off."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def _chromium(tmp_path_factory):
    """One Chromium for the module's tests (starting one costs about a second); `browser` resets it per test."""
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def _fresh(driver):
    """The driver as a new one starts: a blank page at desktop width, no cookies, no granted permissions (the
    pages keep nothing in storage)."""
    driver.get("about:blank")
    driver.delete_all_cookies()
    driver.execute_cdp_cmd("Browser.resetPermissions", {})
    driver.set_window_size(1280, 1000)
    return driver


@pytest.fixture()
def browser(_chromium):
    return _fresh(_chromium)


@pytest.fixture()
def browser_without_js(tmp_path):
    driver = chromium(tmp_path / "chromium-profile-nojs", javascript=False)
    try:
        yield driver
    finally:
        driver.quit()


def ask(driver, base, question):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/")
    box = driver.find_element(By.CSS_SELECTOR, "input#q")
    assert driver.execute_script("return document.activeElement.id") == "q", "search box has no keyboard focus"
    driver.switch_to.active_element.send_keys(question, Keys.ENTER)
    WebDriverWait(driver, 60).until(EC.url_contains("q="))
    WebDriverWait(driver, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, "section.answer")))
    assert box is not None
    return driver


def test_question_answer_and_citations(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    ask(browser, server, QUESTION)
    assert urllib.parse.parse_qs(urllib.parse.urlparse(browser.current_url).query)["q"] == [QUESTION]
    assert browser.find_element(By.CSS_SELECTOR, "input#q").get_attribute("value") == QUESTION

    answer = browser.find_element(By.ID, "answer-text")
    assert answer.is_displayed()
    markers = re.findall(r"\[(\d+)\]", answer.text)
    assert markers and len(answer.text) > 40, answer.text

    cards = browser.find_elements(By.CSS_SELECTOR, "ol.results li.card")
    assert cards
    cited = {c.get_attribute("id"): c for c in cards if c.get_attribute("id")}
    for n in set(markers):
        card = cited.get(f"r{n}")
        assert card is not None, f"no card for citation [{n}]"
        links = [a for a in answer.find_elements(By.CSS_SELECTOR, "a.cite") if a.text.strip() == f"[{n}]"]
        assert links and all("/documents/" in a.get_attribute("href") for a in links)
        assert card.find_element(By.CSS_SELECTOR, ".badge").get_attribute("textContent") == f"source [{n}]"
        assert card.find_element(By.CSS_SELECTOR, ".title").text.strip()
        byline = card.find_element(By.CSS_SELECTOR, ".byline").text
        assert "Reuters" in byline
        assert re.search(r"paragraph \d+", byline), byline
        author = card.find_elements(By.CSS_SELECTOR, ".byline .author")
        assert author and author[0].text.strip(), byline

    marks = browser.find_elements(By.CSS_SELECTOR, "li.card mark.answer")
    assert marks and any(m.text.strip() for m in marks)
    ems = [e.text.lower() for e in browser.find_elements(By.CSS_SELECTOR, "li.card em")]
    assert any(w.startswith("china") for w in ems) and any(w.startswith("action") for w in ems), ems

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(height + 140, 1000), 6000))  # the whole page in one shot
    desktop = tmp_path / "qa-screenshot.png"
    browser.save_screenshot(str(desktop))
    assert desktop.stat().st_size > 0
    shutil.copyfile(desktop, "/tmp/qa-screenshot.png")


def test_phone_width_has_no_horizontal_scroll(server, browser, tmp_path):
    browser.set_window_size(390, 844)
    ask(browser, server, QUESTION)
    width = browser.execute_script("return window.innerWidth")
    scroll = browser.execute_script("return document.documentElement.scrollWidth")
    assert scroll <= width, f"horizontal scroll at phone width: scrollWidth {scroll} > innerWidth {width}"
    phone = tmp_path / "qa-screenshot-phone.png"
    browser.save_screenshot(str(phone))
    assert phone.stat().st_size > 0
    shutil.copyfile(phone, "/tmp/qa-screenshot-phone.png")


def test_script_query_renders_as_text(server, browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    payload = "<script>alert(1)</script>"
    browser.get(server + "/?q=" + urllib.parse.quote(payload))
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert browser.find_element(By.CSS_SELECTOR, "input#q").get_attribute("value") == payload
    assert "&lt;script&gt;" in browser.page_source
    # the one script is the page's own static file (the CSP forbids inline ones)
    scripts = browser.find_elements(By.TAG_NAME, "script")
    assert [urllib.parse.urlsplit(e.get_attribute("src")).path for e in scripts] == ["/static/page.js"]
    assert all(not e.get_attribute("innerHTML").strip() for e in scripts)


def test_no_answer_notice(server, browser):
    from selenium.webdriver.common.by import By

    ask(browser, server, NO_ANSWER)
    notice = browser.find_element(By.CSS_SELECTOR, "section.answer .notice")
    assert notice.is_displayed() and "No answer" in notice.text
    assert not browser.find_elements(By.ID, "answer-text")


def wait_for(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def in_view(driver, element) -> bool:
    """Whether the element is inside the viewport (its top, when it is taller than the window)."""
    return driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.height > 0 && r.top >= 0 && r.top < window.innerHeight && r.left >= 0"
        " && r.right <= window.innerWidth + 1;", element)


def shoot(driver, name: str, width: int) -> str:
    """A full-page screenshot at `width` into build/screenshots/; fails on a horizontal scroll."""
    driver.set_window_size(width, 900)
    inner = driver.execute_script("return window.innerWidth")
    scroll = driver.execute_script("return document.documentElement.scrollWidth")
    assert scroll <= inner, f"{name}: horizontal scroll at {width}px (scrollWidth {scroll} > {inner})"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(height + 140, 900), 6000))
    os.makedirs(SCREENSHOTS, exist_ok=True)
    path = os.path.join(SCREENSHOTS, f"{name}-{width}.png")
    driver.save_screenshot(path)
    assert os.path.getsize(path) > 5000
    return path


def axe_violations(driver, axe_source: str) -> list[dict]:
    """axe-core's serious and critical violations on the current page (all its rules but the experimental)."""
    driver.set_script_timeout(60)
    driver.execute_script(axe_source)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))))"
        ".catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));")
    return [v for v in result if v["impact"] in ("serious", "critical")]


def test_answer_citation_opens_the_article_at_the_marked_span(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    ask(browser, server, QUESTION)
    first = browser.find_element(By.CSS_SELECTOR, "#answer-text a.cite")
    assert first.text.strip() == "[1]"
    sentence = browser.execute_script(
        "const a = arguments[0]; let t = ''; for (let n = a.previousSibling; n && n.nodeName !== 'A';"
        " n = n.previousSibling) t = n.textContent + t; return t.trim();", first)
    first.click()
    wait_for(browser, EC.url_contains("/documents/"))
    mark = wait_for(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "mark#hl")))
    assert mark.text.strip() == sentence
    assert browser.current_url.endswith("#hl") and in_view(browser, mark)
    para = mark.find_element(By.XPATH, "./ancestor::p[1]")
    assert re.fullmatch(r"p\d+", para.get_attribute("id")) and "cited" in para.get_attribute("class")
    assert browser.find_element(By.CSS_SELECTOR, "article h1").text.startswith("US says fentanyl talks")
    assert "Reuters" in browser.find_element(By.CSS_SELECTOR, "article .byline").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "div.body p.paragraph")) == 15
    # the same link without its #hl fragment: the page's script scrolls the span into view
    browser.get(browser.current_url.split("#")[0])
    mark = wait_for(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "mark#hl")))
    wait_for(browser, lambda d: in_view(d, mark), 10)


def test_pages_work_without_javascript(server, browser_without_js):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    driver = browser_without_js
    driver.get(server + "/?q=" + urllib.parse.quote(QUESTION))
    card = driver.find_element(By.CSS_SELECTOR, "li.card.cited")
    assert not card.find_element(By.CSS_SELECTOR, "button.copy").is_displayed()  # it needs JavaScript
    area = card.find_element(By.CSS_SELECTOR, "details.citation textarea")
    assert not area.is_displayed()
    card.find_element(By.CSS_SELECTOR, "details.citation summary").click()
    assert area.is_displayed() and area.get_attribute("readonly") is not None
    assert re.search(r"\bReuters, .*paragraph \d+\.$", area.get_attribute("value")), area.get_attribute("value")
    driver.find_element(By.CSS_SELECTOR, "#answer-text a.cite").click()
    mark = wait_for(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "mark#hl")))
    assert in_view(driver, mark)


def test_copy_citation_puts_the_reference_on_the_clipboard(server, browser):
    from selenium.webdriver.common.by import By

    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": server, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    ask(browser, server, QUESTION)
    card = browser.find_element(By.CSS_SELECTOR, "li.card.cited")
    button = card.find_element(By.CSS_SELECTOR, "button.copy")
    assert button.is_displayed() and button.text == "Copy citation"
    expected = card.find_element(By.CSS_SELECTOR, "details.citation textarea").get_attribute("value")
    assert '"US says fentanyl talks' in expected and "Reuters" in expected
    assert server + "/documents/" in expected  # the seed has no URL: its article view stands in
    button.click()
    wait_for(browser, lambda d: card.find_element(By.CSS_SELECTOR, ".copied").text == "Citation copied", 10)
    copied = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, e => done('unreadable: ' + e));")
    assert copied == expected


def test_outlet_filter_shows_only_that_outlets_results(collection_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select

    browser.get(collection_server + "/?q=harbour+bridge")
    outlets = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "li.card .source-name")}
    assert len(outlets) > 1, outlets
    browser.find_element(By.CSS_SELECTOR, "details.options summary").click()
    select = Select(browser.find_element(By.ID, "source"))
    assert [o.text for o in select.options][0] == "All outlets" and "Reuters" in [o.text for o in select.options]
    select.select_by_visible_text("Reuters")
    browser.find_element(By.ID, "q").send_keys(Keys.ENTER)
    wait_for(browser, EC.url_contains("source=Reuters"))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query, keep_blank_values=True)
    assert query == {"q": ["harbour bridge"], "source": ["Reuters"]}  # empty options stay out of the URL
    outlets = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "li.card .source-name")]
    assert outlets and set(outlets) == {"Reuters"}
    assert browser.find_element(By.CSS_SELECTOR, "details.options").get_attribute("open") is not None
    # an impossible date typed into the URL: the API's message in the page (its 400 status: test_pages)
    browser.get(collection_server + "/?q=harbour+bridge&published_after=2024-02-30")
    assert "published_after must be an ISO date" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text


def test_page_through_the_collection(collection_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    browser.get(collection_server + "/documents")
    seen, nxt = [], []
    for n in (1, 2, 3):
        assert browser.find_element(By.CSS_SELECTOR, "nav.pager .where").text == f"Page {n} of 3"
        titles = [a.text for a in browser.find_elements(By.CSS_SELECTOR, ".doclist a.doc-title")]
        assert len(titles) == (50 if n < 3 else 21) and not set(titles) & set(seen)
        seen += titles
        nxt = browser.find_elements(By.CSS_SELECTOR, "nav.pager a[rel=next]")
        if n < 3:
            nxt[0].click()
            wait_for(browser, EC.url_contains(f"page={n + 1}"))
    assert not nxt
    assert len(browser.find_elements(By.CSS_SELECTOR, ".outlets li")) == 4  # three outlets and "no outlet"
    browser.find_element(By.CSS_SELECTOR, ".doclist a.doc-title").click()
    wait_for(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "article.doc h1")))
    assert browser.find_element(By.CSS_SELECTOR, "article.doc h1").text == seen[100]


def test_keyboard_focus_is_visible(server, browser):
    from selenium.webdriver.common.keys import Keys

    browser.get(server + "/documents")
    browser.switch_to.active_element.send_keys(Keys.TAB)  # the skip link comes first and shows itself
    focused = browser.switch_to.active_element
    assert focused.text == "Skip to content" and in_view(browser, focused)
    for _ in range(5):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        style = browser.execute_script(
            "const s = getComputedStyle(document.activeElement); return [s.outlineStyle, s.outlineWidth];")
        assert style[0] != "none" and style[1] != "0px", (browser.switch_to.active_element.tag_name, style)


def test_views_are_accessible_and_screenshotted(server, collection_server, browser, axe_source):
    """0 serious or critical axe-core violations on each view; a screenshot of each at desktop and phone width."""
    from selenium.webdriver.common.by import By

    ask(browser, server, QUESTION)
    article = browser.find_element(By.CSS_SELECTOR, "#answer-text a.cite").get_attribute("href")
    views = {"search": browser.current_url, "article": article, "collection": collection_server + "/documents",
             "filtered-search": collection_server + "/?q=harbour+bridge&source=BBC+News",
             "error": collection_server + "/?q=x&mode=fuzzy"}
    failures = {}
    for name, url in views.items():
        for label, width in WIDTHS.items():
            browser.set_window_size(width, 900)
            browser.get(url)
            found = axe_violations(browser, axe_source)
            if found:
                failures[f"{name} at {label}"] = found
            shoot(browser, name, width)
    assert not failures, json.dumps(failures, indent=1)

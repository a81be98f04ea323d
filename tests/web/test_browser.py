"""The search page in a real browser: Debian's headless Chromium driven by Selenium against a real `qa serve`.

Needs `chromium` and `chromium-driver` from apt (`make browser-deps`); selenium-manager never downloads anything.
"""
import os
import re
import shutil
import urllib.parse

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = [pytest.mark.browser, pytest.mark.slow,  # the answers on the page are the real model's
              pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason="needs Debian's chromium at /usr/bin/chromium (make browser-deps)")]

QUESTION = "what actions has China taken?"
NO_ANSWER = "What is the boiling point of liquid nitrogen in Kelvin?"


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
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


def test_question_answer_and_citations(seed_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    ask(browser, seed_server, QUESTION)
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
        link = answer.find_element(By.CSS_SELECTOR, f'a.cite[href="#r{n}"]')
        assert link.text.strip() == f"[{n}]"
        assert card.find_element(By.CSS_SELECTOR, ".badge").text.strip() == f"[{n}]"
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


def test_phone_width_has_no_horizontal_scroll(seed_server, browser, tmp_path):
    browser.set_window_size(390, 844)
    ask(browser, seed_server, QUESTION)
    width = browser.execute_script("return window.innerWidth")
    scroll = browser.execute_script("return document.documentElement.scrollWidth")
    assert scroll <= width, f"horizontal scroll at phone width: scrollWidth {scroll} > innerWidth {width}"
    phone = tmp_path / "qa-screenshot-phone.png"
    browser.save_screenshot(str(phone))
    assert phone.stat().st_size > 0
    shutil.copyfile(phone, "/tmp/qa-screenshot-phone.png")


def test_script_query_renders_as_text(seed_server, browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    payload = "<script>alert(1)</script>"
    browser.get(seed_server + "/?q=" + urllib.parse.quote(payload))
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert browser.find_element(By.CSS_SELECTOR, "input#q").get_attribute("value") == payload
    assert "&lt;script&gt;" in browser.page_source
    assert not browser.find_elements(By.TAG_NAME, "script")


def test_no_answer_notice(seed_server, browser):
    from selenium.webdriver.common.by import By

    ask(browser, seed_server, NO_ANSWER)
    notice = browser.find_element(By.CSS_SELECTOR, "section.answer .notice")
    assert notice.is_displayed() and "No answer" in notice.text
    assert not browser.find_elements(By.ID, "answer-text")

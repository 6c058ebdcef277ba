"""The reading page in a real Chromium (Debian's chromium + chromedriver, driven by Selenium): a
reader logs in with their link, answers with the keyboard, reloads mid-way and resumes at the
next unanswered case, finishes the survey; SQLite holds exactly what was typed.

Skipped when Chromium or chromedriver is missing, unless MAMMOSYNTH_REQUIRE_BROWSER=1 (CI), where
a missing browser fails the test."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest
from reader_study.server import serving

from mammosynth.validation.reader_study.layout import StudyLayout

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        if os.environ.get("MAMMOSYNTH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MAMMOSYNTH_REQUIRE_BROWSER=1 but missing: {missing}")
        pytest.skip(f"no browser to drive (missing {missing}); apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(arg)
    # the system chromedriver, named explicitly: selenium-manager never looks for one online
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture
def browser():
    driver = _browser()
    try:
        yield driver
    finally:
        driver.quit()


def shown_trial(driver, previous: str | None, timeout: float = 15) -> str:
    """The trial id the page shows once its image has loaded (and differs from ``previous``)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        value = d.execute_script("return document.body.dataset.trial")
        return [value] if value is not None and value != previous else False  # "" (no case) is an answer too

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(ready)[0]


def keys(driver, text: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(text).perform()


def test_a_reader_reads_reloads_resumes_and_finishes_the_survey(study, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    layout = StudyLayout(study)
    token = layout.readers()["R1"]
    order = layout.orders(layout.readers(), layout.trials("single", layout.key()))["R1"]
    typed = ["s23", "r15", "s3C1B2", "r31"]  # C/B then a digit change confidence and BI-RADS
    expected = [("synthetic", 2, 3), ("real", 1, 5), ("synthetic", 1, 2), ("real", 3, 1)]
    with serving(study) as s:
        browser.get(f"{s.url}/r/{token}")
        trial = shown_trial(browser, None)
        assert trial == order[0]
        info = browser.find_element(By.ID, "view-info").text
        keys(browser, "++]]..")  # zoom in, widen the window, raise the level
        assert browser.find_element(By.ID, "view-info").text != info
        assert browser.find_element(By.ID, "submit").get_attribute("disabled")
        for n, text in enumerate(typed[:2]):
            keys(browser, text)
            assert browser.find_element(By.ID, "submit").get_attribute("disabled") is None
            keys(browser, Keys.ENTER)
            trial = shown_trial(browser, trial)
            assert trial == order[n + 1]
        assert "Case 3 of" in browser.find_element(By.ID, "count").text
        keys(browser, "s2")  # half an answer, then the reader closes the page
        browser.refresh()
        trial = shown_trial(browser, None)
        assert trial == order[2]  # resumes at the next unanswered case
        for n, text in enumerate(typed[2:]):
            keys(browser, text + Keys.ENTER)
            trial = shown_trial(browser, trial)
            assert trial == order[n + 3]
        for _ in range(4, len(order)):
            keys(browser, "r11" + Keys.ENTER)
            trial = shown_trial(browser, trial)
        assert trial == ""  # no case left: the survey
        WebDriverWait(browser, 10, poll_frequency=0.05).until(lambda d: d.find_element(By.ID, "survey").is_displayed())
        form = browser.find_element(By.ID, "survey-form")
        form.find_element(By.CSS_SELECTOR, "input[name='gender'][value='Female']").click()
        form.find_element(By.CSS_SELECTOR, "input[name='years_practice']").send_keys("12")
        form.find_element(By.CSS_SELECTOR, "input[name='setting'][value='University / academic hospital']").click()
        form.find_element(By.CSS_SELECTOR, "input[name='setting.other']").send_keys("screening programme")
        browser.find_element(By.ID, "survey-submit").click()
        WebDriverWait(browser, 10, poll_frequency=0.05).until(lambda d: d.find_element(By.ID, "done").is_displayed())
    with sqlite3.connect(layout.answers_db) as con:
        rows = con.execute(
            "SELECT trial_id, judged, confidence, birads, seconds FROM answers WHERE reader_id = 'R1' ORDER BY answered_at"
        ).fetchall()
        (survey,) = con.execute("SELECT answers FROM surveys WHERE reader_id = 'R1'").fetchone()
    assert [r[0] for r in rows] == order
    assert [r[1:4] for r in rows[:4]] == expected
    assert all(r[1:4] == ("real", 1, 1) for r in rows[4:])
    assert all(r[4] is not None and 0 < r[4] < 120 for r in rows)
    assert json.loads(survey) == {
        "gender": "Female",
        "years_practice": 12.0,
        "setting": ["University / academic hospital"],
        "setting.other": "screening programme",
    }

"""The review page in a real headless Chromium (Debian's, driven by selenium through its chromedriver),
against a real uvicorn on 127.0.0.1: log in, accept, reject, add, reject a key across the queue, undo;
then the events in SQLite, exactly, and the served tags after an adapt."""
import json
import shutil
import sqlite3

import pytest

from conftest import SETTINGS, write_jpeg
from multimodal_tags.feedback.adapt import AdaptConfig, adapt_model
from multimodal_tags.feedback.feedback_store import FeedbackStore
from multimodal_tags.service.app import create_app
from multimodal_tags.service.auth import KeyRing
from test_feedback import _truthful_feedback
from test_service import _config, _real_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="Chromium or its driver not installed (apt-get install chromium chromium-driver)")
ANN, WRITER = "ann-reviews-tags-0001", "writer-of-products-01"
EVIL = "<img src=x onerror=\"document.title='pwned'\"> Evil <b>mug</b>"


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str, timeout: float = 20):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    # the page draws its cards again after each action: an element read mid-redraw is asked for again
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: condition(d), message=what)


def _events(store) -> list[tuple]:
    db = sqlite3.connect(store)
    try:
        return db.execute("SELECT user, product_id, tag, action FROM feedback ORDER BY seq").fetchall()
    finally:
        db.close()


def _keys(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"ann review,read {ANN}\nshop write {WRITER}\n")
    return KeyRing.from_file(keys)


def _card(driver, product_id):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, f'.card[data-id="{product_id}"]')


def test_review_in_a_real_browser(shop, tmp_path, browser):
    from selenium.webdriver.common.by import By
    import httpx

    cfg = _config(shop, tmp_path, keys=_keys(tmp_path), index_refresh_s=0.0)
    with _real_server(create_app(cfg)) as (host, port):
        base = f"http://{host}:{port}"
        shop_client = httpx.Client(base_url=base, headers={"X-API-Key": WRITER}, timeout=60)
        # a title with markup, and a product whose uploaded photo is gone by the time it is reviewed
        assert shop_client.post("/tag", json={"id": "evil", "title": EVIL, "description": "<script>x</script>"}
                                ).status_code == 200
        photo = write_jpeg(tmp_path / "p.jpg", (10, 200, 30)).read_bytes()
        assert shop_client.post("/tag", data={"product": json.dumps({"id": "lost-photo", "title": "Green Mug"})},
                                files={"photo": ("p.jpg", photo, "image/jpeg")}).status_code == 200
        for upload in cfg.uploads.iterdir():
            upload.write_bytes(b"not a photo any more")

        browser.get(base + "/review")
        _wait(browser, lambda d: d.find_elements(By.ID, "key"), "the login form: the page needs a key")
        browser.find_element(By.ID, "key").send_keys(ANN)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card"), "the queue's cards")
        _wait(browser, lambda d: d.find_element(By.ID, "model").text not in ("", "-"), "the model id")
        assert browser.title == "Tag review"  # the markup in the title did not run

        _show(browser, base, "evil")
        evil = _card(browser, "evil")
        assert evil.find_element(By.CSS_SELECTOR, "h3").text == EVIL  # shown as text
        _show(browser, base, "lost-photo")
        _wait(browser, lambda d: _card(d, "lost-photo").find_elements(By.CSS_SELECTOR, ".nophoto"), "a placeholder")

        first = browser.find_elements(By.CSS_SELECTOR, ".card")[0]
        pid = first.get_attribute("data-id")
        tags = [t.get_attribute("data-tag") for t in first.find_elements(By.CSS_SELECTOR, ".tag:not(.suggested)")]
        assert len(tags) >= 2
        first.find_elements(By.CSS_SELECTOR, ".tag button.accept")[0].click()
        _wait(browser, lambda d: _card(d, pid).find_elements(By.CSS_SELECTOR, ".tag.accepted"), "accepted")
        _card(browser, pid).find_elements(By.CSS_SELECTOR, ".tag button.reject")[1].click()
        _wait(browser, lambda d: _card(d, pid).find_elements(By.CSS_SELECTOR, ".tag.rejected"), "rejected")
        add = _card(browser, pid).find_element(By.CSS_SELECTOR, ".add input")
        add.send_keys("fit:slim")
        _card(browser, pid).find_element(By.CSS_SELECTOR, ".add button").click()
        _wait(browser, lambda d: 'data-tag="fit:slim"' in _card(d, pid).get_attribute("innerHTML"), "added")

        key = tags[0].split(":")[0]
        count = httpx.post(base + "/review/reject-key", json={"key": key, "request_id": "peek"},
                           headers={"X-API-Key": ANN}).json()["count"]
        browser.find_element(By.TAG_NAME, "body").send_keys("b")  # the focused tag's key, across the queue
        alert = _wait(browser, lambda d: _alert(d), "the confirmation")
        assert f"Reject {count} \"{key}\" tags" in alert.text
        alert.accept()
        _wait(browser, lambda d: "Rejected" in d.find_element(By.ID, "status").text, "the bulk reply")
        bulk = _events(cfg.store_path)[3:]
        assert len(bulk) == count and {a for *_, a in bulk} == {"reject"}
        browser.find_element(By.TAG_NAME, "body").send_keys("u")  # undo: the bulk rejection is retracted
        _wait(browser, lambda d: "Undone" in d.find_element(By.ID, "status").text, "the undo")

    events = _events(cfg.store_path)
    assert events[:3] == [("ann", pid, tags[0], "accept"), ("ann", pid, tags[1], "reject"),
                          ("ann", pid, "fit:slim", "add")]
    assert sorted(events[3 + count:]) == sorted((u, p, t, "retract") for u, p, t, _ in bulk)
    assert len(events) == 3 + 2 * count

    # after an adapt on these judgements (promoted), the service tags with the child, and the served tags
    # of the reviewed product follow the judgements
    with pytest.raises(ValueError, match="none held back for the gate"):  # one judged product is too few
        adapt_model(shop["model"], cfg.store_path, tmp_path / "too-few", SETTINGS, AdaptConfig(epochs=1))
    with FeedbackStore(cfg.store_path) as fb:  # the other products judged by another reviewer
        others = [p for p in shop["val"] if p.id != pid]
        _truthful_feedback(fb, others, [fb.tags.get(p.id) for p in others])
    lineage = adapt_model(shop["model"], cfg.store_path, tmp_path / "adapted", SETTINGS,
                          AdaptConfig(epochs=1, promote=True, tolerance=1.0))
    assert lineage["promoted"]
    with _real_server(create_app(cfg)) as (host, port):
        c = httpx.Client(base_url=f"http://{host}:{port}", timeout=60)
        before = c.get(f"/products/{pid}/tags", headers={"X-API-Key": ANN}).json()
        product = next(p for p in shop["val"] if p.id == pid)
        c.post("/tag", json={"id": pid, "title": product.title, "description": product.description,
                             "image": product.image}, headers={"X-API-Key": WRITER}).raise_for_status()
        after = c.get(f"/products/{pid}/tags", headers={"X-API-Key": ANN}).json()
    assert after["model_id"] != before["model_id"]
    assert tags[1] not in after["tags"] and "fit:slim" in after["tags"] and tags[0] in after["tags"]


def _alert(driver):
    from selenium.common.exceptions import NoAlertPresentException
    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


def _show(driver, base, product_id):
    """Page through the queue until the product's card is on the page."""
    from selenium.webdriver.common.by import By
    while not driver.find_elements(By.CSS_SELECTOR, f'.card[data-id="{product_id}"]'):
        more, shown = driver.find_element(By.ID, "more"), len(driver.find_elements(By.CSS_SELECTOR, ".card"))
        assert more.is_displayed(), f"{product_id} is not in the queue"
        more.click()
        _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) > shown, "more cards")

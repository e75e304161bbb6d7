"""Screenshots of the web page for the README: ask (with the source view open), search, status, phone.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/screenshots.py            # writes docs/web-*.png

Builds a throwaway index of the sample knowledge base (extractive answers, no LLM), serves it on a free
loopback port and drives Debian's headless chromium (apt-get install chromium chromium-driver) with selenium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kb import KnowledgeBase
from kb.samples import sample_kb_path
from kb.settings import ApiKey, Role

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.test_api import served_app  # the one uvicorn-in-a-thread helper the tests use

REPO = Path(__file__).resolve().parent.parent
ADMIN = "screenshot-admin-key-0123456789"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium(profile: str, width: int, height: int) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
        f"--window-size={width},{height}", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def shoot(driver: WebDriver, base: str, out: Path) -> list[Path]:
    wait = WebDriverWait(driver, 60)
    driver.get(f"{base}/#ask")
    key = wait.until(ec.visibility_of_element_located((By.ID, "key-input")))
    key.send_keys(ADMIN, Keys.ENTER)
    wait.until(ec.visibility_of_element_located((By.ID, "key-set")))
    question = driver.find_element(By.ID, "question")
    question.send_keys("How do I rotate an API key?", Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "turn-1").get_attribute("data-state") != "streaming")
    driver.find_element(By.CSS_SELECTOR, "#turn-1 a.marker").click()
    wait.until(lambda d: d.find_element(By.ID, "source-view").get_attribute("data-state") == "ready")
    written = [save(driver, out / "web-ask.png")]

    driver.find_element(By.ID, "sv-close").click()
    driver.get(f"{base}/#search")
    choice = Select(wait.until(ec.visibility_of_element_located((By.ID, "filter-product"))))
    choice.select_by_visible_text(next(o.text for o in choice.options if o.text.startswith("api (")))
    driver.find_element(By.ID, "query").send_keys("rotate key", Keys.ENTER)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit"))
    written.append(save(driver, out / "web-search.png"))

    size = driver.get_window_size()
    driver.set_window_size(size["width"], size["height"] + 320)  # the report ends below the status
    driver.get(f"{base}/#status")
    wait.until(ec.visibility_of_element_located((By.ID, "reindex-button"))).click()
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#reindex-report .summary")))
    wait.until(lambda d: d.find_element(By.ID, "status-list").get_attribute("data-state") == "ready")
    written.append(save(driver, out / "web-status.png"))

    driver.set_window_size(390, 844)  # a phone: the source view takes the screen
    driver.get(f"{base}/#ask")
    driver.refresh()
    wait.until(ec.visibility_of_element_located((By.ID, "question"))).send_keys(
        "What does error E4012 mean?", Keys.ENTER
    )
    wait.until(lambda d: d.find_element(By.ID, "turn-1").get_attribute("data-state") != "streaming")
    written.append(save(driver, out / "web-phone.png"))
    driver.set_window_size(size["width"], size["height"])
    return written


def save(driver: WebDriver, path: Path) -> Path:
    driver.execute_script("window.scrollTo(0, 0); document.activeElement && document.activeElement.blur()")
    driver.save_screenshot(str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for the PNGs (default: docs/)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        print("needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kb-screenshots-") as tmp:
        docs = Path(tmp) / "docs"
        shutil.copytree(sample_kb_path(), docs)
        keys = [ApiKey(key=ADMIN, role=Role.ADMIN, name="ops", groups=["*"])]
        with KnowledgeBase.open(Path(tmp) / "index", llm_backend="extractive", api_keys=keys) as kb:
            kb.ingest(docs)
            with served_app(kb, docs) as base:
                driver = chromium(str(Path(tmp) / "profile"), args.width, args.height)
                try:
                    for path in shoot(driver, base, args.out):
                        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
                finally:
                    driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Screenshot of the expert's labeling screen, taken from a running Label Studio in headless Chromium.

Not part of the pipeline: it refreshes docs/labeling-screen.png for docs/experts.md.
Needs Debian's chromium + chromium-driver and `pip install selenium` (any venv).
Usage: LABEL_STUDIO_USERNAME=... LABEL_STUDIO_PASSWORD=... python docs/screenshot_labeling.py URL PROJECT_ID [OUT.png]
"""

from __future__ import annotations

import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main() -> int:
    url, project_id = sys.argv[1].rstrip("/"), sys.argv[2]
    out = sys.argv[3] if len(sys.argv) > 3 else "docs/labeling-screen.png"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    flags = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip
    for flag in (*flags, "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"{url}/user/login/")
        driver.find_element(By.NAME, "email").send_keys(os.environ["LABEL_STUDIO_USERNAME"])
        driver.find_element(By.NAME, "password").send_keys(os.environ["LABEL_STUDIO_PASSWORD"])
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        time.sleep(2)
        driver.get(f"{url}/projects/{project_id}/data?labeling=1")
        time.sleep(8)  # the labeling app loads its bundle, then the first task and its photo
        driver.save_screenshot(out)
    finally:
        driver.quit()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The live page in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
through Selenium): it loads, shows a result that changes and a camera frame with boxes, fits a
phone's width, and logs no console error."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.httpd import HttpDaemon
from devkit.paths import MODELS
from devkit.processes import require_tool, wait_until

pytestmark = pytest.mark.slow

PHONE = (412, 915)  # CSS pixels of a common phone


def canvas_video(path: Path, count: int = 40, fps: float = 5.0) -> Path:
    """Frames of the bundled detector's held-out canvases (digits on 64x64), scaled to 256x256."""
    import cv2

    with np.load(MODELS / "detect_heldout.npz") as data:
        canvases = data["images"][:count]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (256, 256))
    for canvas in canvases:
        big = cv2.resize(canvas, (256, 256), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def page_config(tmp_path: Path) -> Path:
    video = canvas_video(tmp_path / "canvas.avi")
    labels = MODELS / "digits_labels.txt"
    config = tmp_path / "page.toml"
    config.write_text(
        f"""
[device]
id = "cam-01"
state_dir = "{tmp_path / "state"}"
[mqtt]
enabled = false
[health]
interval_s = 1.0
[sources.camera]
type = "camera"
uri = "{video}"
realtime = true
loop = true
[[pipelines]]
name = "digits"
trigger = "camera"
[[pipelines.models]]
path = "{MODELS}/detect_int8.tflite"
inputs = [{{ kind = "image", source = "camera", resize = "stretch", color = "gray", std = 255.0 }}]
postprocess = {{ type = "detection", format = "yolo", min_score = 0.4, labels = "{labels}" }}
"""
    )
    return config


def chrome(width: int, height: int) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary = require_tool("chromium", "chromium")
    driver_path = require_tool("chromedriver", "chromium-driver")
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_page_shows_live_results_a_frame_and_no_console_error(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with HttpDaemon(page_config(tmp_path)) as d:
        d.wait_results(3)
        driver = chrome(*PHONE)
        try:
            driver.set_page_load_timeout(30)
            driver.get(d.base + "/")
            assert driver.title == "edge-runtime"

            def top() -> Any:
                found = driver.find_elements(By.CSS_SELECTOR, '[data-pipeline="digits"] .top')
                return found[0] if found and found[0].get_attribute("data-seq") else None

            assert wait_until(lambda: top() is not None, 20), driver.page_source[:2000]
            first_seq, first_text = int(top().get_attribute("data-seq")), top().text
            assert "detection" in first_text, first_text
            assert wait_until(lambda: int(top().get_attribute("data-seq")) > first_seq + 2, 20)
            assert top().text != first_text

            view = "figure[data-source=camera] img"
            script = f"const i = document.querySelector('{view}'); return i && i.naturalWidth;"
            assert wait_until(lambda: driver.execute_script(script) == 256, 20), driver.page_source[:2000]
            assert wait_until(lambda: "results/s" in driver.find_element(By.CSS_SELECTOR, ".rate").text, 10)
            assert driver.find_element(By.ID, "device").text == "cam-01"
            assert "ready" in driver.find_element(By.ID, "state").text
            health = driver.find_element(By.ID, "health").text
            assert "rss" in health and "MB" in health
            assert wait_until(lambda: "source.up" in driver.find_element(By.ID, "events").text, 10)
            fits = "return document.documentElement.scrollWidth <= window.innerWidth"
            assert driver.execute_script(fits), "the page is wider than a phone"
            time.sleep(1.0)
            shot = os.environ.get("EDGE_RUNTIME_PAGE_SCREENSHOT")  # docs/http-page.png is made this way
            driver.save_screenshot(shot or str(tmp_path / "page.png"))
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == [], errors
        finally:
            driver.quit()
        d.wait_results(d.count() + 3)
        assert d.stop() == 0

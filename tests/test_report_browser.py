"""The report pages as a browser shows them: headless Chromium renders them offline, the DOM holds the
tables and <img> elements whose data: URIs decode as PNG, and a screenshot is written next to the page.

Chromium comes from Debian (``apt-get install chromium``). Missing, the tests fail under CI and skip
on a developer machine.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.report import write_comparison, write_report
from test_report import PNG_MAGIC, make_dataset, make_run

WINDOW = (1280, 2000)


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if exe := shutil.which(name):
            return exe
    msg = "chromium not found: apt-get install chromium"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _chromium(exe: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless, offline Chromium on ``page`` (no network services, a throwaway profile)."""
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


class _Dom(HTMLParser):
    """Counts what the rendered DOM holds: image sources, tables, section ids."""

    def __init__(self) -> None:
        super().__init__()
        self.img_src: list[str] = []
        self.tables = 0
        self.sections: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.img_src.append(a.get("src") or "")
        elif tag == "table":
            self.tables += 1
        elif tag == "section":
            self.sections.append(a.get("id") or "")


def _check_rendered(exe: str, page: Path, tmp_path: Path) -> tuple[_Dom, Image.Image]:
    """Screenshot (next to the page) and rendered DOM in one Chromium run; checks every image is a PNG."""
    shot = page.parent / "screenshot.png"
    res = _chromium(exe, page, tmp_path / "profile", f"--screenshot={shot}", "--dump-dom",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}")
    dom = _Dom()
    dom.feed(res.stdout)
    assert dom.img_src, "no <img> in the rendered page"
    for src in dom.img_src:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_MAGIC)
        assert Image.open(io.BytesIO(png)).size[0] > 100
    img = Image.open(shot).convert("RGB")
    assert img.size == WINDOW
    return dom, img


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("report_browser_data"))


def test_run_report_renders_in_chromium(chromium, tmp_path, data):
    run = make_run(tmp_path, data=data)
    page = write_report(run, n_cases=1, n_slices=3)
    dom, shot = _check_rendered(chromium, page, tmp_path)
    assert dom.sections == ["summary", "metrics", "curves", "cases", "overlays", "split", "config"]
    assert dom.tables >= 4  # metrics, per case, split, configuration
    pngs = {p.name for p in (run / "report").glob("*.png")} - {"screenshot.png"}
    assert len(dom.img_src) == len(pngs)
    pixels = np.asarray(shot)
    assert tuple(pixels[5, 5]) == (0x14, 0x20, 0x2E)  # the header is drawn: the page rendered with its CSS
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # plots, not an empty page


def test_comparison_renders_in_chromium(chromium, tmp_path, data):
    runs = [make_run(tmp_path, f"{m}_k{k}", data=data, method=m, shots=k, worse=2 * (2 - k) + (m == "decoder"))
            for m in ("lora", "decoder") for k in (1, 2)]
    page = write_comparison(runs, tmp_path / "comparison")
    dom, _ = _check_rendered(chromium, page, tmp_path)
    assert "runs" in dom.sections and "matrix" in dom.sections
    assert dom.tables >= 3 and len(dom.img_src) == 3

"""The studio page in a real browser: Playwright drives the system's headless Chromium (no browser
download) against a studio served by uvicorn on a free local port, with the real LiteMedSAM.

Script: open a case, draw a box on the axial view, see the mask, add a negative click, paint a brush
stroke of another class, save; the label
file on disk equals the overlay the page shows, and the page logs no console error. The screenshot goes
to the test's folder, and to ``$MEDADAPT_SCREENSHOTS`` when set (how docs/images/studio.png is made).
A second script, with adaptation in the loop and one finished adapter, compares the case under the
zero-shot model with the adapter in use (the compare picker and its key).

Chromium comes from Debian (``make browser``); Playwright for Python from the ``dev`` extra. Missing,
the test fails under CI and skips on a developer machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medadapt.data.synthetic import make_synthetic_dataset
from medadapt.infer.factory import build_predictor
from medadapt.studio.app import create_app
from medadapt.studio.cases import CaseFolder
from medadapt.studio.server import build_studio
from medadapt.studio.state import Studio
from test_studio_adaptation import small_dataset

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def _missing(msg: str):
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = next((p for p in CHROMIUM if Path(p).is_file()), None) or shutil.which("chromium")
    if exe is None:
        _missing("chromium not found: apt-get install chromium (make browser)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed: pip install -c constraints.txt playwright (the dev extra)")
    return exe


@pytest.fixture()
def served(tmp_path):
    """A studio over two synthetic cases (synth_001 unlabelled) on a free local port; yields (url, root, truth)."""
    root = make_synthetic_dataset(tmp_path / "data", n_cases=2)
    truth = np.asarray(nib.load(root / "labelsTr/synth_001.nii.gz").dataobj)
    (root / "labelsTr/synth_001.nii.gz").unlink()
    predictor = build_predictor(None, use_cache=True)
    for url in _serve(create_app(Studio(CaseFolder(root), lambda: predictor))):
        yield url, root, truth


def _serve(app):
    """Serve ``app`` on a free local port; yields its URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the studio did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)


def _screen(page, i: float, j: float, k: int) -> tuple[float, float]:
    """Page coordinates of voxel (i, j, k) on the axial tile (NiiVue's own mapping, canvas pixels / dpr)."""
    pos = page.evaluate(f"""(() => {{
        const nv = studio.nv;
        const hit = nv.frac2canvasPosWithTile(nv.vox2frac([{i}, {j}, {k}]), 0);
        return hit && [hit.pos[0] / (nv.uiData.dpr || 1), hit.pos[1] / (nv.uiData.dpr || 1)];
    }})()""")
    assert pos is not None, f"voxel {(i, j, k)} is not on screen"
    box = page.locator("#gl").bounding_box()
    return box["x"] + pos[0], box["y"] + pos[1]


def _show_axial_slice(page, k: int) -> None:
    """The axial view alone, on slice ``k``."""
    page.select_option("#layout", "plane")
    middle = page.evaluate("Array.from(studio.nv.frac2vox(studio.nv.scene.crosshairPos))")[2]
    page.evaluate(f"studio.nv.moveCrosshairInVox(0, 0, {k - middle})")
    page.wait_for_timeout(200)


def _drag_box(page, corner0: tuple[float, float], corner1: tuple[float, float], k: int) -> None:
    """Draw a box on the axial slice ``k`` from voxel ``corner0`` to ``corner1`` (in-plane i, j)."""
    (xa, ya), (xb, yb) = _screen(page, *corner0, k), _screen(page, *corner1, k)
    page.mouse.move(xa, ya)
    page.mouse.down()
    page.mouse.move(xb, yb, steps=8)
    page.mouse.up()


def _wait_for_change(page, version: int) -> dict:
    page.wait_for_function(f"studio.mask && studio.mask.version > {version} && !studio.busy", timeout=120_000)
    return page.evaluate("studio.mask")


def _largest_slice_box(target: np.ndarray) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """The axial slice where ``target`` is largest and its in-plane bounding box corners there."""
    k = int(np.bincount(np.argwhere(target)[:, 2]).argmax())
    on_slice = np.argwhere(target[..., k])
    return k, tuple(on_slice.min(0)), tuple(on_slice.max(0))


@contextlib.contextmanager
def _studio_page(chromium: str, url: str, problems: list[str]):
    """A headless Chromium page on the studio at ``url``, ready; console errors go to ``problems``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(url)
            page.wait_for_function("window.studio && studio.ready", timeout=60_000)
            yield page
        finally:
            browser.close()


def test_box_click_save_in_chromium(chromium, served, tmp_path):
    url, root, truth = served
    target = truth == 1
    k, (i0, j0), (i1, j1) = _largest_slice_box(target)
    problems: list[str] = []
    with _studio_page(chromium, url, problems) as page:
        assert page.locator("#case-list li").count() == 2
        # no adapter yet: the next case is the first unlabelled one; the button opens it
        assert page.locator("#suggestion").text_content() == "synth_001 (list order)"
        page.click("#next")
        page.wait_for_function("studio.mask && !studio.busy", timeout=120_000)
        version = page.evaluate("studio.mask.version")
        assert page.evaluate("studio.mask.voxels") == 0
        _show_axial_slice(page, k)
        # the screen mapping used below lands on the intended voxel
        x, y = _screen(page, i0, j0, k)
        gl = page.locator("#gl").bounding_box()
        vox = page.evaluate(f"Array.from(studio.nv.frac2vox(studio.nv.canvasPos2frac([{x - gl['x']} * (studio.nv.uiData.dpr || 1), {y - gl['y']} * (studio.nv.uiData.dpr || 1)])))")
        assert vox == [int(i0), int(j0), k]

        _drag_box(page, (i0 - 1, j0 - 1), (i1 + 1, j1 + 1), k)  # a box around the structure
        after_box = _wait_for_change(page, version)
        assert after_box["voxels"] > 0, page.locator("#status").text_content()
        shown = np.asarray(page.evaluate("Array.from(studio.nv.volumes[1].img)"))
        assert int((shown > 0).sum()) == after_box["voxels"]  # the overlay shows the mask
        got = shown.reshape(truth.shape, order="F")[..., k] == 1
        assert 2 * (got & target[..., k]).sum() / (got.sum() + target[..., k].sum()) > 0.6
        page.screenshot(path=str(tmp_path / "studio_box.png"))

        # a negative click in the middle of the mask
        page.check("input[name=tool][value=negative]")
        ci, cj = np.argwhere(got).mean(0)
        page.mouse.click(*_screen(page, round(ci), round(cj), k))
        after_click = _wait_for_change(page, after_box["version"])
        assert after_click["voxels"] != after_box["voxels"]
        assert page.evaluate("studio.info.objects")[0]["clicks"] == 1
        # a brush stroke of class 2 beside the structure (painted over the model's masks)
        page.select_option("#class", "2")
        page.check("input[name=tool][value=brush]")
        (xa, ya), (xb, yb) = _screen(page, i1 + 3, j0, k), _screen(page, i1 + 3, j1, k)
        page.mouse.move(xa, ya)
        page.mouse.down()
        page.mouse.move(xb, yb, steps=10)
        page.mouse.up()
        after_brush = _wait_for_change(page, after_click["version"])
        painted = np.asarray(page.evaluate("Array.from(studio.nv.volumes[1].img)")).reshape(truth.shape, order="F")
        assert (painted[..., k] == 2).sum() >= j1 - j0 and (painted == 2).sum() == (painted[..., k] == 2).sum()
        assert after_brush["voxels"] > after_click["voxels"]
        page.check("input[name=tool][value=box]")
        page.select_option("#layout", "multi")
        page.wait_for_timeout(300)
        page.screenshot(path=str(tmp_path / "studio.png"))
        shown = np.asarray(page.evaluate("Array.from(studio.nv.volumes[1].img)"))

        page.click("#save")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('saved')", timeout=60_000)
        assert page.locator("#case-list li[data-key=synth_001] .badge").text_content().startswith("labelled")
        page.wait_for_function("document.getElementById('suggestion').textContent === 'every case is labelled'",
                               timeout=30_000)
    saved = nib.load(root / "labelsTr/synth_001.nii.gz")
    np.testing.assert_array_equal(np.asarray(saved.dataobj).ravel(order="F"), shown)  # the file is what the page showed
    np.testing.assert_allclose(saved.affine, nib.load(root / "imagesTr/synth_001.nii.gz").affine)
    assert not problems, problems
    if out := os.environ.get("MEDADAPT_SCREENSHOTS"):
        Path(out).mkdir(parents=True, exist_ok=True)
        for name in ("studio.png", "studio_box.png"):
            shutil.copy(tmp_path / name, Path(out) / name)


@pytest.fixture()
def served_with_adapter(tmp_path):
    """A studio with adaptation in the loop over three small synthetic cases (synth_002 unlabelled), whose
    first adapter (2 steps on the two labelled cases) is in use; yields (url, studio, loop, truth)."""
    root = small_dataset(tmp_path / "data")
    truth = np.asarray(nib.load(root / "labelsTr/synth_002.nii.gz").dataobj)
    (root / "labelsTr/synth_002.nii.gz").unlink()
    studio, loop = build_studio(root, fit_steps=2, echo=lambda _: None)
    loop.request()
    assert loop.wait(600) and loop.last and loop.last.get("error") is None, loop.last
    assert studio.adapter == "studio adapter 001"
    for url in _serve(create_app(studio, loop=loop)):
        yield url, studio, loop, truth


def test_compare_view_in_chromium(chromium, served_with_adapter, tmp_path):
    """The compare picker shows the zero-shot model's answer to the case's box in place of the masks (what
    the compare endpoint gives), with its agreement; off (or key C) shows the case's masks again."""
    url, studio, loop, truth = served_with_adapter
    k, (i0, j0), (i1, j1) = _largest_slice_box(truth == 1)
    problems: list[str] = []
    with _studio_page(chromium, url, problems) as page:
        assert "studio adapter 001" in page.locator("#adapter").text_content()
        assert not page.locator("#compare-pick").is_hidden()
        options = page.eval_on_selector_all("#compare option", "os => os.map(o => o.value)")
        assert options == ["", "zero-shot", "001"]
        page.click("#case-list li[data-key=synth_002]")
        page.wait_for_function("studio.key === 'synth_002' && studio.mask && !studio.busy", timeout=120_000)
        _show_axial_slice(page, k)
        version = page.evaluate("studio.mask.version")
        _drag_box(page, (i0 - 1, j0 - 1), (i1 + 1, j1 + 1), k)
        after_box = _wait_for_change(page, version)
        assert after_box["voxels"] > 0
        masks = np.asarray(page.evaluate("Array.from(studio.nv.volumes[1].img)"))

        page.select_option("#compare", "zero-shot")
        page.wait_for_function("studio.compare && studio.compare.adapter === 'zero-shot' && !studio.busy",
                               timeout=120_000)
        shown = np.asarray(page.evaluate("Array.from(studio.nv.volumes[1].img)"))
        expected, _ = studio.compare("synth_002", loop.predictor_for(None))
        np.testing.assert_array_equal(shown.reshape(truth.shape, order="F"), expected)
        both = np.count_nonzero((expected == masks.reshape(truth.shape, order="F")) & (expected > 0))
        dice = 2 * both / (np.count_nonzero(expected) + np.count_nonzero(masks))
        assert page.evaluate("studio.compare.dice") == pytest.approx(dice, abs=1e-4)
        assert f"DSC {dice:.3f}" in page.locator("#status").text_content()
        page.screenshot(path=str(tmp_path / "studio_compare.png"))

        page.evaluate("window.maskBefore = studio.mask")
        page.select_option("#compare", "")  # off: the case's masks again, reloaded
        page.wait_for_function("studio.compare === null && studio.mask !== window.maskBefore && !studio.busy",
                               timeout=60_000)
        np.testing.assert_array_equal(np.asarray(page.evaluate("Array.from(studio.nv.volumes[1].img)")), masks)
        page.keyboard.press("c")  # key C: back to the last compared model
        page.wait_for_function("studio.compare && studio.compare.adapter === 'zero-shot' && !studio.busy",
                               timeout=120_000)
        np.testing.assert_array_equal(np.asarray(page.evaluate("Array.from(studio.nv.volumes[1].img)")), shown)
    assert not problems, problems
    if out := os.environ.get("MEDADAPT_SCREENSHOTS"):
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "studio_compare.png", Path(out) / "studio_compare.png")

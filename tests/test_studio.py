"""The studio's HTTP API: case list, image / label files, box + clicks + undo / redo with the real
LiteMedSAM, saving labels with the image's geometry, and the refusals (path traversal, links out of the
folder, body size, token, host, origin, bad prompts), on small synthetic MSD-style cases."""

from __future__ import annotations

import gzip
import hashlib
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from medadapt.data.synthetic import make_synthetic_dataset
from medadapt.infer.predictor import SamPredictor
from medadapt.models.registry import build_model, get_sam_spec
from medadapt.studio.app import create_app
from medadapt.studio.cases import CaseFolder
from medadapt.studio.state import Studio
from test_io_images import _dicom

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def predictor() -> SamPredictor:
    return SamPredictor(build_model("litemedsam"), get_sam_spec("litemedsam"), batch_size=4, use_cache=True)


def make_folder(root: Path, n: int = 3) -> tuple[Path, dict[str, np.ndarray]]:
    """An MSD folder of ``n`` synthetic cases; only synth_000 keeps its label. Returns the removed labels too."""
    make_synthetic_dataset(root, n_cases=n)
    truth = {}
    for i in range(1, n):
        path = root / "labelsTr" / f"synth_{i:03d}.nii.gz"
        truth[f"synth_{i:03d}"] = np.asarray(nib.load(path).dataobj)
        path.unlink()
    return root, truth


@pytest.fixture()
def folder(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    return make_folder(tmp_path / "data")


def client_for(root: Path, predictor, **kwargs) -> TestClient:
    base_url = kwargs.pop("base_url", BASE)
    return TestClient(create_app(Studio(CaseFolder(root), lambda: predictor), **kwargs), base_url=base_url)


def box_of(mask: np.ndarray) -> tuple[list[int], list[int]]:
    """Voxel corners (i, j, k) of a mask's bounding box on its middle axial slice (k)."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    k = int((lo[2] + hi[2]) // 2)
    return [int(lo[0]), int(lo[1]), k], [int(hi[0]), int(hi[1]), k]


def read_mask(response) -> nib.Nifti1Image:
    assert response.status_code == 200, response.text
    return nib.Nifti1Image.from_bytes(gzip.decompress(response.content))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_case_list_files_and_statuses(folder, predictor):
    root, _ = folder
    c = client_for(root, predictor)
    about = c.get("/api/studio").json()
    assert about["classes"] == {"1": "bright_structure", "2": "dark_structure"} and about["cases"] == 3
    cases = {x["key"]: x["status"] for x in c.get("/api/cases").json()}
    assert cases == {"synth_000": "labelled", "synth_001": "untouched", "synth_002": "untouched"}
    image = c.get("/api/cases/synth_001/image")
    assert image.status_code == 200 and image.content == (root / "imagesTr/synth_001.nii.gz").read_bytes()
    assert c.get("/api/cases/synth_000/label").content == (root / "labelsTr/synth_000.nii.gz").read_bytes()
    assert c.get("/api/cases/synth_001/label").status_code == 404
    info = c.get("/api/cases/synth_001").json()
    assert info["shape"] == [48, 48, 32] and info["slice_axis"] == 2 and info["plane"] == "axial"
    assert info["objects"] == [] and not info["can_undo"]
    # a labelled case opens with its saved label as the mask
    shown = read_mask(c.get("/api/cases/synth_000/mask"))
    saved = nib.load(root / "labelsTr/synth_000.nii.gz")
    np.testing.assert_array_equal(np.asarray(shown.dataobj), np.asarray(saved.dataobj))
    np.testing.assert_allclose(shown.affine, saved.affine)
    assert c.get("/").status_code == 200 and "studio.js" in c.get("/").text
    assert c.get("/static/vendor/niivue/niivue.js").status_code == 200
    assert c.get("/static/vendor/niivue/LICENSE").status_code == 200


def test_box_clicks_undo_redo_and_save(folder, predictor):
    root, truth = folder
    c = client_for(root, predictor)
    image_before = sha(root / "imagesTr/synth_001.nii.gz")
    target = truth["synth_001"] == 1
    v0, v1 = box_of(target)
    r = c.post("/api/cases/synth_001/box", json={"corner0": v0, "corner1": v1, "space": "voxel", "value": 1, "depth": 1})
    assert r.status_code == 200, r.text
    state = r.json()
    assert state["objects"] == [{"object": 1, "value": 1, "clicks": 0}] and state["can_undo"]
    assert sorted(state["decoded_slices"]) == [v0[2] - 1, v0[2], v0[2] + 1]
    after_box = np.asarray(read_mask(c.get("/api/cases/synth_001/mask")).dataobj)
    assert set(np.unique(after_box)) == {0, 1}
    k = v0[2]
    got, want = after_box[..., k] == 1, target[..., k]
    assert 2 * (got & want).sum() / (got.sum() + want.sum()) > 0.6  # the box found the structure
    assert not after_box[..., : k - 1].any() and not after_box[..., k + 2 :].any()  # only the box's slices
    assert {x["key"]: x["status"] for x in c.get("/api/cases").json()}["synth_001"] == "predicted"

    # a negative click in the middle of the mask changes it; undo gives the box's mask back exactly
    centre = np.argwhere(after_box[..., k] == 1).mean(0).round().astype(int).tolist()
    r = c.post("/api/cases/synth_001/click", json={"point": [*centre, k], "space": "voxel", "positive": False, "value": 1})
    assert r.status_code == 200, r.text
    assert r.json()["objects"][0]["clicks"] == 1 and r.json()["decoded_slices"][0] == k
    after_click = np.asarray(read_mask(c.get("/api/cases/synth_001/mask")).dataobj)
    assert not np.array_equal(after_click, after_box)
    assert c.post("/api/cases/synth_001/undo").json()["can_redo"]
    np.testing.assert_array_equal(np.asarray(read_mask(c.get("/api/cases/synth_001/mask")).dataobj), after_box)
    assert c.post("/api/cases/synth_001/redo").json()["objects"][0]["clicks"] == 1
    np.testing.assert_array_equal(np.asarray(read_mask(c.get("/api/cases/synth_001/mask")).dataobj), after_click)

    r = c.put("/api/cases/synth_001/label")
    assert r.status_code == 200, r.text
    assert r.json()["saved"] == "labelsTr/synth_001.nii.gz" and r.json()["voxels"] == int((after_click > 0).sum())
    saved = nib.load(root / "labelsTr/synth_001.nii.gz")
    image = nib.load(root / "imagesTr/synth_001.nii.gz")
    np.testing.assert_array_equal(np.asarray(saved.dataobj), after_click)
    np.testing.assert_allclose(saved.affine, image.affine)
    assert sha(root / "imagesTr/synth_001.nii.gz") == image_before  # the image is never touched
    assert {x["key"]: x["status"] for x in c.get("/api/cases").json()}["synth_001"] == "labelled"
    assert not list((root / "labelsTr").glob(".*"))  # no temporary file left
    # after the save the case shows the saved label; undo has nothing left
    np.testing.assert_array_equal(np.asarray(read_mask(c.get("/api/cases/synth_001/mask")).dataobj), after_click)
    assert c.post("/api/cases/synth_001/undo").status_code == 400


def test_world_mm_points_equal_voxel_points(folder, predictor):
    root, truth = folder
    c = client_for(root, predictor)
    v0, v1 = box_of(truth["synth_002"] == 2)
    affine = nib.load(root / "imagesTr/synth_002.nii.gz").affine
    mm = [(affine @ [*v, 1])[:3].tolist() for v in (v0, v1)]
    assert c.post("/api/cases/synth_002/box", json={"corner0": mm[0], "corner1": mm[1], "value": 2}).status_code == 200
    by_mm = np.asarray(read_mask(c.get("/api/cases/synth_002/mask")).dataobj)
    assert c.post("/api/cases/synth_002/undo").status_code == 200
    c.post("/api/cases/synth_002/box", json={"corner0": v0, "corner1": v1, "space": "voxel", "value": 2})
    np.testing.assert_array_equal(np.asarray(read_mask(c.get("/api/cases/synth_002/mask")).dataobj), by_mm)
    assert set(np.unique(by_mm)) == {0, 2}


def test_bad_prompts_are_refused_with_a_message(folder, predictor):
    root, _ = folder
    c = client_for(root, predictor)
    url = "/api/cases/synth_001"
    r = c.post(f"{url}/click", json={"point": [20, 20, 10], "space": "voxel", "value": 1})
    assert r.status_code == 400 and "draw a box" in r.json()["error"]
    r = c.post(f"{url}/box", json={"corner0": [10, 10, 5], "corner1": [60, 20, 5], "space": "voxel"})
    assert r.status_code == 400 and "outside the image" in r.json()["error"]
    r = c.post(f"{url}/box", json={"corner0": [10, 10, 5], "corner1": [10, 20, 9], "space": "voxel"})
    assert r.status_code == 400 and "axial view" in r.json()["error"]
    r = c.post(f"{url}/box", json={"corner0": [10, 10, 5], "corner1": [20, 20, 5], "space": "voxel", "value": 7})
    assert r.status_code == 400 and "class 7" in r.json()["error"]
    assert c.post(f"{url}/box", json={"corner0": [10, 10], "corner1": [20, 20, 5]}).status_code == 422
    assert c.post(f"{url}/click", content=b'{"point": [NaN, 1, 2]}', headers={"content-type": "application/json"}).status_code in (400, 422)
    assert c.post(f"{url}/undo").status_code == 400
    assert c.put(f"{url}/label", content=b"not a nifti").status_code == 400
    wrong = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    r = c.put(f"{url}/label", content=wrong.to_bytes())
    assert r.status_code == 400 and "shape" in r.json()["error"]
    assert not (root / "labelsTr/synth_001.nii.gz").exists()  # nothing written by a refused save


def test_label_bytes_from_the_page_are_saved_with_the_image_geometry(folder, predictor):
    root, truth = folder
    c = client_for(root, predictor)
    label = truth["synth_002"].astype(np.uint8)
    body = gzip.compress(nib.Nifti1Image(label, np.eye(4)).to_bytes())  # the page's header is not trusted
    r = c.put("/api/cases/synth_002/label", content=body, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    saved = nib.load(root / "labelsTr/synth_002.nii.gz")
    np.testing.assert_array_equal(np.asarray(saved.dataobj), label)
    np.testing.assert_allclose(saved.affine, nib.load(root / "imagesTr/synth_002.nii.gz").affine)


def test_path_traversal_and_links_out_of_the_folder_are_refused(tmp_path, predictor):
    root, _ = make_folder(tmp_path / "data")
    secret = tmp_path / "secret.nii.gz"
    secret.write_bytes((root / "imagesTr/synth_001.nii.gz").read_bytes())
    (root / "imagesTr/linked.nii.gz").symlink_to(secret)  # a link out of the folder is not a case
    c = client_for(root, predictor)
    assert "linked" not in {x["key"] for x in c.get("/api/cases").json()}
    for url in ("/api/cases/linked/image", "/api/cases/..%2F..%2Fsecret/image", "/api/cases/%2e%2e/image",
                "/api/cases/../../secret.nii.gz", "/static/../../secret.nii.gz", "/static/%2e%2e/%2e%2e/secret.nii.gz",
                "/static/..%2F..%2Fcases.py", "/api/cases/synth_001/image/../../../../secret.nii.gz"):
        r = c.get(url)
        assert r.status_code == 404, (url, r.status_code)
        assert r.content != secret.read_bytes()
    # a label folder that is a link out of the data folder: nothing is written there
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "labelsTr").rename(tmp_path / "old_labels")
    (root / "labelsTr").symlink_to(outside)
    r = c.put("/api/cases/synth_001/label", content=nib.Nifti1Image(np.zeros((48, 48, 32), np.uint8), np.eye(4)).to_bytes())
    assert r.status_code == 400 and "out of the studio folder" in r.json()["error"]
    assert not list(outside.iterdir())


def test_request_size_limit(folder, predictor):
    root, _ = folder
    c = client_for(root, predictor, max_body=1000)
    r = c.put("/api/cases/synth_001/label", content=b"x" * 2000)
    assert r.status_code == 413
    r = c.put("/api/cases/synth_001/label", content=(b"x" * 100 for _ in range(20)))  # chunked, no Content-Length
    assert r.status_code == 413
    assert not (root / "labelsTr/synth_001.nii.gz").exists()
    assert c.post("/api/cases/synth_001/undo").status_code == 400  # small bodies pass


def test_token_host_and_origin_checks(folder, predictor):
    root, _ = folder
    remote = client_for(root, predictor, token="s3cret-token", local_only=False, base_url="http://10.1.2.3:8765")
    assert remote.get("/api/cases").status_code == 401
    assert remote.get("/").status_code == 401
    assert remote.get("/api/cases", params={"token": "wrong"}).status_code == 401
    assert remote.get("/api/cases", headers={"X-Studio-Token": "s3cret-token"}).status_code == 200
    page = remote.get("/", params={"token": "s3cret-token"})  # the printed URL: the page gets a cookie
    assert page.status_code == 200 and "httponly" in page.headers["set-cookie"].lower()
    assert remote.get("/api/cases").status_code == 200  # the cookie now carries the token
    with pytest.raises(Exception, match="token"):
        create_app(Studio(CaseFolder(root), lambda: predictor), local_only=False)
    local = client_for(root, predictor)
    assert local.get("/api/cases", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    assert local.get("/api/cases", headers={"Host": "localhost:8765"}).status_code == 200
    r = local.post("/api/cases/synth_001/undo", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert local.post("/api/cases/synth_001/undo", headers={"Origin": BASE}).status_code == 400  # own origin passes


def test_concurrent_saves_leave_one_complete_label(folder, predictor):
    root, truth = folder
    c = client_for(root, predictor)
    a = (truth["synth_001"] == 1).astype(np.uint8)
    b = (truth["synth_001"] == 2).astype(np.uint8) * 2
    bodies = [nib.Nifti1Image(x, np.eye(4)).to_bytes() for x in (a, b)]
    codes = []

    def save(i):
        codes.append(c.put("/api/cases/synth_001/label", content=bodies[i % 2]).status_code)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 8
    saved = np.asarray(nib.load(root / "labelsTr/synth_001.nii.gz").dataobj)
    assert np.array_equal(saved, a) or np.array_equal(saved, b)
    assert not [p for p in (root / "labelsTr").iterdir() if p.name.startswith(".")]


def test_a_flat_folder_of_volumes(tmp_path, predictor):
    root = tmp_path / "flat"
    root.mkdir()
    vol = np.zeros((40, 40, 6), np.int16)
    vol[12:28, 10:30, :] = 300
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 3.0, 1.0])), root / "scan_a.nii.gz")
    nib.save(nib.Nifti1Image(vol[::-1].copy(), np.eye(4)), root / "scan_b.nii")
    (root / "notes.txt").write_text("not an image")
    c = client_for(root, predictor)
    assert [x["key"] for x in c.get("/api/cases").json()] == ["scan_a", "scan_b"]
    assert c.get("/api/studio").json()["classes"] == {"1": "foreground"}
    r = c.post("/api/cases/scan_a/box", json={"corner0": [10, 8, 3], "corner1": [29, 31, 3], "space": "voxel"})
    assert r.status_code == 200, r.text
    assert c.put("/api/cases/scan_a/label").status_code == 200
    saved = nib.load(root / "labelsTr/scan_a.nii.gz")
    assert saved.shape == vol.shape and np.asarray(saved.dataobj)[..., 3].sum() > 100
    np.testing.assert_allclose(saved.affine, np.diag([0.8, 0.8, 3.0, 1.0]))


def test_studio_command_refuses_a_bad_folder(tmp_path):
    from typer.testing import CliRunner

    from medadapt.cli.main import app

    r = CliRunner().invoke(app, ["studio", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "folder of cases" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(app, ["studio", str(empty)])
    assert r.exit_code == 2 and "no NIfTI volumes or 2D images" in r.output


def test_a_folder_of_2d_images_gets_png_labels(tmp_path, predictor):
    from PIL import Image

    from medadapt.io.images import read_label_2d
    from medadapt.studio.cases import from_display, to_display

    root = tmp_path / "png"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    h, w = 64, 80
    truth = {}
    for name, (r0, r1, c0, c1) in {"a": (10, 30, 12, 40), "b": (30, 52, 35, 70)}.items():
        img = rng.integers(20, 60, (h, w)).astype(np.uint8)
        img[r0:r1, c0:c1] = 200
        truth[name] = np.zeros((h, w), np.uint8)
        truth[name][r0:r1, c0:c1] = 1
        Image.fromarray(img).save(root / "images" / f"{name}.png")
    Image.fromarray(truth["a"] * 255).save(root / "masks/a.png")  # a viewing mask (0/255)
    c = client_for(root, predictor)
    assert {x["key"]: x["status"] for x in c.get("/api/cases").json()} == {"a": "labelled", "b": "untouched"}
    info = c.get("/api/cases/b").json()
    assert info["is_2d"] and info["shape"] == [w, h, 1] and info["image"] == "b.nii.gz" and info["plane"] == "axial"
    shown = read_mask(c.get("/api/cases/b/image"))
    pixels = np.asarray(Image.open(root / "images/b.png"))
    np.testing.assert_array_equal(np.asarray(shown.dataobj), to_display(pixels))
    np.testing.assert_array_equal(from_display(to_display(pixels)), pixels)
    np.testing.assert_array_equal(np.asarray(read_mask(c.get("/api/cases/a/mask")).dataobj), to_display(truth["a"]))
    # a box around the bright rectangle, in the viewer's voxels (i = column, j = rows upwards)
    r0, r1, c0, c1 = 30, 52, 35, 70
    corner0, corner1 = [c0 - 2, h - 1 - (r1 + 1), 0], [c1 + 1, h - 1 - (r0 - 2), 0]
    r = c.post("/api/cases/b/box", json={"corner0": corner0, "corner1": corner1, "space": "voxel"})
    assert r.status_code == 200, r.text
    assert c.put("/api/cases/b/label").status_code == 200
    saved = read_label_2d(root / "masks/b.png")
    assert saved.shape == (h, w)
    assert 2 * (saved & truth["b"]).sum() / (saved.sum() + truth["b"].sum()) > 0.9  # in the right place
    assert np.asarray(Image.open(root / "images/b.png")).tobytes() == pixels.tobytes()


def test_brush_and_eraser_strokes_paint_over_the_masks_and_undo(folder, predictor):
    root, truth = folder
    c = client_for(root, predictor)
    url = "/api/cases/synth_001"

    def shown():
        return np.asarray(read_mask(c.get(f"{url}/mask")).dataobj)

    # a brush stroke of class 2: a disk of radius 2 around each point, on the point's axial slice
    r = c.post(f"{url}/paint", json={"points": [[20, 20, 5], [20, 24, 5]], "space": "voxel", "value": 2, "radius": 2})
    assert r.status_code == 200, r.text
    ii, jj = np.mgrid[:48, :48]
    disks = ((ii - 20) ** 2 + (jj - 20) ** 2 <= 4) | ((ii - 20) ** 2 + (jj - 24) ** 2 <= 4)
    expected = np.zeros((48, 48, 32), np.uint8)
    expected[..., 5][disks] = 2
    np.testing.assert_array_equal(shown(), expected)
    assert r.json()["painted"] == int(disks.sum()) and r.json()["can_undo"]
    assert {x["key"]: x["status"] for x in c.get("/api/cases").json()}["synth_001"] == "predicted"
    # a box mask, then the eraser over part of it: the stroke wins over the model's mask
    v0, v1 = box_of(truth["synth_001"] == 1)
    c.post(f"{url}/box", json={"corner0": v0, "corner1": v1, "space": "voxel", "value": 1})
    boxed = shown()
    inside = np.argwhere(boxed[..., v0[2]] == 1)[0].tolist()
    r = c.post(f"{url}/paint", json={"points": [[*inside, v0[2]]], "space": "voxel", "value": 0, "radius": 1})
    assert r.status_code == 200, r.text
    erased = shown()
    assert erased[inside[0], inside[1], v0[2]] == 0 and (erased != boxed).sum() <= 5
    assert c.post(f"{url}/undo").status_code == 200
    np.testing.assert_array_equal(shown(), boxed)
    assert c.post(f"{url}/redo").status_code == 200
    assert c.put(f"{url}/label").status_code == 200
    np.testing.assert_array_equal(np.asarray(nib.load(root / "labelsTr/synth_001.nii.gz").dataobj), erased)
    # refused: a class the folder lacks, a radius out of range, a point outside the image
    assert c.post(f"{url}/paint", json={"points": [[1, 1, 1]], "space": "voxel", "value": 9}).status_code == 400
    assert c.post(f"{url}/paint", json={"points": [[1, 1, 1]], "space": "voxel", "radius": 100}).status_code == 422
    assert c.post(f"{url}/paint", json={"points": [[1, 1, 99]], "space": "voxel"}).status_code == 400


def test_unsaved_cases_stay_open_and_an_outside_change_is_reported(folder, predictor):
    root, truth = folder
    studio = Studio(CaseFolder(root), lambda: predictor, max_open=1)
    c = TestClient(create_app(studio), base_url=BASE)
    v0, v1 = box_of(truth["synth_001"] == 1)
    c.post("/api/cases/synth_001/box", json={"corner0": v0, "corner1": v1, "space": "voxel"})
    c.get("/api/cases/synth_002")
    c.get("/api/cases/synth_000")  # opening more cases than max_open never drops unsaved work
    assert len(c.get("/api/cases/synth_001").json()["objects"]) == 1
    assert len(studio._open) == 2  # the clean cases were closed
    # another program writes the label meanwhile: the save replaces it and says so
    nib.save(nib.Nifti1Image(truth["synth_001"], nib.load(root / "imagesTr/synth_001.nii.gz").affine),
             root / "labelsTr/synth_001.nii.gz")
    r = c.put("/api/cases/synth_001/label").json()
    assert "changed by another program" in r["warning"]
    assert "warning" not in c.put("/api/cases/synth_001/label").json()


def test_a_folder_of_2d_dicom_images_gets_png_labels(tmp_path, predictor):
    from medadapt.io.images import read_label_2d
    from medadapt.studio.cases import to_display

    root = tmp_path / "dicom"
    root.mkdir()
    rng = np.random.default_rng(0)
    h, w = 64, 80
    hu = rng.integers(-100, 0, (h, w)).astype(np.int16)  # soft tissue around a bright (bone-like) rectangle
    hu[30:52, 35:70] = 900
    _dicom(root / "slice.dcm", hu + 1024, RescaleSlope=1, RescaleIntercept=-1024)  # stored values + rescale, as CT
    before = sha(root / "slice.dcm")
    c = client_for(root, predictor)
    assert c.get("/api/cases").json() == [{"key": "slice", "folder": ".", "image": "slice.dcm", "status": "untouched",
                                          "unsaved": False}]
    info = c.get("/api/cases/slice").json()
    assert info["is_2d"] and info["shape"] == [w, h, 1] and info["image"] == "slice.nii.gz"
    shown = np.asarray(read_mask(c.get("/api/cases/slice/image")).dataobj)
    np.testing.assert_array_equal(shown, to_display(hu))  # the viewer gets Hounsfield units
    r0, r1, c0, c1 = 30, 52, 35, 70
    corner0, corner1 = [c0 - 2, h - 1 - (r1 + 1), 0], [c1 + 1, h - 1 - (r0 - 2), 0]
    r = c.post("/api/cases/slice/box", json={"corner0": corner0, "corner1": corner1, "space": "voxel"})
    assert r.status_code == 200, r.text
    saved = c.put("/api/cases/slice/label").json()
    assert saved["saved"] == "labelsTr/slice.png"
    label = read_label_2d(root / "labelsTr/slice.png")
    truth = np.zeros((h, w), np.uint8)
    truth[r0:r1, c0:c1] = 1
    assert label.shape == (h, w)
    assert (label & truth).sum() > 0.95 * label.sum() and label.sum() > 0.5 * truth.sum()  # in the right place
    assert sha(root / "slice.dcm") == before  # the image is never modified
    assert {x["key"]: x["status"] for x in c.get("/api/cases").json()} == {"slice": "labelled"}
    # a multi-frame DICOM is refused with a message when opened
    import pydicom

    ds = pydicom.dcmread(root / "slice.dcm")
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(root / "frames.dcm")
    r = client_for(root, predictor).get("/api/cases/frames")
    assert r.status_code == 400 and "multi-frame" in r.json()["error"]

"""The page of `dcgan web` in real headless Chromium (Debian's package, driven by Playwright), on the champion of
a tiny run, served by `dcgan web serve`'s server on a free port. What the page computes is checked against
Python's onnxruntime on the same files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from dcgan.classifier import train_classifier
from dcgan.config import Paths, load_params
from dcgan.data import fetch, prepare
from dcgan.errors import DcganError
from dcgan.evaluate import evaluate
from dcgan.export import export
from dcgan.generate import _grid
from dcgan.train import train
from dcgan.web import runtime
from dcgan.web.browser import chromium
from dcgan.web.build import build_site
from dcgan.web.serve import page_server

from .conftest import BIN, FIXTURE_DIR, FIXTURE_SHA256, free_port, mirror, user_env, write_params

CHAMPION_URI = "models:/dcgan-generator@champion"
SIZE, Z = 16, 8  # the tiny run's image size and latent size


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Paths, str]]:
    """A tiny project through every stage, its champion's page built and served; yields (paths, the page's URL)."""
    root = tmp_path_factory.mktemp("web-project")
    write_params(root)
    paths = Paths(root)
    fetch(load_params(root / "params.yaml", {"data.source_dir": str(FIXTURE_DIR)}), paths, FIXTURE_SHA256)
    params = load_params(root / "params.yaml")
    for stage in (prepare, train_classifier, train, evaluate, export):
        stage(params, paths)
    build_site(CHAMPION_URI, root / "web", paths)
    server = page_server(root / "web", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield paths, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Chromium, which `make test` installs where it is missing: without it these tests fail, never skip."""
    with chromium() as context:
        yield context


class Page:
    """One tab on the page, with the console errors it logged."""

    def __init__(self, browser, url: str):
        self.tab = browser.new_page()
        self.errors: list[str] = []
        self.tab.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.tab.on("pageerror", lambda error: self.errors.append(str(error)))
        self.tab.goto(url, wait_until="load")
        self.tab.wait_for_function(
            "document.body.dataset.ready === 'true' || document.querySelector('#status.error') !== null",
            timeout=60_000,
        )

    def state(self, expression: str):
        return self.tab.evaluate(f"() => {{ const s = window.dcgan.state; return {expression}; }}")

    def idle(self) -> None:
        self.tab.evaluate("() => window.dcgan.idle()")

    def cells(self) -> list[list[int]]:
        """The RGBA bytes each grid canvas shows."""
        return self.tab.evaluate(
            """() => [...document.querySelectorAll('.cell canvas')].map(
                c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data))"""
        )

    def close(self) -> None:
        self.tab.close()


@pytest.fixture
def page(site, browser) -> Iterator[Page]:
    tab = Page(browser, site[1] + "?seed=3")
    yield tab
    tab.close()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _files(paths: Paths) -> tuple[Path, Path]:
    card = json.loads((paths.root / "web" / "card.json").read_text())
    return paths.root / "web" / card["files"]["generator"]["name"], paths.root / "web" / card["files"]["classifier"][
        "name"
    ]


def test_the_page_becomes_ready_with_the_champion_and_no_console_errors(site, page: Page):
    paths, _ = site
    assert page.tab.inner_text("#status").startswith("Ready: dcgan-generator"), page.tab.inner_text("#status")
    assert page.errors == []
    card = page.tab.inner_text("#card")
    assert "dcgan-generator version 1" in card and "champion" in card and "fid" in card
    generator, _ = _files(paths)
    assert generator.read_bytes() == (paths.models / "generator.onnx").read_bytes()
    runtime_text = page.tab.inner_text("#runtime")
    assert "wasm" in runtime_text and "1.30.0" in runtime_text and "sessions created" in runtime_text
    assert len(page.cells()) == 16


def test_the_page_computes_what_python_onnxruntime_computes(site, page: Page):
    paths, _ = site
    generator, classifier = _files(paths)
    z = np.random.default_rng(0).standard_normal((5, Z, 1, 1), dtype=np.float32)
    in_browser = np.array(page.tab.evaluate("z => window.dcgan.generate(z, 5)", z.ravel().tolist()), np.float32)
    (expected,) = _session(generator).run(["images"], {"z": z})
    assert np.abs(in_browser.reshape(expected.shape) - expected).max() <= 1e-5

    # The grid: its latents through Python's onnxruntime give its images, and the classifier its labels.
    grid_z = np.array(page.state("s.z.map(z => Array.from(z))"), np.float32).reshape(16, Z, 1, 1)
    grid_images = np.array(page.state("s.images.map(i => Array.from(i))"), np.float32).reshape(16, 1, SIZE, SIZE)
    (expected,) = _session(generator).run(["images"], {"z": grid_z})
    assert np.abs(grid_images - expected).max() <= 1e-5
    (probabilities,) = _session(classifier).run(["probabilities"], {"images": grid_images})
    labels = page.state("s.labels")
    assert [label["label"] for label in labels] == probabilities.argmax(1).tolist()
    assert np.abs(np.array([label["p"] for label in labels]) - probabilities.max(1)).max() <= 1e-5
    captions = page.tab.locator(".cell figcaption").all_inner_texts()
    assert captions[0] == f"{probabilities[0].argmax()} · {round(probabilities[0].max() * 100)}%"


def test_a_slider_moves_the_chosen_sample_and_nothing_else(page: Page):
    before = page.cells()
    page.tab.locator('.cell[data-index="5"]').click()
    slider = page.tab.locator("#direction-0").bounding_box()
    assert slider is not None
    y = slider["y"] + slider["height"] / 2
    page.tab.mouse.move(slider["x"] + slider["width"] / 2, y)  # the thumb, at 0
    page.tab.mouse.down()
    page.tab.mouse.move(slider["x"] + slider["width"] * 0.9, y, steps=5)
    page.tab.mouse.up()
    page.idle()
    after = page.cells()
    assert float(page.tab.input_value("#direction-0")) > 1.5
    assert after[5] != before[5]
    assert [cell for i, cell in enumerate(after) if i != 5] == [cell for i, cell in enumerate(before) if i != 5]
    assert page.errors == []


@pytest.mark.parametrize("path", ["linear", "spherical"])
def test_the_ends_of_an_interpolation_are_the_two_picked_samples(page: Page, path: str):
    page.tab.locator(f'input[name="path"][value="{path}"]').check()
    page.tab.locator('.cell[data-index="1"]').click()
    page.tab.locator("#pick-a").click()
    page.tab.locator('.cell[data-index="4"]').click()
    page.tab.locator("#pick-b").click()
    page.idle()
    strip_z = page.state("s.strip.z.map(z => Array.from(z))")
    grid_z = page.state("s.z.map(z => Array.from(z))")
    assert len(strip_z) == 8 and strip_z[0] == grid_z[1] and strip_z[-1] == grid_z[4]
    ends = np.array(page.state("[s.strip.images[0], s.strip.images[7]].map(i => Array.from(i))"))
    picked = np.array(page.state("[s.images[1], s.images[4]].map(i => Array.from(i))"))
    assert np.abs(ends - picked).max() <= 1e-5
    assert page.tab.locator("#strip canvas").count() == 8


def test_show_me_samples_until_the_classifier_is_sure(site, page: Page):
    paths, _ = site
    best = max(page.state("s.labels"), key=lambda label: label["p"])  # a class this tiny model does make
    wanted, sure = best["label"], min(0.9, round(best["p"] - 0.005, 3))  # its classifier is never sure of much
    page.tab.select_option("#wanted", str(wanted))
    page.tab.fill("#sure", str(sure))
    page.tab.locator("#show-me").click()
    page.idle()
    found = page.state("s.found && {z: Array.from(s.found.z), label: s.found.label, p: s.found.p}")
    assert found is not None, page.tab.inner_text("#found-text")
    generator, classifier = _files(paths)
    (image,) = _session(generator).run(["images"], {"z": np.array(found["z"], np.float32).reshape(1, Z, 1, 1)})
    (probabilities,) = _session(classifier).run(["probabilities"], {"images": image})
    assert probabilities[0].argmax() == wanted and probabilities[0, wanted] >= sure
    assert page.tab.inner_text("#found-text").startswith(f"{wanted} with probability")


def test_the_png_download_is_the_grid(page: Page):
    with page.tab.expect_download() as download:
        page.tab.locator("#download").click()
    assert download.value.suggested_filename == "dcgan-seed-3.png"
    picture = np.array(Image.open(io.BytesIO(Path(download.value.path()).read_bytes())))
    images = np.array(page.state("s.images.map(i => Array.from(i))"), np.float32).reshape(16, SIZE, SIZE)
    pixels = np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8)
    expected = _grid(pixels)  # laid out as `dcgan generate` lays its grid out
    assert picture.shape[:2] == expected.shape
    assert (picture[..., 0] == expected).all() and (picture[..., 3] == 255).all()


def test_the_shared_url_reproduces_the_grid(site, browser, page: Page):
    page.tab.fill("#seed", "11")
    page.tab.fill("#truncation", "1.5")
    page.tab.locator("#truncation").dispatch_event("change")
    page.idle()
    assert page.tab.url.endswith("?seed=11&n=16&truncation=1.5")
    grid_z = np.array(page.state("s.z.map(z => Array.from(z))"))
    assert np.abs(grid_z).max() <= 1.5
    other = Page(browser, page.tab.url)
    try:
        assert other.state("s.z.map(z => Array.from(z))") == grid_z.tolist()
        assert other.cells() == page.cells()
        assert other.tab.input_value("#seed") == "11" and other.errors == []
    finally:
        other.close()
    page.tab.screenshot(path=str(site[0].root / "page.png"), full_page=True)
    assert Image.open(site[0].root / "page.png").size[0] == 1280


def test_a_new_build_replaces_the_page_only_when_it_is_whole(site, tmp_path: Path):
    paths, _ = site
    card = (paths.root / "web" / "card.json").read_bytes()
    with pytest.raises(DcganError, match="no-such.onnx: no such file: run `dcgan export` first"):
        build_site(str(tmp_path / "no-such.onnx"), paths.root / "web", paths)
    assert (paths.root / "web" / "card.json").read_bytes() == card
    with pytest.raises(DcganError, match="models:/dcgan-generator@nobody: cannot get it"):
        build_site("models:/dcgan-generator@nobody", paths.root / "web", paths)
    assert (paths.root / "web" / "card.json").read_bytes() == card


def test_the_runtime_is_refused_when_it_is_not_the_pinned_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DCGAN_CACHE", str(tmp_path / "cache"))
    registry = tmp_path / "registry"
    (registry / "onnxruntime-web" / "-").mkdir(parents=True)
    (registry / "onnxruntime-web" / "-" / f"onnxruntime-web-{runtime.VERSION}.tgz").write_bytes(b"not the release")
    with mirror(registry) as url, pytest.raises(DcganError, match="SHA-512 mismatch: expected ab4cbe26"):
        runtime.runtime_files(url)
    assert not (tmp_path / "cache").exists()


def test_dcgan_web_serve_serves_the_page_without_caching(site):
    paths, _ = site
    port = free_port()
    command = [str(BIN / "dcgan"), "web", "serve", "--dir", "web", "--port", str(port)]
    server = subprocess.Popen(command, cwd=paths.root, env=user_env(), stdout=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == f"the page: http://127.0.0.1:{port}/  (Ctrl-C stops)"
        import httpx

        answer = httpx.get(f"http://127.0.0.1:{port}/ort/ort-wasm-simd-threaded.wasm")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/wasm"
        assert answer.headers["cache-control"] == "no-store" and len(answer.content) == 14239897
        assert httpx.get(f"http://127.0.0.1:{port}/app.mjs").headers["content-type"] == "text/javascript"
    finally:
        os.killpg(server.pid, 2)  # Ctrl-C
        assert server.wait(timeout=20) == 0

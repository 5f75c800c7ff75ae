"""The page of `dcgan web` in headless Chromium: onnxruntime-web's wasm backend against Python's onnxruntime.

    python bench/web_page.py [--model models:/dcgan-generator@champion] [--repeat 5] [--screenshot PNG] [--json]

Builds the page for `--model` in a temporary folder (in the project in the working directory), serves it on
127.0.0.1 and opens it in Debian's chromium through Playwright. Measures the page's own session creation, then
the median time of `generate` for batches of 1, 16 and 64 seeded latents after one warm-up, and the max abs
error of each against Python's onnxruntime (CPU provider) on the same file. With `--screenshot`, saves the page
as a user sees it after moving the first sample along the first direction and interpolating between two samples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dcgan.config import Paths
from dcgan.web.browser import chromium
from dcgan.web.build import build_site
from dcgan.web.serve import page_server

BATCHES = (1, 16, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/dcgan-generator@champion")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "web"
        build = build_site(args.model, folder, Paths())
        card = json.loads((folder / "card.json").read_text())
        session = ort.InferenceSession(str(folder / build.generator), providers=["CPUExecutionProvider"])
        server = page_server(folder, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        result: dict[str, object] = {
            "benchmark": "web_page",
            "model": args.model,
            "onnxruntime_web": card["onnxruntime_web"],
        }
        with chromium() as browser:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/?seed=0&n=16", wait_until="load")
            page.wait_for_function("document.body.dataset.ready === 'true'", timeout=120_000)
            result["session_ms"] = round(page.evaluate("() => window.dcgan.runtime.timings.session_ms"), 1)
            rng = np.random.default_rng(0)
            for batch in BATCHES:
                z = rng.standard_normal((batch, card["z_dim"], 1, 1), dtype=np.float32)
                times, images = [], None
                for _ in range(args.repeat + 1):  # the first run warms up
                    images = page.evaluate("([z, n]) => window.dcgan.generate(z, n)", [z.ravel().tolist(), batch])
                    times.append(page.evaluate("() => window.dcgan.runtime.timings.generate_ms"))
                (expected,) = session.run(["images"], {"z": z})
                error = float(np.abs(np.array(images, np.float32).reshape(expected.shape) - expected).max())
                result[f"batch{batch}_ms"] = round(statistics.median(times[1:]), 1)
                result[f"batch{batch}_max_abs_error"] = error
            if args.screenshot:
                _pose(page)
                page.screenshot(path=str(args.screenshot), full_page=True)
                result["screenshot"] = str(args.screenshot)
        server.shutdown()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


def _pose(page) -> None:
    """What the README's picture shows: sample 1 moved along the first direction, 1 to 6 interpolated, a 7 found."""
    page.locator('.cell[data-index="0"]').click()
    page.locator("#direction-0").fill("1.5")
    page.locator("#pick-a").click()
    page.locator('.cell[data-index="5"]').click()
    page.locator("#pick-b").click()
    page.locator('.cell[data-index="0"]').click()
    if page.locator('#wanted option[value="7"]').count():
        page.select_option("#wanted", "7")
        page.locator("#show-me").click()
    page.evaluate("() => window.dcgan.idle()")


if __name__ == "__main__":
    main()

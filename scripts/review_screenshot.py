"""The review console as an operator sees it, on the MNIST release: `docs/images/review-neighbours.png`.

Serves a detector artifact (default: the committed MNIST release) with `--show-neighbours`, sends it test images and
their PGD examples crafted against F at a radius beyond the threat model's (eps 0.45: F is fooled and the detector
flags many; at 0.3 the robust F resists most of them), and saves what headless Chromium shows
at /review (Debian's chromium and chromium-driver: `make system-deps`). The artifact must cite its training images;
an older one is cited first into a temporary copy (`latentdefence dld cite-training`).

    python scripts/review_screenshot.py [--artifact PATH] [--out docs/images/review-neighbours.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import torch

from latentdefence.attacks import PGD
from latentdefence.data import calibration_split, load_dataset
from latentdefence.dld import DeepLatentDefence
from latentdefence.serving.process import start_server

ROOT = Path(__file__).resolve().parents[1]
KEY = "review-screenshot-key"


def cited(artifact: Path, folder: Path) -> Path:
    """`artifact` if it cites its training images, else a cited copy in `folder`."""
    if hasattr(DeepLatentDefence.load(artifact), "index_rows_"):
        return artifact
    out = folder / "cited.safetensors"
    subprocess.run([sys.executable, "-c", "from latentdefence.cli import main; main()", "dld", "cite-training",
                    str(artifact), "--out", str(out), "--dataset", "mnist"], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=ROOT / "docs/results/dld-mnist-table1/detector.safetensors")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images/review-neighbours.png")
    parser.add_argument("--n", type=int, default=16, help="clean test images sent, and as many PGD examples")
    parser.add_argument("--eps", type=float, default=0.45, help="the PGD examples' L-inf radius")
    args = parser.parse_args()
    from selenium import webdriver

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        artifact = cited(args.artifact, folder)
        _, rest = calibration_split(load_dataset("mnist").test, 750, 0)
        x, y = rest.images[:args.n], rest.labels[:args.n]
        classifier = DeepLatentDefence.load(artifact).classifier
        adversarial = PGD(eps=args.eps, steps=40, generator=torch.Generator().manual_seed(0))(classifier, x, y).images
        proc, url = start_server(artifact, "--audit-db", str(folder / "audit.sqlite"), "--keep-images",
                                 "--show-neighbours", "--api-key", KEY, log=folder / "server.log")
        try:
            with httpx.Client(headers={"x-api-key": KEY}, timeout=120) as client:
                for images in (x, adversarial):
                    client.post(f"{url}/v1/predict", json={"images": images.tolist()}).raise_for_status()
            options = webdriver.ChromeOptions()
            options.binary_location = shutil.which("chromium") or "chromium"
            for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100",
                         f"--user-data-dir={folder / 'chromium'}"):
                options.add_argument(flag)
            chrome = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")),
                                      options=options)
            try:
                chrome.get(url.replace("http://", f"http://operator:{KEY}@") + "/review?limit=3")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                chrome.save_screenshot(str(args.out))
            finally:
                chrome.quit()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

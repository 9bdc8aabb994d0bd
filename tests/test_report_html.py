"""report.html is self-contained: every image an inline PNG, no script, no URL; it renders in
headless Chromium (Debian's `chromium`; the test skips with a reason when it is absent)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from _predict_support import make_bundle, make_cohort
from liverphase.inference.predictor import Predictor
from liverphase.inference.run import read_dicom

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # a request would fail instead of leaving the box
]


class _Refs(HTMLParser):
    """Collects tags and every attribute that can point at a resource."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href", "srcset", "action", "poster", "data"):
                self.refs.append(value or "")
                if tag == "img" and key == "src":
                    self.imgs.append(value or "")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    make_cohort(root, cases=1)
    bundle = make_bundle(root / "bundle")
    study = read_dicom(root / "ds" / "dicom" / "CT0000")
    mask = root / "ds" / "dicom" / "CT0000_mask.nii.gz"
    Predictor(bundle).predict_study(study, root / "out", mask=mask)
    return root / "out" / "report.html"


def test_report_is_self_contained(report):
    text = report.read_text()
    parser = _Refs()
    parser.feed(text)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert len(parser.imgs) >= 2  # the phase slices and the kinetics plot
    for src in parser.imgs:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = mpimg.imread(io.BytesIO(data), format="png")
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 50 and pixels.std() > 0.01
    assert all(r.startswith("data:") for r in parser.refs)
    assert not re.search(r"url\(\s*['\"]?(?!data:)", text)
    # no absolute or protocol-relative URL anywhere outside the inline images (base64 has '/')
    plain = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"(https?:)?//[a-z0-9]", plain, re.I)
    assert text.count("For research use only. Not for clinical use.") >= 2
    for heading in ("Prediction", "Phase importance", "Enhancement kinetics", "Named patterns"):
        assert heading in text


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (CI: apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    url = report.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        common = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
        subprocess.run(
            [*common, f"--screenshot={shot}", "--window-size=1200,2400", url],
            check=True,
            capture_output=True,
            timeout=120,
        )
        dom = subprocess.run(
            [*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120
        ).stdout
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    grey = pixels[..., :3].mean(axis=2)
    assert grey.std() > 0.05  # not a blank page
    red = (pixels[..., 0] > 0.6) & (pixels[..., 1] < 0.2) & (pixels[..., 2] < 0.25)
    assert red[:200].sum() > 5000  # the research-use banner at the top
    assert len(np.unique((grey * 255).astype(np.uint8))) > 50  # the images rendered, not boxes
    assert "For research use only" in dom and dom.count("<img") >= 2

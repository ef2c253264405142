"""The report renders in a real browser: headless Chromium loads the page from disk, with the network
unused, and every embedded plot decodes (``naturalWidth > 0``)."""

import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow  # a training run, its evaluation and the report (rendered in Chromium)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {id: img.id, width: img.naturalWidth, complete: img.complete};
  });
  document.body.setAttribute("data-images", JSON.stringify(images));
});
</script>"""


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("DPOKIT_REQUIRE_CHROMIUM"):
        pytest.fail("chromium is required here (DPOKIT_REQUIRE_CHROMIUM is set) but not installed")
    pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver); CI installs it")


def test_report_renders_with_every_plot_decoded(report_dir, tmp_path):
    browser = _chromium()
    page = (report_dir / "index.html").read_text()
    probed = tmp_path / "probed.html"  # the report plus a probe script (the report itself has no script)
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    marker = 'data-images="'
    assert marker in proc.stdout, proc.stdout[:2000]
    raw = proc.stdout.split(marker, 1)[1].split('"', 1)[0].replace("&quot;", '"')
    images = {img["id"]: img for img in json.loads(raw)}
    assert set(images) == {"curves", "monitor", "frontier", "margins", "layers"}
    for name, img in images.items():
        assert img["complete"] and img["width"] > 100, (name, img)


def test_report_is_self_contained(report_dir):
    out = report_dir
    page = (out / "index.html").read_text()
    for plot in ("curves", "monitor", "frontier", "margins", "layers"):
        assert (out / f"{plot}.png").stat().st_size > 1000
        assert f'id="{plot}"' in page
    assert page.count("data:image/png;base64,") == 5
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "Sample answers" in page and "Reward vs KL" in page

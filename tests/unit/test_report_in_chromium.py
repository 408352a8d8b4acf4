"""The report as a person sees it: headless Chromium (Debian's ``chromium``) at 1400 px (issue 14, item 4).

A report is generated from a recorded run (tests/vectors/report-run: a real
``natlab demo`` run's results.jsonl, paths line and CL-RENEW's PCP frames, laid
out as the runner lays out reports/), then Chromium takes a screenshot and a
checker page, loading the report in a frame, reports what a browser saw: each
image decoded, each evidence link fetched, each in-page anchor found, the page
width. Controls: a missing evidence file and a corrupted image must be reported
as exactly that. No Mininet: it runs anywhere Chromium is installed.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conformance import registry, report
from conformance.results import read_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
VECTORS = Path(__file__).resolve().parents[1] / "vectors"
WIDTH, HEIGHT = 1400, 900
STAMP = "20261202T201511Z"
STUB = "recorded in the original run; the fixture keeps its name only\n"

CHECKER = """<!DOCTYPE html><html><body><pre id="out">no answer</pre>
<iframe id="f" src="report.html" width="WIDTH" height="HEIGHT"></iframe>
<script>
document.getElementById("f").onload = function () {
  const doc = this.contentDocument;
  const images = [...doc.images].map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0}));
  const hrefs = [...doc.querySelectorAll("a[href]")].map(a => a.getAttribute("href"));
  const files = [...new Set(hrefs.filter(h => !h.startsWith("#")))];
  const broken = files.filter(h => {
    const x = new XMLHttpRequest();
    try { x.open("GET", h, false); x.send(); return false; } catch (e) { return true; }
  });
  const anchors = [...new Set(hrefs.filter(h => h.startsWith("#")).map(h => h.slice(1)))];
  const matrix = doc.querySelector("table.matrix").getBoundingClientRect();
  document.getElementById("out").textContent = JSON.stringify({
    images, files: files.length, broken, missing_anchors: anchors.filter(id => !doc.getElementById(id)),
    width: doc.documentElement.scrollWidth, matrix_bottom: matrix.bottom});
};
</script></body></html>
""".replace("WIDTH", str(WIDTH)).replace("HEIGHT", str(HEIGHT))


def chromium(*args: str, profile: Path) -> str:
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout


def seen(out: Path, profile: Path) -> dict:
    """What Chromium saw of out/report.html, through the checker page."""
    (out / "check.html").write_text(CHECKER)
    dom = chromium("--allow-file-access-from-files", "--virtual-time-budget=20000", "--dump-dom",
                   (out / "check.html").as_uri(), profile=profile)
    return json.loads(dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0])


@pytest.fixture
def reports(tmp_path) -> Path:
    """reports/ as the runner leaves it: runs/<stamp>/ with the run's files, the report on top."""
    out = tmp_path / "reports"
    run = out / "runs" / STAMP
    shutil.copytree(VECTORS / "report-run", run)
    results = read_results(run / "results.jsonl")
    for name in {p for r in results for p in r.evidence}:
        path = run / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(STUB)
    shutil.copy(VECTORS / "report-bench" / "bench-nat.json", out)
    environment = json.loads((run / "environment.json").read_text())
    report.write_report(registry.load(), results, environment, out, evidence_base=f"runs/{STAMP}/")
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_report_in_chromium_at_1400_px(reports, tmp_path):
    shot = tmp_path / "report-1400.png"
    chromium(f"--screenshot={shot}", (reports / "report.html").as_uri(), profile=tmp_path / "profile")
    assert png_size(shot) == (WIDTH, HEIGHT)
    view = seen(reports, tmp_path / "profile")
    assert [i["alt"] for i in view["images"]] == ["Verdict matrix", "Throughput of every benchmark variant",
                                                  "Lease timeline of CL-RENEW", "Fast vs slow path"]
    assert all(i["loaded"] for i in view["images"]), view["images"]
    assert view["files"] > 100 and view["broken"] == [] and view["missing_anchors"] == []
    assert view["width"] <= WIDTH  # nothing scrolls sideways
    assert view["matrix_bottom"] <= HEIGHT  # the whole verdict matrix is on the first screen


def test_control_a_missing_evidence_file_is_reported_broken(reports, tmp_path):
    gone = f"runs/{STAMP}/evidence/client-renew/renewals.json"
    (reports / gone).unlink()
    assert seen(reports, tmp_path / "profile")["broken"] == [gone]


def test_control_a_corrupted_image_is_reported_not_loaded(reports, tmp_path):
    page = reports / "report.html"
    page.write_text(page.read_text().replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1))
    images = seen(reports, tmp_path / "profile")["images"]
    assert [i["loaded"] for i in images] == [False, True, True, True]

"""The outputs in a real browser: headless Chromium loads the annotated video (the same relative link the report
uses) and reports its size and duration, and a screenshot of the report shows a page, not a blank.

CI installs Chromium (.ci/run) and fails these tests without it; elsewhere they are skipped when it is absent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
from conftest import PHONE_TIMES, run_cli

CHROMIUM = Path("/usr/bin/chromium")
# CI must really run these (.ci/run installs Chromium): there a missing browser fails them instead of skipping.
pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true",
                                reason="needs Chromium at /usr/bin/chromium (apt-get install -y chromium; CI "
                                       "installs it)")


def chromium(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium with a throwaway profile and nothing that reaches the network. It runs in its own process
    group with its output in files: on a timeout the whole group (renderers, zygotes) is killed and the test fails
    instead of waiting forever on a pipe that a leftover child still holds."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               "--mute-audio", f"--user-data-dir={profile}", *args]
    stdout, stderr = profile.with_suffix(".out"), profile.with_suffix(".err")
    with open(stdout, "w") as out, open(stderr, "w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"Chromium did not finish in {timeout:.0f} s: {' '.join(args)}")
        finally:
            try:  # renderers and zygotes left behind by a finished browser
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return subprocess.CompletedProcess(command, process.returncode, stdout.read_text(errors="replace"),
                                       stderr.read_text(errors="replace"))


@pytest.fixture(scope="module")
def reported(tmp_path_factory, phone_video, astronaut_jpg):
    root = tmp_path_factory.mktemp("browser")
    run_cli("label", str(phone_video), str(astronaut_jpg), "-o", str(root / "out.csv"), "--annotate",
            str(root / "ann"), "--report", str(root / "report.html"), "--quiet", check=True)
    return root, root / "report.html"


def test_the_annotated_video_plays_in_chromium(reported, tmp_path):
    root, page = reported
    html = page.read_text(encoding="utf-8")
    source = re.search(r'<video[^>]*><source src="([^"]+)" type="video/mp4">', html).group(1)
    assert (root / unquote(source)).is_file()
    # A page beside the report, with the report's own link: loadeddata fires only once a frame has decoded.
    probe = root / "probe.html"
    probe.write_text(f"""<!DOCTYPE html><html><body><pre id="out">waiting</pre>
<video id="v" muted preload="auto" src="{source}"></video>
<script>
const v = document.getElementById("v"), out = document.getElementById("out");
v.addEventListener("loadeddata", () => {{
  out.textContent = JSON.stringify({{width: v.videoWidth, height: v.videoHeight, duration: v.duration}});
}});
v.addEventListener("error", () => {{ out.textContent = JSON.stringify({{error: v.error && v.error.code}}); }});
</script></body></html>""", encoding="utf-8")
    result = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="out">([^<]*)</pre>', result.stdout)
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    state = json.loads(found.group(1).replace("&quot;", '"'))
    assert "error" not in state, f"Chromium cannot play the annotated video: MediaError code {state}"
    assert (state["width"], state["height"]) == (360, 480)  # upright portrait, as the phone showed it
    # The last frame starts at PHONE_TIMES[-1] and lasts one gap; the AAC track may run a few ms longer.
    assert state["duration"] == pytest.approx(PHONE_TIMES[-1] + 1 / 15, abs=0.08)


def test_the_report_renders_in_chromium(reported, tmp_path):
    _, page = reported
    shot = tmp_path / "report.png"
    result = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    image = cv2.imread(str(shot))
    assert image.shape[:2] == (2000, 1200)
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    not_background = float((np.abs(image.astype(int) - image[5, 5]).sum(axis=2) > 30).mean())
    assert colours > 200, colours  # text, charts, thumbnails: not a blank or an error page
    assert not_background > 0.03, not_background

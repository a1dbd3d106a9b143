"""The HTML report's content, without a browser: a real run (photos, a broken file, a phone video) through the CLI,
then the page read as text; plus a large synthetic CSV for the caps."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import time
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
from conftest import read_csv, run_cli

from fer_batch import report
from fer_batch.labels import EMOTIONS
from fer_batch.writer import COLUMNS

ODD_NAME = "smile & <b>.jpg"  # a legal file name that breaks unescaped HTML


@pytest.fixture(scope="module")
def run(tmp_path_factory, astronaut_jpg, phone_video):
    root = tmp_path_factory.mktemp("report-run")
    photos = root / "photos"
    photos.mkdir()
    shutil.copy(astronaut_jpg, photos / ODD_NAME)
    cv2.imwrite(str(photos / "wall.png"), np.full((200, 300, 3), 128, np.uint8))  # no face
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    out = root / "out.csv"
    result = run_cli("label", str(photos), str(phone_video), "-o", str(out), "--annotate", str(root / "ann"),
                     "--report", str(root / "report.html"), "--quiet", check=True)
    return root, out, root / "report.html", result


def test_label_report_is_one_self_contained_page(run):
    root, _, page, result = run
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<script" not in html and "<link" not in html  # no JS, no external stylesheet
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing from the network
    assert "<style>" in html and "<svg" in html
    assert not list(root.glob("*.part"))


def test_settings_and_versions_come_from_run_json(run):
    root, out, page, _ = run
    html = page.read_text(encoding="utf-8")
    info = json.loads((root / "out.run.json").read_text())
    assert "annotate_codec" in html and "h264" in html
    for name, version in info["versions"].items():
        assert f"<th>{name}</th><td>{version}</td>" in html
    assert info["machine"] in html


def test_sources_tracks_errors_and_no_faces(run, phone_video):
    root, out, page, _ = run
    html = page.read_text(encoding="utf-8")
    rows = read_csv(out)
    assert ODD_NAME not in html and "smile &amp; &lt;b&gt;.jpg" in html  # escaped
    summary = read_csv(root / "out.summary.csv")
    tracks = [s for s in summary if s["source"] == str(phone_video)]
    assert tracks and all(f"<td>{s['track']}</td><td class=\"n\">{s['frames']}</td>" in html for s in tracks)
    broken = next(r for r in rows if r["status"] == "error")
    assert "broken.jpg" in broken["source"] and broken["error"] in html
    no_face = sum(r["status"] == "no_face" for r in rows)
    assert f"<b>{no_face:,}</b><span>items without a face</span>" in html
    assert "no face found" in html  # wall.png's row in the table
    assert "could not be read" in html  # broken.jpg's


def test_timelines_thumbnails_and_shares(run, phone_video):
    _, out, page, _ = run
    html = page.read_text(encoding="utf-8")
    video_tracks = {r["track"] for r in read_csv(out) if r["source"] == str(phone_video) and r["track"]}
    assert html.count("<polyline") >= len(EMOTIONS) * len(video_tracks)
    thumbnails = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(thumbnails) == len(video_tracks) + 1  # each video track, and the astronaut photo
    for encoded in thumbnails:
        image = cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8), cv2.IMREAD_COLOR)
        assert image.shape[0] == report.THUMBNAIL_HEIGHT and image.std() > 10  # a picture, not a blank
    assert "<title>happy" in html  # a share bar's part, titled with its emotion and share


def test_annotated_copies_are_linked_relative_to_the_page(run, phone_video):
    root, _, page, _ = run
    html = page.read_text(encoding="utf-8")
    video = re.search(r'<video[^>]*><source src="([^"]+)" type="video/mp4">', html)
    assert video and unquote(video.group(1)) == f"ann/{phone_video.name}"
    assert (page.parent / unquote(video.group(1))).is_file()
    links = {unquote(h) for h in re.findall(r'href="([^"]+)"', html)}
    assert f"ann/{ODD_NAME}" in links and "ann/wall.png" in links


def test_report_command_without_run_json(run, tmp_path):
    root, out, _, _ = run
    lone = tmp_path / "copy.csv"
    shutil.copy(out, lone)
    result = run_cli("report", str(lone))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "copy.report.html").read_text(encoding="utf-8")
    assert "copy.run.json was not found" in html and "<h2 id=\"sources\">" in html
    assert "<video" not in html  # no recorded --annotate folder: nothing to link
    result = run_cli("report", str(lone), "-o", str(tmp_path / "linked.html"), "--annotated", str(root / "ann"))
    assert "<video" in (tmp_path / "linked.html").read_text(encoding="utf-8")
    (tmp_path / "copy.run.json").write_text("{not json")
    assert run_cli("report", str(lone)).returncode == 0
    assert "copy.run.json could not be read" in (tmp_path / "copy.report.html").read_text(encoding="utf-8")


def test_report_refuses_a_foreign_csv(tmp_path):
    foreign = tmp_path / "other.csv"
    foreign.write_text("name,value\nx,1\n")
    result = run_cli("report", str(foreign), "-o", str(tmp_path / "r.html"))
    assert result.returncode == 2 and "not a fer-batch CSV" in result.stderr
    assert not (tmp_path / "r.html").exists()
    missing = run_cli("report", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "nope.csv" in missing.stderr


def test_large_runs_give_a_small_page_that_says_what_it_left_out(tmp_path, capfd):
    """10,000 images in 100 folders and an hour of video at 25 fps (90,000 frames, 2 tracks)."""
    out = tmp_path / "big.csv"
    rng = np.random.default_rng(0)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()

        def face(source, frame="", time_s="", track="", face_index=0):
            probabilities = rng.dirichlet(np.ones(len(EMOTIONS)))
            top = int(probabilities.argmax())
            return {"source": source, "frame": frame, "time_s": time_s, "face": face_index, "track": track,
                    "x": 10, "y": 10, "w": 40, "h": 40, "face_score": "0.99", "emotion": EMOTIONS[top],
                    "confidence": f"{probabilities[top]:.6f}", "smooth_s": "0", "status": "ok", "error": "",
                    **{e: f"{p:.6f}" for e, p in zip(EMOTIONS, probabilities)}}

        writer.writerows(face("/gone/hour.mp4", str(i), f"{i / 25:.3f}", str(t), t) for i in range(90_000)
                         for t in (0, 1))
        writer.writerows(face(f"/gone/folder{i // 100}/img{i}.jpg") for i in range(10_000))
    started = time.perf_counter()
    page = report.write_report(out, tmp_path / "big.html")
    seconds = time.perf_counter() - started
    html = page.read_text(encoding="utf-8")
    assert len(html) < 3_000_000 and seconds < 60
    assert f"detail (annotated copy, face thumbnails, timelines) for the first {report.MAX_DETAILED} of 10,001" in html
    assert f"shows the first {report.MAX_TABLE_ROWS} of 10,003 rows" in html  # the video: all, track 0, track 1
    assert '<td>all</td><td class="n">90,000</td><td class="n">180,000</td>' in html
    assert "at most 300 points" in html
    longest = max(len(points.split()) for points in re.findall(r'points="([^"]+)"', html))
    assert longest <= report.TIMELINE_POINTS
    assert "<b>180,000</b><span>faces</span>" not in html and "<b>190,000</b><span>faces</span>" in html
    assert "no thumbnail (source unreadable)" in html
    assert "/gone/hour.mp4: no thumbnails in the report" in capfd.readouterr().err


def test_downsampled_timelines_keep_the_shape():
    """An hour at 25 fps becomes at most 300 points: time range kept, each bin the mean of its frames."""
    from fer_batch.draw import downsample, svg_shares, svg_timeline

    times = np.arange(90_000) / 25
    values = np.stack([np.sin(times / 600) ** 2, np.cos(times / 600) ** 2], axis=1)
    kept_times, kept_values = downsample(times, values, 300)
    assert len(kept_times) <= 300 and kept_values.shape == (len(kept_times), 2)
    assert kept_times[0] < 7 and kept_times[-1] > times[-1] - 7
    assert np.allclose(kept_values.sum(axis=1), 1.0)  # means of probabilities that summed to 1
    assert np.allclose(kept_values[:, 0], np.sin(kept_times / 600) ** 2, atol=0.01)
    short_times, short_values = downsample(times[:10], values[:10], 300)
    assert np.array_equal(short_times, times[:10])  # short tracks are drawn as they are
    single = svg_timeline([1.5], [[0.1, 0.2, 0.3, 0.1, 0.1, 0.1, 0.1]])
    assert single.count("<circle") == len(EMOTIONS)  # one frame still shows
    bar = svg_shares([0.5, 0, 0, 0.25, 0, 0, 0.25], width=200)
    widths = [float(w) for w in re.findall(r'<rect x="[^"]+" width="([^"]+)"', bar)]
    assert sum(widths) == pytest.approx(200) and len(widths) == 3

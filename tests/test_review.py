"""fer-batch review without a browser: what is reviewed (photo faces, video track segments), the review file and
--apply, and the server's rules over plain HTTP - on a real labelling run of real faces (scikit-image's astronaut,
LFW faces) and a real H.264 video made with PyAV.

The page itself, in Chromium, is tested in test_review_browser.py, which reuses the helpers here.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from conftest import REPO, paste, read_csv, run_cli, write_av_video

from fer_batch.labels import EMOTIONS
from fer_batch.review import items as review_items
from fer_batch.review.decisions import APPLIED_COLUMNS, REVIEW_COLUMNS, ReviewLog, read_records
from fer_batch.review.items import ReviewError, ReviewItems
from fer_batch.writer import COLUMNS

# LFW faces the model labels differently (checked by eye and by the model): 37 smiles, 42 does not.
SMILE, STRAIGHT = 37, 42
BLANK_FRAME = 25  # the interview's frame with nobody in it: it cuts both tracks' segments


def lfw_face(lfw: np.ndarray, index: int, size: int = 150) -> np.ndarray:
    face = np.round(lfw[index] * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR)


def make_inputs(root: Path, astronaut: np.ndarray) -> tuple[Path, Path]:
    """Photos (the astronaut, a photo of three LFW faces whose name needs CSV quoting, one LFW face, a photo
    without a face, a broken file) and a 30-frame interview: one LFW face that smiles, stops and smiles again
    (one track, several segments) beside the astronaut (a second track), and an empty frame."""
    from skimage import data

    lfw = data.lfw_subset()
    photos = root / "photos"
    photos.mkdir(parents=True)
    cv2.imwrite(str(photos / "astronaut.jpg"), astronaut)

    def canvas(*faces: np.ndarray) -> np.ndarray:
        picture = np.full((300, 300 * len(faces), 3), 120, np.uint8)
        for position, face in enumerate(faces):
            paste(picture, face, 300 * position + 75, 75)
        return picture

    cv2.imwrite(str(photos / "group, three faces.png"), canvas(*(lfw_face(lfw, i) for i in (1, 22, 47))))
    cv2.imwrite(str(photos / "lfw 0.png"), canvas(lfw_face(lfw, 0)))
    cv2.imwrite(str(photos / "coffee.png"), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    head = cv2.resize(astronaut[20:300, 120:340], None, fx=0.7, fy=0.7)
    frames = []
    for index in range(30):
        frame = np.full((300, 560, 3), 110, np.uint8)
        if index != BLANK_FRAME:
            paste(frame, lfw_face(lfw, STRAIGHT if 10 <= index < 20 else SMILE), 40, 75)
            paste(frame, head, 330 + index, 40)
        frames.append(frame)
    video = write_av_video(root / "interview.mp4", frames, audio=None)
    return photos, video


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, astronaut) -> Path:
    """A real labelling run (made once per module): OUT.csv, OUT.run.json and OUT.summary.csv in a folder."""
    root = tmp_path_factory.mktemp("review-run")
    photos, video = make_inputs(root / "inputs", astronaut)
    run_cli("label", str(photos), str(video), "-o", str(root / "out.csv"), "--quiet", check=True, timeout=180)
    return root / "out.csv"


def fresh_copy(labelled: Path, folder: Path) -> Path:
    """The run's CSV and run.json in a folder of the test's own, so each test has its own review file."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(labelled, folder / "out.csv")
    shutil.copy(labelled.with_name("out.run.json"), folder / "out.run.json")
    return folder / "out.csv"


# --------------------------------------------------------------------------------------------- a reference

def reference_items(rows: list[dict]) -> list[tuple]:
    """The review's items computed the plain way: each ok photo row, and each run of a video track's rows over
    consecutive analysed frames with one label; as review-file keys with the row count and label."""
    found = []
    analysed: dict[str, list[int]] = {}
    tracks: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        if row["frame"] and row["status"] in ("ok", "no_face"):
            analysed.setdefault(row["source"], []).append(int(row["frame"]))
        if row["status"] != "ok":
            continue
        if not row["frame"]:
            found.append(((row["source"], int(row["face"])), 1, row["emotion"]))
        else:
            tracks.setdefault((row["source"], int(row["track"])), []).append(row)
    for (source, track), members in tracks.items():
        position = {frame: i for i, frame in enumerate(sorted(set(analysed[source])))}
        members.sort(key=lambda r: int(r["frame"]))
        run = [members[0]]
        for row in members[1:] + [None]:
            if row is not None and row["emotion"] == run[-1]["emotion"] and \
                    position[int(row["frame"])] == position[int(run[-1]["frame"])] + 1:
                run.append(row)
                continue
            found.append(((source, track, int(run[0]["frame"]), int(run[-1]["frame"])), len(run), run[0]["emotion"]))
            run = [row]
    return found


def expected_applied(rows: list[dict], decisions: dict[tuple, str]) -> list[list[str]]:
    """What --apply must write for ``decisions`` (key -> final decision), computed from the rows directly."""
    out = [[*COLUMNS, *APPLIED_COLUMNS]]
    for row in rows:
        values = [row[c] for c in COLUMNS]
        if row["status"] != "ok":
            out.append([*values, "model", "", ""])
            continue
        decision = None
        for key, value in decisions.items():
            if len(key) == 2 and not row["frame"] and (row["source"], int(row["face"])) == key:
                decision = value
            elif len(key) == 4 and row["frame"] and row["source"] == key[0] and int(row["track"]) == key[1] \
                    and key[2] <= int(row["frame"]) <= key[3]:
                decision = value
        if decision is None:
            out.append([*values, "model", row["emotion"], row["confidence"]])
            continue
        changed = dict(row)
        if decision == "not_a_face":
            changed.update(status="not_a_face", emotion="", confidence="")
        else:
            changed.update(emotion=decision, confidence=row[decision])
        out.append([*(changed[c] for c in COLUMNS), "person", row["emotion"], row["confidence"]])
    return out


# --------------------------------------------------------------------------------------------- a server

class ReviewServer:
    """``fer-batch review CSV --no-browser`` as a subprocess: the URL from its first stdout line (within a
    deadline), and always killed at the end (use it in a ``with``)."""

    def __init__(self, csv_path: Path, *extra: str, timeout: float = 30):
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.stderr_path = csv_path.with_name(f"server-{time.monotonic_ns()}.err")
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen([sys.executable, "-m", "fer_batch", "review", str(csv_path),
                                             "--no-browser", *extra], stdout=subprocess.PIPE, stderr=stderr,
                                            env=env, start_new_session=True)
        try:
            self.url = self._first_line(timeout)
        except BaseException:
            self.kill()
            raise
        parts = urlsplit(self.url)
        self.port = parts.port
        self.token = parts.query.removeprefix("token=")

    def _first_line(self, timeout: float) -> str:
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            line = b""
            deadline = time.monotonic() + timeout
            while not line.endswith(b"\n"):
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"fer-batch review printed no URL in {timeout:.0f} s: "
                                         f"{self.stderr_path.read_text()[-2000:]}")
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"fer-batch review ended (status {self.process.wait(10)}) without a URL: "
                                         f"{self.stderr_path.read_text()[-2000:]}")
                line += chunk
        return line.decode().splitlines()[0]

    def request(self, method: str, path: str, body=None, token: str | None = "", host: str | None = None,
                origin: str | None = "", headers: dict | None = None) -> tuple[int, dict, bytes]:
        """One request; ``token``: "" sends the right one as a cookie, None none, anything else that; ``origin``
        "" the page's own (for POSTs)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = {"Host": host or f"127.0.0.1:{self.port}", **(headers or {})}
        if token is not None:
            sent["Cookie"] = f"fer_review_{self.port}={token or self.token}"
        data = None
        if method == "POST":
            if origin is not None:
                sent["Origin"] = origin or f"http://127.0.0.1:{self.port}"
            sent.setdefault("Content-Type", "application/json")
            data = json.dumps(body if body is not None else {}).encode()
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def post(self, path: str, body: dict) -> dict:
        status, _, data = self.request("POST", path, body)
        assert status == 200, data
        return json.loads(data)

    def get(self, path: str) -> dict:
        status, _, data = self.request("GET", path)
        assert status == 200, data
        return json.loads(data)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process.stdout.close()

    def __enter__(self) -> ReviewServer:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def item_ids(server: ReviewServer) -> dict[tuple, int]:
    """Review-file key -> item id, from the server's own list."""
    listing = server.get("/api/items")
    columns = listing["items"]
    ids = {}
    for item in range(len(columns["source"])):
        name = listing["sources"][columns["source"][item]]
        key = (name, columns["face"][item]) if columns["first"][item] < 0 else \
            (name, columns["track"][item], columns["first"][item], columns["last"][item])
        ids[key] = item
    return ids


# --------------------------------------------------------------------------------------------- the items

def test_items_are_photo_faces_and_video_track_segments(labelled):
    rows = read_csv(labelled)
    items = ReviewItems(labelled)
    found = [(items.key(i), int(items.rows[i]), items.model_emotion(i)) for i in range(len(items))]
    expected = reference_items(rows)
    assert sorted(found) == sorted(expected)
    photos = [key for key, _, _ in found if len(key) == 2]
    assert len(photos) == 5  # the astronaut, three in the group photo, one LFW face; no face and broken: none
    segments = [(key, count, emotion) for key, count, emotion in found if len(key) == 4]
    # The LFW face's track: a smile, a straight face, a smile again, cut once more by the empty frame.
    by_track: dict[int, list] = {}
    for key, _, emotion in segments:
        by_track.setdefault(key[1], []).append((key[2], key[3], emotion))
    assert len(by_track) == 2
    labels = [len({emotion for _, _, emotion in runs}) for runs in by_track.values()]
    assert max(labels) >= 2, by_track
    assert all(not first <= BLANK_FRAME <= last for first, last, _ in sum(by_track.values(), []))
    # Least confident first is the page's default: each item carries its (mean) confidence.
    confidences = {row["source"]: float(row["confidence"]) for row in rows
                   if row["status"] == "ok" and not row["frame"]}
    astronaut = next(i for i in range(len(items)) if items.key(i)[0].endswith("astronaut.jpg"))
    assert items.confidence[astronaut] == pytest.approx(confidences[items.key(astronaut)[0]], abs=1e-6)


def test_detail_shows_first_middle_and_last_frame_of_a_segment(labelled):
    items = ReviewItems(labelled)
    rows = [r for r in read_csv(labelled) if r["status"] == "ok" and r["frame"]]
    segment = max((i for i in range(len(items)) if items.first[i] >= 0), key=lambda i: items.rows[i])
    source, track, first, last = items.key(segment)
    members = [r for r in rows if int(r["track"]) == track and first <= int(r["frame"]) <= last]
    detail = items.detail(segment)
    assert [s.frame for s in detail.shown] == [int(members[i]["frame"]) for i in (0, len(members) // 2, -1)]
    assert detail.shown[0].box == tuple(int(members[0][k]) for k in ("x", "y", "w", "h"))
    np.testing.assert_allclose(detail.probabilities, np.mean([[float(r[e]) for e in EMOTIONS] for r in members], 0),
                               atol=1e-9)


def test_the_fast_parser_reads_what_the_csv_module_reads(tmp_path, monkeypatch):
    """Names with commas, quotes and newlines, error rows with commas, a torn last line, and blocks so small that
    rows and quoted fields run across them."""
    rng = np.random.default_rng(3)
    path = tmp_path / "odd.csv"
    names = ['plain.mp4', 'with, comma.mp4', 'with "quotes".mp4', 'two\nlines.mp4', 'photo, 1.jpg', 'p2.png']
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for frame in range(40):
            for name in names[:4]:
                if frame == 7:
                    writer.writerow({"source": name, "frame": frame, "time_s": f"{frame / 25:.3f}",
                                     "status": "no_face"})
                    continue
                for track in (0, 1):
                    probabilities = rng.dirichlet(np.ones(7))
                    probabilities[(frame // 5 + track) % 7] += 3
                    probabilities /= probabilities.sum()
                    top = int(probabilities.argmax())
                    writer.writerow({"source": name, "frame": frame, "time_s": f"{frame / 25:.3f}", "face": track,
                                     "track": track + 3, "x": 10, "y": 20, "w": 30, "h": 40, "face_score": "0.99",
                                     "emotion": EMOTIONS[top], "confidence": f"{probabilities[top]:.6f}",
                                     **{e: f"{p:.6f}" for e, p in zip(EMOTIONS, probabilities)}, "smooth_s": "0",
                                     "status": "ok", "error": ""})
        for face, name in enumerate(names[4:]):
            writer.writerow({"source": name, "face": face, "x": 1, "y": 2, "w": 3, "h": 4, "emotion": "sad",
                             "confidence": "1e-01", **{e: "0.1" for e in EMOTIONS}, "status": "ok"})
        writer.writerow({"source": "bad.mp4", "status": "error", "error": "cannot open video (corrupt, truncated)"})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("torn.jpg,,,0,,1,2,3")
    reference = sorted(reference_items([r for r in read_csv(path) if len(r) == len(COLUMNS) and
                                        r.get("status") and not r["source"].startswith("torn")]))
    monkeypatch.setattr(review_items, "BLOCK_BYTES", 997)
    items = ReviewItems(path)
    assert sorted((items.key(i), int(items.rows[i]), items.model_emotion(i)) for i in range(len(items))) == reference
    assert set(items.sources) == {*names, "bad.mp4"}  # every name the rows give, the error row's too
    photo = next(i for i in range(len(items)) if items.key(i)[0] == "photo, 1.jpg")
    assert items.confidence[photo] == pytest.approx(0.1)
    assert items.detail(photo).shown[0].box == (1, 2, 3, 4)


def review_cli(capsys, *args: str) -> tuple[int, str]:
    """``fer-batch review ARGS`` in this process (for answers that come before any server starts)."""
    from fer_batch.cli import main

    status = main(["review", *args])
    return status, capsys.readouterr().err


def test_a_file_that_is_not_a_labelling_csv_is_refused_by_name(tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ReviewError, match=r"other\.csv: not a fer-batch CSV \(missing column"):
        ReviewItems(other)
    status, message = review_cli(capsys, str(other), "--no-browser")
    assert status == 2 and "other.csv: not a fer-batch CSV" in message
    status, message = review_cli(capsys, str(tmp_path / "missing.csv"), "--no-browser")
    assert status == 2 and "missing.csv: cannot read" in message
    status, message = review_cli(capsys, str(other), "--port", "70000")
    assert status == 2 and "--port must lie in 0..65535" in message


# --------------------------------------------------------------------------------------------- the review file

def test_the_review_file_is_append_only_locked_and_cut_at_a_torn_line(tmp_path):
    path = tmp_path / "out.review.csv"
    with ReviewLog(path) as log:
        log.decide(("a.jpg", 0), "sad", "choose", 1, "happy")
        log.decide(("v.mp4", 1, 0, 9), "not_a_face", "not_a_face", 10, "happy")
        with pytest.raises(ReviewError, match="another fer-batch review has it open"):
            ReviewLog(path)
        log.undo(lambda key: 10, lambda key: "happy")
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(REVIEW_COLUMNS) and len(lines) == 4
    assert [r.action for r in read_records(path)] == ["choose", "not_a_face", "undo"]
    with open(path, "a") as handle:
        handle.write("2026-01-01T00:00:00+00:00,choose,angry,a.jp")  # a write cut off
    with ReviewLog(path) as log:  # read back: the state where it stopped; undo goes on from there
        assert log.state == {("a.jpg", 0): "sad"} and log.records == 3
        log.undo(lambda key: 1, lambda key: "happy")
        assert log.state == {}
        assert log.undo(lambda key: 1, lambda key: "happy") is None
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 5
    foreign = tmp_path / "foreign.review.csv"
    foreign.write_text("name,value\nx,1\n")
    with pytest.raises(ReviewError, match=r"foreign\.review\.csv: not a fer-batch review file"):
        ReviewLog(foreign)


# --------------------------------------------------------------------------------------------- the server over HTTP

def listening_addresses(port: int) -> list[str]:
    """The local addresses that listen on ``port`` (from /proc/net/tcp and tcp6), as hex strings."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def test_the_server_answers_only_with_the_token_on_its_own_host(labelled, tmp_path):
    csv_path = fresh_copy(labelled, tmp_path / "run")
    secret = Path("/etc/passwd").read_text()[:20] if Path("/etc/passwd").exists() else "root:"
    with ReviewServer(csv_path) as server:
        assert server.url.startswith(f"http://127.0.0.1:{server.port}/?token=") and len(server.token) >= 40
        status, headers, page = server.request("GET", f"/?token={server.token}", token=None)
        assert status == 200 and b"review.js" in page
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        cookie = headers["Set-Cookie"]
        assert f"fer_review_{server.port}={server.token}" in cookie and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert server.request("GET", "/api/items")[0] == 200  # the cookie
        assert server.request("GET", "/api/items", token=None, headers={"X-Review-Token": server.token})[0] == 200
        assert server.request("GET", "/api/items", host=f"localhost:{server.port}")[0] == 200
        refused = [
            server.request("GET", "/", token=None),  # no token
            server.request("GET", "/api/items", token="wrong" + server.token[5:]),
            server.request("GET", f"/?token={server.token[:-1]}", token=None),
            server.request("GET", "/api/items", token="é"),
            server.request("GET", "/api/items", host=f"evil.example:{server.port}"),  # DNS rebinding
            server.request("GET", "/api/items", host="127.0.0.1"),
            server.request("GET", "/api/items", host=f"127.0.0.1:{server.port + 1}"),
        ]
        assert [status for status, _, _ in refused] == [403] * len(refused)
        assert all(b"items" not in body for _, _, body in refused)
        # Only numbers name things: paths, and ids that try to be paths, get nothing.
        source = next(r["source"] for r in read_csv(csv_path) if r["source"].endswith(".jpg"))
        for path in ["/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/review.js/../../../etc/passwd",
                     "/static/review.js", "/fer_batch/review/server.py", f"/{csv_path}", f"/{source}",
                     "/api/crop?id=../../../../etc/passwd&k=0", f"/api/crop?id={source}&k=0", "/api/crop?id=0&k=../0",
                     "/api/crop?id=-1&k=0", "/api/crop?id=99999&k=0", "/api/item?id=1e3", f"/api/crop?path={source}"]:
            status, _, body = server.request("GET", path)
            assert status == 404, (path, status)
            assert secret.encode() not in body and b"\xff\xd8" not in body and b"source,frame" not in body, path
        status, headers, jpeg = server.request("GET", "/api/crop?id=0&k=0")
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and jpeg.startswith(b"\xff\xd8")
        # POSTs: the page's own Origin and JSON only; a refused one writes nothing.
        decision = {"id": 0, "decision": "sad", "action": "choose"}
        assert server.request("POST", "/api/decide", decision, origin=None)[0] == 403
        assert server.request("POST", "/api/decide", decision, origin="http://evil.example")[0] == 403
        assert server.request("POST", "/api/decide", decision, origin=f"http://127.0.0.1:{server.port + 1}")[0] == 403
        assert server.request("POST", "/api/decide", decision, token=None)[0] == 403
        assert server.request("POST", "/api/decide", decision, headers={"Content-Type": "text/plain"})[0] == 415
        assert server.request("POST", "/api/decide", {"id": 0, "decision": "../x", "action": "choose"})[0] == 400
        assert server.request("POST", "/api/decide", {"id": "0", "decision": "sad", "action": "choose"})[0] == 400
        assert server.request("PUT", "/api/decide", decision)[0] == 405
        assert csv_path.with_name("out.review.csv").read_text().count("\n") == 1  # the header only
        assert server.request("POST", "/api/decide", decision)[0] == 200
        # Bound to the loopback address only.
        assert listening_addresses(server.port) == ["0100007F"]


def test_decisions_survive_kill_9_and_apply_exactly(labelled, tmp_path):
    csv_path = fresh_copy(labelled, tmp_path / "run")
    before = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    rows = read_csv(csv_path)
    keys = [key for key, _, _ in reference_items(rows)]
    photo_a, photo_b = [k for k in keys if len(k) == 2][:2]
    segment_a, segment_b, segment_c = [k for k in keys if len(k) == 4][:3]
    with ReviewServer(csv_path) as server:
        ids = item_ids(server)
        server.post("/api/decide", {"id": ids[photo_a], "decision": "sad", "action": "choose"})
        server.post("/api/decide", {"id": ids[photo_b], "decision": "not_a_face", "action": "not_a_face"})
        model = next(emotion for key, _, emotion in reference_items(rows) if key == segment_a)
        server.post("/api/decide", {"id": ids[segment_a], "decision": model, "action": "accept"})
        server.post("/api/decide", {"id": ids[segment_b], "decision": "angry", "action": "choose"})
        undone = server.post("/api/undo", {})
        assert undone["id"] == ids[segment_b] and undone["decision"] == ""
        server.post("/api/decide", {"id": ids[segment_c], "decision": "neutral", "action": "choose"})
        reply = server.post("/api/decide", {"id": ids[segment_c], "decision": "fear", "action": "choose"})
        assert reply["seq"] == 7 and reply["counts"]["reviewed"] == 4
        server.process.send_signal(signal.SIGKILL)  # no goodbye: what was answered must be on disk
        server.process.wait(timeout=10)
        port = server.port
    with ReviewServer(csv_path, "--port", str(port)) as server:  # the same command again, on the same port
        assert server.port == port
        ids = item_ids(server)
        state = server.get("/api/state")
        assert {int(k): v for k, v in state["decisions"].items()} == {
            ids[photo_a]: "sad", ids[photo_b]: "not_a_face", ids[segment_a]: model, ids[segment_c]: "fear"}
        assert state["seq"] == 7 and state["counts"]["reviewed"] == 4 and state["counts"]["changed"] == 3
        undone = server.post("/api/undo", {})  # undo goes on across the restart: fear back to neutral
        assert undone["id"] == ids[segment_c] and undone["decision"] == "neutral"
    output = tmp_path / "reviewed.csv"
    result = run_cli("review", str(csv_path), "--apply", "-o", str(output), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "decided by a person" in result.stderr
    with open(output, newline="", encoding="utf-8") as handle:
        applied = list(csv.reader(handle))
    decisions = {photo_a: "sad", photo_b: "not_a_face", segment_a: model, segment_c: "neutral"}
    assert applied == expected_applied(rows, decisions)
    assert hashlib.sha256(csv_path.read_bytes()).hexdigest() == before  # the labelling CSV is never written
    info = json.loads(output.with_name("reviewed.run.json").read_text())
    assert info["review"]["decided_by_person"] == sum(1 for row in applied[1:] if row[-3] == "person")


def test_two_clients_at_once_write_whole_records(labelled, tmp_path):
    csv_path = fresh_copy(labelled, tmp_path / "run")
    with ReviewServer(csv_path) as server:
        count = len(server.get("/api/items")["items"]["source"])
        errors = []

        def client(offset: int) -> None:
            try:
                for step in range(15):
                    item = (offset + step) % count
                    server.post("/api/decide", {"id": item, "decision": EMOTIONS[step % 7], "action": "choose"})
            except AssertionError as error:
                errors.append(error)

        threads = [threading.Thread(target=client, args=(offset,)) for offset in (0, 5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors and not any(thread.is_alive() for thread in threads)
        assert server.get("/api/state")["seq"] == 30
    records = list(read_records(csv_path.with_name("out.review.csv")))
    assert len(records) == 30 and all(r.action == "choose" for r in records)


def test_a_port_in_use_is_refused_with_a_message(labelled, tmp_path, capsys):
    import socket

    csv_path = fresh_copy(labelled, tmp_path / "run")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, message = review_cli(capsys, str(csv_path), "--no-browser", "--port", str(port))
    assert status == 2 and f"cannot listen on 127.0.0.1:{port}" in message
    assert "--port" in message


def test_apply_refuses_to_write_over_its_inputs(labelled, tmp_path, capsys):
    csv_path = fresh_copy(labelled, tmp_path / "run")
    status, message = review_cli(capsys, str(csv_path), "--apply")
    assert status == 2 and "out.review.csv: no decisions yet" in message
    with ReviewLog(csv_path.with_name("out.review.csv")) as log:
        log.decide((next(r["source"] for r in read_csv(csv_path) if r["source"].endswith(".jpg")), 0), "sad",
                   "choose", 1, "happy")
    for target in (csv_path, csv_path.with_name("out.review.csv")):
        status, message = review_cli(capsys, str(csv_path), "--apply", "-o", str(target))
        assert status == 2 and "write the result to another file" in message
    status, message = review_cli(capsys, str(csv_path), "-o", str(tmp_path / "x.csv"))
    assert status == 2 and "-o/--output is for --apply" in message
    before = csv_path.read_bytes()
    assert review_cli(capsys, str(csv_path), "--apply")[0] == 0
    assert csv_path.with_name("out.reviewed.csv").is_file() and csv_path.read_bytes() == before  # the default
    status, message = review_cli(capsys, str(csv_path.with_name("out.reviewed.csv")), "--apply", "-o",
                                 str(tmp_path / "twice.csv"))
    assert status == 2 and "already has decisions applied" in message


def test_summarize_and_report_read_the_reviewed_csv(labelled, tmp_path):
    from fer_batch.summary import read_rows, summarize

    csv_path = fresh_copy(labelled, tmp_path / "run")
    rows = read_csv(csv_path)
    keys = [key for key, _, _ in reference_items(rows)]
    astronaut = next(k for k in keys if len(k) == 2 and k[0].endswith("astronaut.jpg"))
    group = next(k for k in keys if len(k) == 2 and "group" in k[0])
    segment = next(k for k in keys if len(k) == 4)
    with ReviewLog(csv_path.with_name("out.review.csv")) as log:
        log.decide(astronaut, "surprise", "choose", 1, "happy")
        log.decide(group, "not_a_face", "not_a_face", 1, "happy")
        log.decide(segment, "disgust", "choose", 1, "happy")
    from fer_batch.cli import main

    output = tmp_path / "reviewed.csv"
    assert main(["review", str(csv_path), "--apply", "-o", str(output)]) == 0
    assert main(["summarize", str(output)]) == 0
    summary = {(r["source"], r["track"]): r for r in read_csv(tmp_path / "reviewed.summary.csv")}
    original = {(r["source"], r["track"]): r for r in summarize(read_rows(csv_path))}
    assert summary[(astronaut[0], "")]["dominant"] == "surprise"  # the person's label
    assert int(summary[(group[0], "")]["faces"]) == int(original[(group[0], "")]["faces"]) - 1
    share = float(summary[(segment[0], str(segment[1]))]["share_disgust"])
    assert share > float(original[(segment[0], str(segment[1]))]["share_disgust"])
    assert main(["report", str(output), "-o", str(tmp_path / "reviewed.html")]) == 0
    html = (tmp_path / "reviewed.html").read_text(encoding="utf-8")
    no_face = sum(r["status"] == "no_face" for r in rows)
    assert f"<b>{no_face:,}</b><span>items without a face</span>" in html  # "not a face" is not "no face"
    assert "was not found beside the CSV" not in html  # REVIEWED.run.json came along: the settings are shown


def test_the_report_names_the_model_and_precision_that_were_used(labelled):
    from fer_batch.report import build_report

    info = json.loads(labelled.with_name("out.run.json").read_text())
    assert info["settings"]["model"] is None and info["settings"]["precision"] is None  # the defaults
    html = build_report(labelled, labelled.with_name("report.html"))
    settings = html[html.index("<h3>Settings</h3>"):]
    settings = settings[:settings.index("</table>")]
    assert f"<tr><th>model</th><td>{info['model']['path']}</td></tr>" in settings
    assert "<tr><th>precision</th><td>int8</td></tr>" in settings
    assert "<th>model</th><td>null</td>" not in settings and "<th>precision</th><td>null</td>" not in settings

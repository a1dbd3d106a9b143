"""How long `fer-batch review` takes to open big runs, measured as a user meets it.

    python benchmarks/review_open.py                      # a 13,000-photo CSV and a two-hour video's CSV
    python benchmarks/review_open.py --csv OUT.csv        # your own CSV
    python benchmarks/review_open.py --browser            # also until Chromium shows the first face's page
    python benchmarks/review_open.py --screenshot docs/images/review.png   # the docs' picture (see below)

The CSVs are synthetic but shaped like real runs (``fer_batch.writer``'s columns and number formats): 13,000
photos in 130 folders with 1-3 faces each, some without a face, some broken (error rows with quoted commas); and a
two-hour 25 fps interview with two people (360,000 face rows) whose labels change every few frames, as raw
per-frame labels do, with a few frames nobody is in. Their sources do not exist: opening the review reads the CSV
only; faces are cut from the sources when the page asks for them.

Each round starts ``fer-batch review CSV --no-browser`` as a new process and times (1) until its URL is printed -
the CSV is read and the items built by then - with the CPU time the process used till then (which a busy machine
does not inflate), and (2) until the page, its list and its state have been fetched over HTTP, as the browser does
first; with ``--browser``, (3) from starting another server until a Chromium that is already running has the page
ready (the list filtered and sorted, the first face drawn). The median of ``--rounds`` is printed, with the CPU.

``--screenshot PNG`` labels the README's example photo and a short clip made from it (both NASA's public-domain
astronaut photo) into a temporary folder, makes a few decisions on the page in Chromium and saves it, PNG
compressed to fit the docs.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import os
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fer_batch.labels import EMOTIONS  # noqa: E402
from fer_batch.writer import COLUMNS  # noqa: E402


def write_photos_csv(path: Path, photos: int, seed: int = 0) -> int:
    """A labelling CSV of ``photos`` photos; returns its row count."""
    rng = np.random.default_rng(seed)
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for index in range(photos):
            source = f"photos/{index // 100:03d}/IMG_{index:05d}.jpg"
            luck = rng.random()
            if luck < 0.01:
                writer.writerow([source, *[""] * 18, "", "error", "not a decodable image (22 bytes; truncated, "
                                                                  "corrupt, or not an image)"])
                rows += 1
                continue
            if luck < 0.08:
                writer.writerow([source, *[""] * 19, "no_face", ""])
                rows += 1
                continue
            for face in range(int(rng.choice([1, 1, 1, 2, 3]))):
                writer.writerow(_face_row(rng, source, "", "", face, "", rng.integers(7)))
                rows += 1
    return rows


def write_video_csv(path: Path, hours: float, fps: float = 25.0, tracks: int = 2, seed: int = 0) -> int:
    """A labelling CSV of one video of ``hours`` with ``tracks`` people; returns its row count."""
    rng = np.random.default_rng(seed)
    labels = [6] * tracks
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for frame in range(int(hours * 3600 * fps)):
            time_s = f"{frame / fps:.3f}"
            if rng.random() < 0.002:
                writer.writerow(["interview.mp4", frame, time_s, *[""] * 17, "no_face", ""])
                rows += 1
                continue
            for track in range(tracks):
                if rng.random() < 0.15:  # raw per-frame labels flicker: a new label every ~7 frames
                    labels[track] = int(rng.integers(7))
                writer.writerow(_face_row(rng, "interview.mp4", frame, time_s, track, track, labels[track]))
                rows += 1
    return rows


def _face_row(rng, source, frame, time_s, face, track, label) -> list:
    probabilities = rng.dirichlet(np.ones(7))
    probabilities[label] += 1.5
    probabilities /= probabilities.sum()
    top = int(probabilities.argmax())
    values = [f"{p:.6f}" for p in probabilities]
    x, y = 40 + 300 * face, 60
    return [source, frame, time_s, face, track, x, y, 120, 150, "0.9981", EMOTIONS[top], values[top], *values, "0",
            "ok", ""]


# ------------------------------------------------------------------------------------------------ timing

def start_review(csv_path: Path, timeout: float = 60) -> tuple[subprocess.Popen, str, float, float]:
    """Start the review server; its URL, the seconds until it printed it, and the CPU seconds it had used by
    then (what a busy machine does not inflate)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "fer_batch", "review", str(csv_path), "--no-browser"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
                               start_new_session=True)
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        line = b""
        while not line.endswith(b"\n"):
            if not selector.select(max(0.0, started + timeout - time.perf_counter())):
                stop(process)
                raise SystemExit(f"fer-batch review printed no URL in {timeout:.0f} s")
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise SystemExit(f"fer-batch review stopped with status {process.wait()} before printing a URL")
            line += chunk
    seconds = time.perf_counter() - started
    return process, line.decode().splitlines()[0], seconds, _cpu_seconds(process.pid)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    process.stdout.close()


def fetch_first(url: str) -> int:
    """What the page fetches before it can draw: the page, its list, its state. Returns the list's bytes."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=30)
    cookie = None
    size = 0
    for path in (f"/?{parts.query}", "/review.js", "/review.css", "/api/items", "/api/state"):
        connection.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
        cookie = cookie or response.getheader("Set-Cookie").split(";")[0]
        size = len(body) if path == "/api/items" else size
    connection.close()
    return size


def time_browser(csv_path: Path, browser) -> tuple[float, float]:
    """Seconds from starting the server to the page ready in an already running Chromium, and of those the
    seconds from the browser's navigation start to the page ready (its own timing)."""
    started = time.perf_counter()
    process, url, _, _ = start_review(csv_path)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url, timeout=30000)
        page.wait_for_selector("body[data-ready=true]", timeout=30000)
        seconds = time.perf_counter() - started
        in_page = int(page.get_attribute("body", "data-ready-ms")) / 1000
        page.close()
        return seconds, in_page
    finally:
        stop(process)


def measure(csv_path: Path, rounds: int, with_browser: bool) -> dict:
    printed, cpu, fetched, shown, in_page, size = [], [], [], [], [], 0
    playwright = browser = None
    if with_browser:
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
    try:
        for _ in range(rounds):
            process, url, seconds, cpu_seconds = start_review(csv_path)
            try:
                started = time.perf_counter() - seconds
                size = fetch_first(url)
                fetched.append(time.perf_counter() - started)
                printed.append(seconds)
                cpu.append(cpu_seconds)
            finally:
                stop(process)
            if browser is not None:
                seconds, page_seconds = time_browser(csv_path, browser)
                shown.append(seconds)
                in_page.append(page_seconds)
    finally:
        if playwright is not None:
            browser.close()
            playwright.stop()
    return {"printed": statistics.median(printed), "cpu": statistics.median(cpu),
            "fetched": statistics.median(fetched), "shown": statistics.median(shown) if shown else None,
            "in_page": statistics.median(in_page) if in_page else None, "list_bytes": size}


def count_items(csv_path: Path) -> int:
    from fer_batch.review.items import ReviewItems

    return len(ReviewItems(csv_path))


# ------------------------------------------------------------------------------------------------ screenshot

def screenshot(target: Path) -> None:
    """Label the README's example and a clip made of it, review a little in Chromium, save the page as PNG."""
    import cv2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "photos").mkdir()
        astronaut = cv2.imread(str(REPO / "examples" / "astronaut.jpg"))
        cv2.imwrite(str(folder / "photos" / "astronaut.jpg"), astronaut)
        cv2.imwrite(str(folder / "photos" / "astronaut, mirrored.jpg"), astronaut[:, ::-1])
        _write_clip(folder / "interview.mp4", astronaut)
        # Relative INPUTs, as a user types them: the CSV names the sources as photos/... and interview.mp4.
        subprocess.run([sys.executable, "-m", "fer_batch", "label", "photos", "interview.mp4", "-o", "emotions.csv",
                        "--quiet"], check=True, cwd=folder, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        process, url, _, _ = start_review(folder / "emotions.csv")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
                page = browser.new_page(viewport={"width": 1240, "height": 770})
                page.set_default_timeout(10000)
                page.goto(url)
                page.wait_for_selector("body[data-ready=true]")
                for number, key in enumerate(("a", "7", "a"), 1):
                    page.keyboard.press(key)
                    page.wait_for_selector(f'#save-status[data-acked="{number}"]')
                page.fill("#filter-source", "interview")  # a video segment: its first, middle and last frame
                page.keyboard.press("Enter")
                deadline = time.monotonic() + 10  # polled from here: the page's CSP forbids wait_for_function
                while not page.evaluate("[...document.querySelectorAll('#frames img, #strip img')].every("
                                        "i => i.complete) && document.querySelector('#bars tr') !== null") and \
                        time.monotonic() < deadline:
                    page.wait_for_timeout(100)
                raw = folder / "page.png"
                page.screenshot(path=str(raw))
                browser.close()
        finally:
            stop(process)
        image = cv2.imread(str(raw))
        # Fewer colours keep the PNG small: the page is flat colour and text, the faces survive 64 levels fine.
        quantised = (image // 4 * 4 + 2).astype(np.uint8)
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), quantised, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {target} ({target.stat().st_size / 1024:.0f} KB)")


def _write_clip(path: Path, astronaut: np.ndarray, frames: int = 60) -> None:
    """Two people made of the astronaut: one turning her head (a third of the time with a hand over her mouth,
    a third mirrored in a darker light), one beside her; 25 fps H.264 through PyAV, as the tests write clips."""
    import fractions

    import av
    import cv2

    head = astronaut[20:300, 120:340]
    other = cv2.resize(head[:, ::-1], None, fx=0.75, fy=0.75)
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=25, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for index in range(frames):
            frame = np.full((360, 640, 3), 40, np.uint8)
            angle = 28 * np.sin(index / 6)
            turned = cv2.warpAffine(head, cv2.getRotationMatrix2D((110, 140), angle, 0.9), (220, 280),
                                    borderMode=cv2.BORDER_REPLICATE)
            if frames // 3 <= index < 2 * frames // 3:  # a hand over her mouth: the smile is gone
                turned = turned.copy()
                turned[112:152, 62:150] = (70, 95, 150)
            elif index >= 2 * frames // 3:
                turned = (turned[:, ::-1] * 0.55).astype(np.uint8)
            frame[40:320, 40 + 2 * index:260 + 2 * index] = turned
            frame[80:290, 430:595] = other
            video = av.VideoFrame.from_ndarray(frame, format="bgr24")
            video.pts, video.time_base = index, fractions.Fraction(1, 25)
            for packet in stream.encode(video):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, help="time this CSV instead of the synthetic ones")
    parser.add_argument("--photos", type=int, default=13_000, help="photos in the synthetic photo run (13000)")
    parser.add_argument("--hours", type=float, default=2.0, help="hours of the synthetic video (2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per CSV; the median is printed (3)")
    parser.add_argument("--browser", action="store_true", help="also time until Chromium has the page ready")
    parser.add_argument("--screenshot", type=Path, metavar="PNG", help="only save the docs' screenshot here")
    args = parser.parse_args()
    if args.screenshot:
        screenshot(args.screenshot)
        return
    from fer_batch.system import describe_hardware

    print(f"machine: {describe_hardware()}; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as folder:
        cases = []
        if args.csv:
            cases.append((args.csv.name, args.csv, None))
        else:
            photos = Path(folder) / "photos.csv"
            cases.append((f"{args.photos:,} photos", photos, write_photos_csv(photos, args.photos)))
            video = Path(folder) / "video.csv"
            cases.append((f"{args.hours:g} h video, 2 tracks", video, write_video_csv(video, args.hours)))
        for name, path, rows in cases:
            result = measure(path, args.rounds, args.browser)
            rows = rows if rows is not None else sum(1 for _ in open(path, encoding="utf-8")) - 1
            shown = (f", page ready in Chromium {result['shown']:.2f} s (of which {result['in_page']:.2f} s from the "
                     f"page's navigation start)" if result["shown"] is not None else "")
            print(f"{name}: {rows:,} rows ({path.stat().st_size / 1e6:.1f} MB), {count_items(path):,} items; URL "
                  f"printed {result['printed']:.2f} s ({result['cpu']:.2f} s CPU), page + list "
                  f"({result['list_bytes'] / 1e6:.2f} MB) + state fetched {result['fetched']:.2f} s{shown} (median "
                  f"of {args.rounds})")


if __name__ == "__main__":
    main()

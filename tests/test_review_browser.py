"""The review page in a real browser: Debian's Chromium driven by Playwright for Python (no browser download), on
the real labelling run of test_review.py - keys pressed, decisions on disk by the time the page says saved, video
segments, two tabs, and the server killed with SIGKILL mid-review and started again with nothing lost.

Every server is a subprocess with a deadline for its URL and is always killed; Playwright waits at most a few
seconds for anything. CI installs Chromium (.ci/run): there a missing browser fails these tests instead of
skipping them.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import time
from contextlib import contextmanager

import pytest
from conftest import read_csv
from test_review import ReviewServer, expected_applied, fresh_copy, labelled, reference_items  # noqa: F401

from fer_batch.labels import EMOTIONS
from fer_batch.review.decisions import apply_review, final_decisions, read_records

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pip install playwright (the Python package only: the system Chromium is used)
    sync_playwright = None
IN_CI = os.environ.get("CI") == "true"
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None and not IN_CI,
                       reason="needs Chromium (apt-get install -y chromium; CI installs it)"),
    pytest.mark.skipif(sync_playwright is None and not IN_CI,
                       reason="needs Playwright for Python (pip install playwright; no browser download)"),
]
WAIT_MS = 5000


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None or CHROMIUM is None:  # only in CI, where these tests must run
        pytest.fail("CI needs Playwright for Python (pip install playwright) and Chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, timeout=20000)
        try:
            yield chromium
        finally:
            chromium.close()


@contextmanager
def opened(browser, url: str):
    """A fresh browser context on the review URL, waited on until the page has its list; its errors are
    collected and must stay empty."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        yield page
        assert not errors, errors
    finally:
        context.close()


def saved(page, count: int) -> None:
    """Wait until the page has had ``count`` answers from the server and says saved."""
    page.wait_for_selector(f'#save-status[data-acked="{count}"][data-state="saved"]')


def wait_until(page, expression: str, seconds: float = WAIT_MS / 1000) -> None:
    """Poll a JavaScript expression until it is true. (Playwright's wait_for_function polls by evaluating a string
    inside the page, which the page's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {seconds:.0f} s: {expression}")
        page.wait_for_timeout(50)


def records(csv_path):
    return list(read_records(csv_path.with_name("out.review.csv")))


@pytest.fixture
def review(labelled, tmp_path):  # noqa: F811 (the fixture imported above)
    csv_path = fresh_copy(labelled, tmp_path / "run")
    with ReviewServer(csv_path) as server:
        yield csv_path, server


def test_keys_decide_and_each_decision_is_on_disk_when_the_page_says_saved(browser, review):
    csv_path, server = review
    rows = read_csv(csv_path)
    model = {key: emotion for key, _, emotion in reference_items(rows)}
    with opened(browser, server.url) as page:
        assert page.url.endswith("/")  # the token left the address bar for the cookie
        legend = page.inner_text("#legend")
        keys = [f"{number} {emotion}" for number, emotion in enumerate(EMOTIONS, 1)]
        for text in ("accept the model's label", "not a face", "undo", *keys):
            assert text in legend
        assert page.inner_text("#count-left") == str(len(model)) and page.inner_text("#count-reviewed") == "0"

        page.keyboard.press("4")  # happy, on the least confident face
        saved(page, 1)
        first = records(csv_path)[-1]
        assert (first.action, first.decision) == ("choose", "happy")
        assert first.key == min(model, key=lambda key: confidence(rows, key))
        changed = int(model[first.key] != "happy")
        assert page.inner_text("#count-reviewed") == "1" and page.inner_text("#count-changed") == str(changed)

        page.keyboard.press("a")  # accept, on the next one
        saved(page, 2)
        second = records(csv_path)[-1]
        assert (second.action, second.decision) == ("accept", model[second.key])
        page.keyboard.press("x")
        saved(page, 3)
        third = records(csv_path)[-1]
        assert (third.action, third.decision) == ("not_a_face", "not_a_face")
        page.keyboard.press("z")  # undo: back on that face, not reviewed again
        saved(page, 4)
        assert (records(csv_path)[-1].action, records(csv_path)[-1].decision, records(csv_path)[-1].key) == \
            ("undo", "", third.key)
        assert page.inner_text("#decision") == "not reviewed yet" and page.inner_text("#position").startswith("3 of")
        page.keyboard.press("k")
        assert page.inner_text("#position").startswith("2 of")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("j")
        assert page.inner_text("#position").startswith("4 of")

        page.click("#emotion-buttons button:has-text('neutral')")  # the mouse works too
        saved(page, 5)
        assert records(csv_path)[-1].decision == "neutral"
        page.keyboard.press("Control+z")
        saved(page, 6)
        assert records(csv_path)[-1].action == "undo"
        counts = server.get("/api/state")["counts"]
        assert page.inner_text("#count-reviewed") == str(counts["reviewed"]) == "2"
        assert page.inner_text("#count-left") == str(counts["left"])


def confidence(rows, key) -> float:
    members = [r for r in rows if r["status"] == "ok" and (
        (len(key) == 2 and not r["frame"] and (r["source"], int(r["face"])) == key) or
        (len(key) == 4 and r["frame"] and r["source"] == key[0] and int(r["track"]) == key[1] and
         key[2] <= int(r["frame"]) <= key[3]))]
    return sum(float(r["confidence"]) for r in members) / len(members)


def test_a_video_segment_shows_three_frames_and_one_decision_covers_its_rows(browser, review, tmp_path):
    csv_path, server = review
    with opened(browser, server.url) as page:
        page.select_option("#filter-order", "file")
        page.fill("#filter-source", "interview")  # the current face, a photo, is filtered out: the first one shows
        page.fill("#filter-track", "0")
        page.keyboard.press("Enter")  # leaves the field: keys review again
        assert page.inner_text("#where").splitlines()[-1].startswith("video, track 0, frames 0–9 (10 analysed")
        wait_until(page, "[...document.querySelectorAll('#frames img')].length === 3 && "
                         "[...document.querySelectorAll('#frames img')].every(i => i.complete && i.naturalWidth > 0)")
        captions = page.locator("#frames figcaption").all_inner_texts()
        assert [c.split(" · ")[0] for c in captions] == ["frame 0", "frame 5", "frame 9"]
        page.keyboard.press("5")  # sad
        saved(page, 1)
    record = records(csv_path)[-1]
    assert record.key[1:] == (0, 0, 9) and record.rows == 10 and record.decision == "sad"
    applied = apply_review(csv_path, tmp_path / "reviewed.csv")
    assert applied.by_person == 10
    with open(tmp_path / "reviewed.csv", newline="", encoding="utf-8") as handle:
        video = [r for r in csv.DictReader(handle) if r["source"] == record.key[0] and r["status"] == "ok"]
    decided = [(int(r["track"]), int(r["frame"])) for r in video if r["decided_by"] == "person"]
    assert decided == [(0, frame) for frame in range(10)]
    assert all(r["emotion"] == "sad" for r in video if r["decided_by"] == "person")


def test_kill_9_mid_review_loses_nothing_and_two_tabs_agree(browser, labelled, tmp_path):  # noqa: F811
    csv_path = fresh_copy(labelled, tmp_path / "run")
    rows = read_csv(csv_path)
    with ReviewServer(csv_path) as server, opened(browser, server.url) as page:
        for number, key in enumerate(("2", "3", "x"), 1):
            page.keyboard.press(key)
            saved(page, number)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        page.keyboard.press("4")  # the server is gone: the page must not say saved
        page.wait_for_selector('#save-status[data-state="error"]')
        assert page.inner_text("#save-status").startswith("NOT saved")
    assert len(records(csv_path)) == 3
    with ReviewServer(csv_path) as server:
        with opened(browser, server.url) as first, opened(browser, server.url) as second:
            assert first.inner_text("#count-reviewed") == "3"  # where the person stopped
            first.check("#filter-unreviewed")
            assert first.inner_text("#position").endswith(f"of {len(reference_items(rows)) - 3} shown")
            first.keyboard.press("6")
            saved(first, 1)
            second.keyboard.press("7")  # the other tab, on its own current face: it hears of the first tab's too
            saved(second, 1)
            reviewed = server.get("/api/state")["counts"]["reviewed"]
            assert reviewed == len(final_decisions(records(csv_path)))
            wait_until(second, f"document.getElementById('count-reviewed').textContent === '{reviewed}'")
    made = records(csv_path)
    assert len(made) == 5 and [r.decision for r in made] == ["disgust", "fear", "not_a_face", "surprise", "neutral"]
    applied = tmp_path / "reviewed.csv"
    apply_review(csv_path, applied)
    with open(applied, newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle)) == expected_applied(
            rows, {key: decision for key, (_, decision) in final_decisions(made).items()})


def test_the_loop_label_review_apply_finetune_export_label(browser, labelled, tmp_path):  # noqa: F811
    """The whole loop on real faces: a person labels every face "sad" in the page, --apply writes the reviewed CSV,
    fer-train finetune learns from it, export writes the model, and fer-batch label with that model calls the
    photos' faces what the person called them."""
    pytest.importorskip("tensorflow")
    import subprocess
    import sys

    from conftest import REPO, run_cli

    csv_path = fresh_copy(labelled, tmp_path / "run")
    with ReviewServer(csv_path) as server, opened(browser, server.url) as page:
        left = int(page.inner_text("#count-left"))
        for count in range(1, left + 1):
            page.keyboard.press("5")  # sad
            saved(page, count)
        assert page.inner_text("#count-left") == "0"
    reviewed = tmp_path / "reviewed.csv"
    assert run_cli("review", str(csv_path), "--apply", "-o", str(reviewed)).returncode == 0
    people = [row for row in read_csv(reviewed) if row["decided_by"] == "person" and row["status"] == "ok"]
    assert people and all(row["emotion"] == "sad" for row in people)

    run, model = tmp_path / "mine", tmp_path / "mine.onnx"
    for args in (["finetune", str(reviewed), "--out", str(run), "--steps", "60", "--folds", "0", "--lr", "3e-4"],
                 ["export", str(run), "-o", str(model)]):
        result = subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True,
                                cwd=REPO, timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
    photos = sorted({row["source"] for row in people if not row["frame"]})
    again = tmp_path / "again.csv"
    assert run_cli("label", *photos, "-o", str(again), "--model", str(model), "--quiet").returncode == 0
    labels = [row["emotion"] for row in read_csv(again) if row["status"] == "ok"]
    before = [row["model_emotion"] for row in people if not row["frame"]]
    assert len(labels) == len(before) >= 5
    assert sum(label == "sad" for label in labels) >= max(len(labels) - 1, sum(b == "sad" for b in before) + 2)

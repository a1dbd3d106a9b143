"""One self-contained HTML page per run: ``fer-batch report OUT.csv -o report.html`` (or ``label --report``).

The page opens offline in any browser: inline CSS, inline SVG charts drawn by :mod:`fer_batch.draw`, thumbnails as
inline base64 JPEG, no JavaScript, no network. It holds the run's settings and versions (from ``OUT.run.json``
beside the CSV, when the runner wrote one), totals, a table per source and track, per-folder totals, error and
no-face counts with their reasons, and for the first sources a detailed section: the annotated copy (a ``<video>``
or image, linked relative to the page), per-track face thumbnails, shares and timelines.

Large runs stay quick to open: the CSV is read as a stream into per-track sums, detail is kept for the first
``MAX_DETAILED`` sources only, tables and timelines are capped, and the page says what it left out.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path, PurePath
from urllib.parse import quote

import cv2
import numpy as np

from fer_batch.draw import hex_color, svg_legend, svg_shares, svg_timeline
from fer_batch.labels import EMOTIONS
from fer_batch.sources import InputError, kind_of, read_image
from fer_batch.summary import run_info_path
from fer_batch.writer import check_columns

MAX_DETAILED = 30  # sources with a detailed section (video, thumbnails, timelines)
MAX_TRACKS = 12  # tracks per detailed source shown with thumbnail and timeline (the longest ones)
MAX_TABLE_ROWS = 500  # rows of the per-source-and-track table
MAX_FOLDERS = 200  # rows of the per-folder table
MAX_ERRORS = 200  # error rows listed one by one (all of them are counted by reason)
TIMELINE_POINTS = 300  # points per timeline: hours of video still draw in a few kilobytes
THUMBNAIL_HEIGHT = 96

_REQUIRED = ("source", "frame", "time_s", "track", "x", "y", "w", "h", "confidence", "status", "error", *EMOTIONS)


@dataclass
class TrackStats:
    """Running sums for one image (track "") or one video track; the series only for detailed sources."""

    track: str
    frames: set = field(default_factory=set)
    faces: int = 0
    first_s: float | None = None
    last_s: float | None = None
    sums: np.ndarray = field(default_factory=lambda: np.zeros(len(EMOTIONS)))
    tops: np.ndarray = field(default_factory=lambda: np.zeros(len(EMOTIONS), np.int64))
    best: tuple[float, str, tuple[int, int, int, int]] | None = None  # confidence, frame, box
    times: list[float] | None = None
    probabilities: list[list[float]] | None = None

    @property
    def shares(self) -> np.ndarray:
        return self.tops / max(self.faces, 1)

    @property
    def means(self) -> np.ndarray:
        return self.sums / max(self.faces, 1)

    @property
    def dominant(self) -> str:
        shares, means = self.shares, self.means
        return EMOTIONS[max(range(len(EMOTIONS)), key=lambda i: (shares[i], means[i]))]


@dataclass
class SourceStats:
    name: str
    kind: str  # "image", "video" or "other" (an error row for something that is neither)
    detailed: bool
    items: set = field(default_factory=set)  # analysed frames ("" for an image)
    faces: int = 0
    no_face: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (frame, reason)
    tracks: dict[str, TrackStats] = field(default_factory=dict)
    tops: np.ndarray = field(default_factory=lambda: np.zeros(len(EMOTIONS), np.int64))
    end_s: float = 0.0

    @property
    def readable(self) -> bool:
        """Whether any item of it was read (a source with one frameless error row could not be opened)."""
        return bool(self.items) or any(frame for frame, _ in self.errors)


def read_stats(csv_path: str | Path) -> dict[str, SourceStats]:
    """Stream the labelling CSV into per-source, per-track statistics (sources in CSV order). Raises ValueError
    for a file that is not a fer-batch CSV and OSError when it cannot be read."""
    sources: dict[str, SourceStats] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        check_columns(csv_path, header, _REQUIRED)
        col = {name: header.index(name) for name in _REQUIRED}
        emotion_columns = [col[e] for e in EMOTIONS]
        reviewed = "decided_by" in header and "emotion" in header  # fer-batch review --apply wrote it
        decided_by, emotion = (header.index("decided_by"), header.index("emotion")) if reviewed else (None, None)
        for values in reader:
            if len(values) < len(header):
                continue  # a torn last line of an interrupted run
            name, frame, status = values[col["source"]], values[col["frame"]], values[col["status"]]
            source = sources.get(name)
            if source is None:
                kind = kind_of(Path(name)) or "other"
                source = sources[name] = SourceStats(name, kind, detailed=len(sources) < MAX_DETAILED)
            if status == "error":
                source.errors.append((frame, values[col["error"]]))
                continue
            source.items.add(frame)
            time_text = values[col["time_s"]]
            if time_text:
                source.end_s = max(source.end_s, float(time_text))
            if status == "not_a_face":  # a person said so (fer-batch review): not a face, not a missed one
                continue
            if status != "ok":
                source.no_face += 1
                continue
            probabilities = np.array([float(values[c]) for c in emotion_columns])
            top = int(probabilities.argmax())
            if decided_by is not None and values[decided_by] == "person":
                top = EMOTIONS.index(values[emotion])  # the person's label, not the model's
            track_id = values[col["track"]]
            track = source.tracks.get(track_id)
            if track is None:
                track = source.tracks[track_id] = TrackStats(track_id)
                if source.detailed and source.kind == "video":
                    track.times, track.probabilities = [], []
            source.faces += 1
            source.tops[top] += 1
            track.faces += 1
            track.frames.add(frame)
            track.sums += probabilities
            track.tops[top] += 1
            if time_text:
                time_s = float(time_text)
                track.first_s = time_s if track.first_s is None else min(track.first_s, time_s)
                track.last_s = time_s if track.last_s is None else max(track.last_s, time_s)
                if track.times is not None:
                    track.times.append(time_s)
                    track.probabilities.append(probabilities.tolist())
            confidence = float(values[col["confidence"]] or probabilities[top])
            if track.best is None or confidence > track.best[0]:
                box = tuple(int(float(values[col[k]] or 0)) for k in ("x", "y", "w", "h"))
                track.best = (confidence, frame, box)
    return sources


def read_run_info(csv_path: str | Path) -> tuple[dict | None, str]:
    """``OUT.run.json`` beside the CSV as a dict, and a note when it is missing or unreadable."""
    path = run_info_path(csv_path)
    if not path.exists():
        return None, f"{path.name} was not found beside the CSV: settings and versions are unknown; the figures " \
                     f"below come from the CSV alone."
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"{path.name} could not be read ({error}); the figures below come from the CSV alone."
    if not isinstance(info, dict):
        return None, f"{path.name} is not a JSON object; the figures below come from the CSV alone."
    return info, ""


def write_report(csv_path: str | Path, html_path: str | Path, annotated: str | Path | None = None) -> Path:
    """Write the HTML report of the labelling CSV ``csv_path`` to ``html_path`` (atomically) and return its path.

    ``annotated``: the ``--annotate`` folder, whose copies are linked and embedded (default: the one the run
    recorded in OUT.run.json, if it still exists). Raises ValueError for a CSV that is not fer-batch's and OSError
    when a file cannot be read or written; unreadable sources only lose their thumbnails.
    """
    html_path = Path(html_path)
    page = build_report(csv_path, html_path, annotated)
    if html_path.parent != Path(""):
        html_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = html_path.with_name(html_path.name + ".part")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(html_path)
    return html_path


def build_report(csv_path: str | Path, html_path: str | Path, annotated: str | Path | None = None) -> str:
    """The report's HTML text (see :func:`write_report`); links are relative to ``html_path``'s folder."""
    csv_path, html_path = Path(csv_path), Path(html_path)
    sources = read_stats(csv_path)
    info, info_note = read_run_info(csv_path)
    folder = _annotated_folder(annotated, info, csv_path)
    copies = _find_copies(sources, folder, info) if folder else {}
    left_out: list[str] = []
    body = [_header(csv_path, info), _notes(info_note, folder, annotated, info)]
    body.append(_overview(sources))
    body.append(_run_section(info))
    tables = [_source_table(sources, copies, html_path, left_out), _folder_table(sources, left_out)]
    body += tables[::-1] if len(sources) > MAX_TABLE_ROWS else tables  # big runs: the aggregate first
    body.append(_problems(sources, left_out))
    body.append(_details(sources, copies, html_path, info, left_out))
    if left_out:
        body.insert(2, '<div class="notice"><b>Left out to keep this page quick to open:</b><ul>' +
                    "".join(f"<li>{escape(line)}</li>" for line in left_out) + "</ul></div>")
    title = f"fer-batch report: {csv_path.name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(b for b in body if b) +
            "\n</body></html>\n")


# ------------------------------------------------------------------------------------------------- sections

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#fafafa;
margin:0 auto;max-width:1180px;padding:16px 24px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:20px 0 6px;word-break:break-all}.meta{color:#666;margin:0 0 12px}
table{border-collapse:collapse;background:#fff;margin:6px 0}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:middle}th{background:#f0f0f0;font-weight:600}td.n,th.n{text-align:right}
tr:nth-child(even) td{background:#fcfcfc}.src{max-width:420px;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}.card{background:#fff;border:1px solid #e3e3e3;
border-radius:6px;padding:8px 14px;min-width:92px}.card b{display:block;font-size:20px}.card span{color:#666}
.notice{background:#fff8e1;border:1px solid #f0d58a;border-radius:6px;padding:8px 14px;margin:10px 0}
.notice ul{margin:4px 0;padding-left:20px}.source{background:#fff;border:1px solid #e3e3e3;border-radius:6px;
padding:4px 16px 12px;margin:14px 0}.track{display:flex;gap:14px;align-items:flex-start;margin:10px 0;
flex-wrap:wrap}.track img{border-radius:4px;border:1px solid #ccc}.thumb-none{width:96px;height:96px;
background:#eee;color:#888;display:flex;align-items:center;justify-content:center;font-size:11px;text-align:center}
video,img.copy{max-width:100%;max-height:480px;background:#000;border-radius:4px}
.dot{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
details{margin:6px 0}summary{cursor:pointer;color:#345}pre{white-space:pre-wrap;background:#fff;
border:1px solid #eee;padding:8px;font-size:12px}.muted{color:#777}.columns{display:flex;flex-wrap:wrap;
gap:0 28px;align-items:flex-start}.columns h3{margin-top:6px}.columns td{max-width:380px;word-break:break-word}
"""


def _header(csv_path: Path, info: dict | None) -> str:
    from fer_batch import __version__

    generated = datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")
    ran = ""
    if info and info.get("finished"):
        ran = f" · run finished {escape(str(info['finished']))}"
    return (f"<h1>Emotions in {escape(csv_path.name)}</h1><p class=\"meta\">{escape(str(csv_path))}{ran} · page "
            f"made {generated} by fer-batch {escape(__version__)}</p>")


def _notes(info_note: str, folder: Path | None, annotated, info: dict | None) -> str:
    notes = [info_note] if info_note else []
    wanted = annotated or (info or {}).get("annotate")
    if wanted and folder is None:
        notes.append(f"The annotated copies' folder {wanted} was not found: no copies are linked.")
    return "".join(f'<p class="muted">{escape(note)}</p>' for note in notes)


def _overview(sources: dict[str, SourceStats]) -> str:
    images = sum(1 for s in sources.values() if s.kind == "image")
    videos = sum(1 for s in sources.values() if s.kind == "video")
    items = sum(len(s.items) for s in sources.values())
    faces = sum(s.faces for s in sources.values())
    no_face = sum(s.no_face for s in sources.values())
    errors = sum(len(s.errors) for s in sources.values())
    tops = sum((s.tops for s in sources.values()), np.zeros(len(EMOTIONS), np.int64))
    cards = [("sources", len(sources)), ("images", images), ("videos", videos), ("analysed items", items),
             ("faces", faces), ("items without a face", no_face), ("errors", errors)]
    html = ['<h2 id="overview">Overview</h2><div class="cards">']
    html += [f"<div class=\"card\"><b>{value:,}</b><span>{label}</span></div>" for label, value in cards]
    html.append("</div>")
    if faces:
        shares = tops / faces
        html.append(f"<p>Top emotion of all {faces:,} faces:</p>{svg_shares(shares, 720, 22)}<br>{svg_legend(720)}")
        html.append("<p>" + " · ".join(f'<span class="dot" style="background:{hex_color(e)}"></span>{e} '
                                        f"{s:.1%}" for e, s in zip(EMOTIONS, shares)) + "</p>")
    return "".join(html)


def _run_section(info: dict | None) -> str:
    if not info:
        return ""
    rows = []
    for key, label in (("inputs", "inputs"), ("started", "started"), ("finished", "finished"),
                       ("elapsed_s", "elapsed (s)"), ("items", "items"), ("faces", "faces"),
                       ("no_face", "items without a face"), ("errors", "errors"), ("engine", "engine"),
                       ("workers", "workers"), ("machine", "machine"), ("annotate", "annotated copies"),
                       ("fer_batch", "fer-batch")):
        if key in info and info[key] is not None:
            value = info[key]
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            rows.append(f"<tr><th>{escape(label)}</th><td>{escape(text)}</td></tr>")
    model = info.get("model")
    if isinstance(model, dict) and model.get("path"):  # the file the run labelled with, and its precision
        text = Path(str(model["path"])).name + (f" ({model['precision']})" if model.get("precision") else "")
        rows.append(f"<tr><th>model</th><td>{escape(text)}</td></tr>")
    html = ['<h2 id="run">Run</h2><div class="columns"><div><table>', *rows, "</table></div>"]
    for key, title in (("settings", "Settings"), ("versions", "Versions")):
        if isinstance(info.get(key), dict) and info[key]:
            values = _effective_settings(info) if key == "settings" else info[key]
            html.append(f"<div><h3>{title}</h3><table>" + "".join(
                f"<tr><th>{escape(str(k))}</th><td>{escape(_short(v))}</td></tr>" for k, v in values.items()) +
                "</table></div>")
    model = info.get("model")
    if isinstance(model, dict) and model:
        html.append("<div><h3>Model</h3><table>")
        for key, value in model.items():
            if isinstance(value, dict | list) and len(json.dumps(value)) > 120:
                cell = f"<details><summary>{len(value)} entries</summary><pre>{escape(json.dumps(value, indent=1))}" \
                       f"</pre></details>"
            else:
                cell = escape(_short(value))
            html.append(f"<tr><th>{escape(str(key))}</th><td>{cell}</td></tr>")
        html.append("</table></div>")
    html.append("</div>")
    return "".join(html)


def _effective_settings(info: dict) -> dict:
    """The run's settings with the model and precision it used in place of the options' null (the defaults):
    the model file and its precision, from run.json's model record."""
    settings = dict(info["settings"])
    model = info.get("model") if isinstance(info.get("model"), dict) else {}
    if settings.get("model") is None and model.get("path"):
        settings["model"] = str(model["path"])
    if settings.get("precision") is None and model.get("precision"):
        settings["precision"] = str(model["precision"])
    return settings


def _short(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _source_table(sources: dict[str, SourceStats], copies: dict[str, Path], html_path: Path,
                  left_out: list[str]) -> str:
    html = ['<h2 id="sources">Sources and tracks</h2><p class="muted">One row per image and per video track, as in '
            'OUT.summary.csv, and for videos with several tracks an "all" row first; share = part of the faces '
            '(for a track: of its analysed frames) in which each emotion is the top label.</p>',
            '<table><tr><th>source</th><th>track</th><th class="n">frames</th><th class="n">faces</th>'
            '<th class="n">no face</th><th class="n">errors</th><th class="n">first s</th><th class="n">last s</th>'
            "<th>dominant</th><th>shares</th></tr>"]
    shown = total = 0
    for source in sources.values():
        tracks = sorted(source.tracks.values(), key=lambda t: (t.track == "", int(t.track) if t.track else 0))
        entries = ([_all_tracks(tracks)] if len(tracks) > 1 else []) + tracks or [None]
        total += len(entries)
        for position, track in enumerate(entries):
            if shown >= MAX_TABLE_ROWS:
                continue
            shown += 1
            first = position == 0
            link = _link(source.name, copies.get(source.name), html_path) if first else ""
            counts = (f'<td class="n">{source.no_face:,}</td><td class="n">{len(source.errors):,}</td>' if first
                      else '<td class="n"></td><td class="n"></td>')
            if track is None:
                reason = "could not be read" if not source.readable else "no face found"
                html.append(f'<tr><td class="src">{link}</td><td></td><td class="n">{len(source.items):,}</td>'
                            f'<td class="n">0</td>{counts}<td></td><td></td><td colspan="2" class="muted">'
                            f"{reason}</td></tr>")
                continue
            html.append(
                f'<tr><td class="src">{link}</td><td>{escape(track.track)}</td><td class="n">{len(track.frames):,}'
                f'</td><td class="n">{track.faces:,}</td>{counts}<td class="n">{_seconds(track.first_s)}</td>'
                f'<td class="n">{_seconds(track.last_s)}</td><td><span class="dot" style="background:'
                f'{hex_color(track.dominant)}"></span>{track.dominant}</td><td>{svg_shares(track.shares, 160, 12)}'
                f"</td></tr>")
    html.append("</table>")
    if total > shown:
        left_out.append(f"the sources-and-tracks table shows the first {shown:,} of {total:,} rows; all of them are "
                        f"in OUT.summary.csv (fer-batch summarize OUT.csv)")
    return "".join(html)


def _all_tracks(tracks: list[TrackStats]) -> TrackStats:
    """One video's tracks taken together: the source's own row (frames with a face, and its emotion shares)."""
    combined = TrackStats("all")
    for track in tracks:
        combined.frames |= track.frames
        combined.faces += track.faces
        combined.sums = combined.sums + track.sums
        combined.tops = combined.tops + track.tops
        for time_s in (track.first_s, track.last_s):
            if time_s is not None:
                combined.first_s = time_s if combined.first_s is None else min(combined.first_s, time_s)
                combined.last_s = time_s if combined.last_s is None else max(combined.last_s, time_s)
    return combined


def _folder_table(sources: dict[str, SourceStats], left_out: list[str]) -> str:
    """Totals per parent folder: the aggregated view of runs over thousands of files."""
    folders: dict[str, list] = {}
    for source in sources.values():
        entry = folders.setdefault(str(PurePath(source.name).parent), [0, 0, 0, 0, 0, np.zeros(len(EMOTIONS))])
        entry[0] += 1
        entry[1] += len(source.items)
        entry[2] += source.faces
        entry[3] += source.no_face
        entry[4] += len(source.errors)
        entry[5] = entry[5] + source.tops
    if len(folders) < 2:
        return ""
    html = ['<h2 id="folders">Folders</h2><table><tr><th>folder</th><th class="n">sources</th><th class="n">items'
            '</th><th class="n">faces</th><th class="n">no face</th><th class="n">errors</th><th>shares</th></tr>']
    for name, (count, items, faces, no_face, errors, tops) in list(folders.items())[:MAX_FOLDERS]:
        shares = tops / faces if faces else tops
        html.append(f'<tr><td class="src">{escape(name)}</td><td class="n">{count:,}</td><td class="n">{items:,}</td>'
                    f'<td class="n">{faces:,}</td><td class="n">{no_face:,}</td><td class="n">{errors:,}</td>'
                    f"<td>{svg_shares(shares, 160, 12) if faces else ''}</td></tr>")
    html.append("</table>")
    if len(folders) > MAX_FOLDERS:
        left_out.append(f"the folder table shows {MAX_FOLDERS} of {len(folders):,} folders")
    return "".join(html)


def _problems(sources: dict[str, SourceStats], left_out: list[str]) -> str:
    errors = [(s.name, frame, reason) for s in sources.values() for frame, reason in s.errors]
    no_face = [(s.name, s.no_face, len(s.items)) for s in sources.values() if s.no_face]
    html = ['<h2 id="problems">Errors and items without a face</h2>']
    if not errors:
        html.append("<p>No errors: every file was read.</p>")
    else:
        reasons: dict[str, int] = {}
        for _, _, reason in errors:
            reasons[reason] = reasons.get(reason, 0) + 1
        html.append(f"<p>{len(errors):,} error rows in {len({e[0] for e in errors}):,} sources, by reason:</p>"
                    '<table><tr><th class="n">rows</th><th>reason</th></tr>')
        html += [f'<tr><td class="n">{count:,}</td><td>{escape(reason)}</td></tr>'
                 for reason, count in sorted(reasons.items(), key=lambda r: -r[1])[:MAX_ERRORS]]
        html.append('</table><table><tr><th>source</th><th class="n">frame</th><th>error</th></tr>')
        html += [f'<tr><td class="src">{escape(name)}</td><td class="n">{escape(frame)}</td><td>{escape(reason)}'
                 f"</td></tr>" for name, frame, reason in errors[:MAX_ERRORS]]
        html.append("</table>")
        if len(errors) > MAX_ERRORS or len(reasons) > MAX_ERRORS:
            left_out.append(f"the error list shows {min(len(errors), MAX_ERRORS)} of {len(errors):,} error rows "
                            f"(every row is in the CSV, status=error)")
    if no_face:
        items = sum(n for _, n, _ in no_face)
        html.append(f"<p>{items:,} analysed items in {len(no_face):,} sources had no face the detector accepted "
                    f"(faces smaller than --min-face or scoring under --face-threshold are not counted).</p>")
    return "".join(html)


def _details(sources: dict[str, SourceStats], copies: dict[str, Path], html_path: Path, info: dict | None,
             left_out: list[str]) -> str:
    detailed = [s for s in sources.values() if s.detailed]
    html = ['<h2 id="details">Sources in detail</h2>', svg_legend(720)]
    for source in detailed:
        html.append(_source_detail(source, copies.get(source.name), html_path))
    if len(sources) > len(detailed):
        left_out.append(f"detail (annotated copy, face thumbnails, timelines) for the first {len(detailed)} of "
                        f"{len(sources):,} sources; the others are in the tables above")
    cut = [s for s in detailed if len(s.tracks) > MAX_TRACKS]
    if cut:
        left_out.append(f"{len(cut)} sources have more than {MAX_TRACKS} tracks: their {MAX_TRACKS} longest are "
                        f"shown in detail, all of them in the table")
    if any(len(t.times or ()) > TIMELINE_POINTS for s in detailed for t in s.tracks.values()):
        left_out.append(f"timelines are drawn with at most {TIMELINE_POINTS} points each (means of equal time "
                        f"slices); the CSV has every frame")
    if info and (info.get("settings") or {}).get("annotate_codec") == "mp4v" and copies:
        left_out.append("the annotated videos use mp4v, which most browsers do not play: open them in a video player")
    return "".join(html)


def _source_detail(source: SourceStats, copy: Path | None, html_path: Path) -> str:
    html = [f'<div class="source"><h3>{escape(source.name)}</h3>']
    facts = [f"{len(source.items):,} analysed {'frames' if source.kind == 'video' else 'items'}",
             f"{source.faces:,} faces", f"{source.no_face:,} without a face"]
    if source.errors:
        facts.append(f"{len(source.errors):,} errors: {escape(source.errors[0][1])}")
    html.append(f"<p>{' · '.join(facts)}</p>")
    if copy is not None:
        href = _href(copy, html_path)
        if source.kind == "video":
            kind = "video/webm" if copy.suffix.lower() == ".webm" else "video/mp4"
            html.append(f'<video controls preload="metadata"><source src="{href}" type="{kind}"></video>'
                        f'<p><a href="{href}">annotated video</a></p>')
        else:
            html.append(f'<a href="{href}"><img class="copy" loading="lazy" src="{href}" alt="annotated copy"></a>')
    if source.faces:
        html.append(f"<p>Top emotion of its {source.faces:,} faces: {svg_shares(source.tops / source.faces, 360, 16)}"
                    "</p>")
    tracks = sorted(source.tracks.values(), key=lambda t: -t.faces)[:MAX_TRACKS]
    tracks.sort(key=lambda t: int(t.track) if t.track else -1)
    thumbnails = _thumbnails(source, tracks)
    for track in tracks:
        label = f"track {track.track}" if track.track else "faces"
        thumbnail = thumbnails.get(track.track)
        picture = (f'<img src="data:image/jpeg;base64,{thumbnail}" height="{THUMBNAIL_HEIGHT}" alt="{escape(label)}">'
                   if thumbnail else '<div class="thumb-none">no thumbnail (source unreadable)</div>')
        best = f", most confident at frame {escape(track.best[1])}" if track.best and track.best[1] else ""
        text = (f"<b>{escape(label)}</b>: {len(track.frames):,} frames, {track.faces:,} faces, mostly "
                f"<span class=\"dot\" style=\"background:{hex_color(track.dominant)}\"></span>{track.dominant}{best}"
                f"<br>{svg_shares(track.shares, 300, 12)}")
        chart = ""
        if track.times:
            chart = "<br>" + svg_timeline(track.times, track.probabilities, source.end_s, 760, 130,
                                          max_points=TIMELINE_POINTS)
        html.append(f'<div class="track">{picture}<div>{text}{chart}</div></div>')
    html.append("</div>")
    return "".join(html)


def _thumbnails(source: SourceStats, tracks: list[TrackStats]) -> dict[str, str]:
    """Base64 JPEGs of each track's face at its most confident frame; none for a source that cannot be read."""
    wanted = {t.track: t.best for t in tracks if t.best}
    if not wanted:
        return {}
    try:
        if source.kind == "image":
            image = read_image(Path(source.name))
            return {track: _encode_face(image, best[2]) for track, best in wanted.items()}
        frames = _video_frames(Path(source.name), {int(best[1]) for best in wanted.values() if best[1]})
        return {track: _encode_face(frames[int(best[1])], best[2]) for track, best in wanted.items()
                if best[1] and int(best[1]) in frames}
    except (InputError, OSError, ValueError, cv2.error) as error:
        print(f"fer-batch: {source.name}: no thumbnails in the report: {error}", file=sys.stderr)
        return {}


def _video_frames(path: Path, numbers: set[int]) -> dict[int, np.ndarray]:
    """The upright frames ``numbers`` of a video, each read after a seek (thumbnails need a handful, not all)."""
    from fer_batch.video import VideoReader

    frames = {}
    with VideoReader(path) as reader:
        for number in sorted(numbers):
            for frame in reader.frames(start=number, stop=number + 1):
                if frame.image is not None:
                    frames[number] = frame.image
    return frames


def _encode_face(image: np.ndarray, box: tuple[int, int, int, int]) -> str:
    """The face with a quarter of its size around it, THUMBNAIL_HEIGHT px high, as base64 JPEG."""
    x, y, w, h = box
    margin = max(w, h) // 4
    height, width = image.shape[:2]
    crop = image[max(0, y - margin):min(height, y + h + margin), max(0, x - margin):min(width, x + w + margin)]
    if crop.size == 0:
        raise ValueError(f"face box {box} lies outside the {width}x{height} image")
    scale = THUMBNAIL_HEIGHT / crop.shape[0]
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), THUMBNAIL_HEIGHT), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 82])
    if not ok:
        raise ValueError("cannot encode a JPEG thumbnail")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


# ------------------------------------------------------------------------------------------------- links

def _annotated_folder(annotated, info: dict | None, csv_path: Path) -> Path | None:
    """The annotated copies' folder: as given, else the one the run recorded (relative paths tried from the
    current folder, then from the CSV's); None when there is none."""
    if annotated:
        return Path(annotated) if Path(annotated).is_dir() else None
    recorded = (info or {}).get("annotate")
    if not recorded:
        return None
    for candidate in (Path(recorded), csv_path.parent / recorded):
        if candidate.is_dir():
            return candidate
    return None


def _find_copies(sources: dict[str, SourceStats], folder: Path, info: dict | None) -> dict[str, Path]:
    """Existing annotated copies by source, named as :func:`fer_batch.annotate.render` names them."""
    from fer_batch.annotate import CODECS, plan_outputs

    readable = {s.name: s.kind for s in sources.values() if s.readable and s.kind in ("image", "video")}
    inputs = (info or {}).get("inputs")
    inputs = [str(i) for i in inputs] if isinstance(inputs, list) else None
    recorded = ((info or {}).get("settings") or {}).get("annotate_codec")
    codecs = [recorded] if recorded in CODECS else list(CODECS)
    copies: dict[str, Path] = {}
    for codec in codecs:
        for source, outputs in plan_outputs(readable, folder, inputs, codec).items():
            if source not in copies and outputs.copy is not None and outputs.copy.is_file():
                copies[source] = outputs.copy
    # Without the run's INPUTs, names relative to the common parent may not be the ones the run used: look for
    # the longest tail of the source's path that exists in the folder (a renamed clash stays unlinked).
    claimed = set(copies.values())
    for source, kind in readable.items():
        if source in copies:
            continue
        parts = [p for p in PurePath(source.replace("\\", "/")).parts if p not in ("/", "..", ".") and ":" not in p]
        for start in range(len(parts)):
            tail = folder.joinpath(*parts[start:])
            found = [tail] if kind == "image" else [tail.with_name(tail.name + CODECS[c].suffix) for c in codecs
                                                    if not tail.name.lower().endswith(CODECS[c].suffix)]
            found += [tail] if kind == "video" else []
            match = next((f for f in found if f.is_file() and f not in claimed), None)
            if match is not None:
                copies[source] = match
                claimed.add(match)
                break
    return copies


def _href(target: Path, html_path: Path) -> str:
    """A URL for ``target`` relative to the page's folder (absolute file URL across drives)."""
    try:
        relative = os.path.relpath(target.resolve(), html_path.resolve().parent)
    except ValueError:
        return target.resolve().as_uri()
    return quote(relative.replace(os.sep, "/"))


def _link(name: str, copy: Path | None, html_path: Path) -> str:
    if copy is None:
        return escape(name)
    return f'{escape(name)} <a href="{_href(copy, html_path)}">annotated</a>'


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"

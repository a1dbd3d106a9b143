"""Annotated copies of the inputs and per-video timelines, rendered from a finished labelling CSV.

Rendering reads the CSV rather than hooking into the labelling loop, so ``label`` without ``--annotate`` pays
nothing, an interrupted-then-resumed run still gets complete videos, and ``fer-batch summarize --annotate`` can
redraw an old run. Images keep their format. Videos are re-encoded through PyAV - H.264 yuv420p MP4 with
``+faststart`` by default, because that is what browsers, notebooks and chat apps play - with every source frame
at its original timestamp, drawn upright (rotation applied), and the source's audio copied across (or re-encoded
when the container cannot hold it).

Output names follow the INPUT arguments as given: a file input keeps its own name, a folder input the paths inside
it; two sources that would get the same name are told apart as ``name (2).ext``, with a line on stderr.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePath

import cv2
import numpy as np

from fer_batch.draw import COLORS, draw_faces  # noqa: F401  (COLORS re-exported for older imports)
from fer_batch.sources import InputError, kind_of, read_image


@dataclass(frozen=True)
class Codec:
    encoder: str  # FFmpeg encoder name
    suffix: str  # container of the annotated copy
    container: str  # FFmpeg muxer
    options: dict[str, str]
    audio_copy: frozenset[str]  # source audio codecs the container takes as they are
    audio_encoder: str  # what any other audio becomes


# Speed settings measured on 2 cores: each keeps annotation well under the labelling time (README, Speed).
CODECS: dict[str, Codec] = {
    "h264": Codec("libx264", ".mp4", "mp4", {"preset": "veryfast", "crf": "23"},
                  frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}), "aac"),
    "vp9": Codec("libvpx-vp9", ".webm", "webm", {"deadline": "realtime", "cpu-used": "8", "crf": "33", "b": "0",
                                                 "row-mt": "1"},
                 frozenset({"opus", "vorbis"}), "libopus"),
    "av1": Codec("libsvtav1", ".webm", "webm", {"preset": "10", "crf": "35"},
                 frozenset({"opus", "vorbis"}), "libopus"),
    "mp4v": Codec("mpeg4", ".mp4", "mp4", {"flags": "+qscale", "global_quality": str(4 * 118)},  # -q:v 4
                  frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}), "aac"),
}


def safe_target(folder: Path, source: str, suffix: str | None = None) -> Path:
    """Where an output named ``source`` (a relative name, or a path as given) goes under ``folder``: its parts
    without roots, drives or '..', plus ``suffix``; creates the parent folders. Raises ValueError if the result
    would still land outside ``folder`` (e.g. through a symlink)."""
    parts = [p for p in PurePath(source.replace("\\", "/")).parts if p not in ("..", ".", "/", "") and
             not PurePath(p).anchor and ":" not in p[:2]]
    if not parts:
        raise ValueError(f"{source}: no usable file name to write an annotated copy under")
    name = parts[-1] + suffix if suffix else parts[-1]
    target = folder.joinpath(*parts[:-1], name)
    root = folder.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.commonpath([root, target.parent.resolve()]) != str(root):
        raise ValueError(f"{source}: annotated copy would be written outside {folder}")
    return target


def video_suffix(name: str, codec: str = "h264") -> str | None:
    """The suffix added to a video's name for its annotated copy: none when it already has the codec's
    (x.mp4 -> x.mp4), else the codec's (x.avi -> x.avi.mp4, so x.avi and x.mp4 side by side never collide)."""
    wanted = CODECS[codec].suffix
    return None if name.lower().endswith(wanted) else wanted


def video_target(folder: Path, source: str, codec: str = "h264") -> Path:
    """The annotated copy of a video named ``source`` (relative name) under ``folder``."""
    return safe_target(folder, source, video_suffix(source, codec))


# ------------------------------------------------------------------------------------------------- naming

def output_names(sources: list[str], inputs: list[str] | None = None, codec: str = "h264",
                 announce: bool = False) -> dict[str, str]:
    """Relative output names ('/'-separated, without the copy's extra suffix) for ``sources`` (in CSV order).

    Each source is named relative to the INPUT it came from (``inputs`` as given on the command line): a file
    input by its own name, a folder input by the path inside it. Without ``inputs`` (or for a source no input
    explains), names are relative to the sources' common parent folder. Two sources whose copies or timelines
    would collide (case-insensitively) get ``name (2).ext``, ``name (3).ext``...; ``announce`` prints each such
    renaming on stderr.
    """
    base = {source: _relative_name(source, inputs) for source in sources}
    unexplained = [source for source, name in base.items() if name is None]
    base.update(_common_parent_names(unexplained))
    taken: dict[str, str] = {}  # casefolded output -> the source that holds it
    names: dict[str, str] = {}
    for source in sources:
        wanted = base[source] or PurePath(source).name
        name, attempt = wanted, 1
        while any(key in taken for key in _output_keys(name, codec)):
            attempt += 1
            stem, dot, extension = PurePath(wanted).name.rpartition(".")
            renamed = f"{stem} ({attempt}).{extension}" if dot and stem else f"{wanted} ({attempt})"
            name = str(PurePath(wanted).with_name(renamed))
        if announce and name != wanted:
            holder = next(taken[key] for key in _output_keys(wanted, codec) if key in taken)
            print(f"fer-batch: {source}: annotated as '{name}' ('{wanted}' is already {holder}'s)", file=sys.stderr)
        for key in _output_keys(name, codec):
            taken[key] = source
        names[source] = name
    return names


def _output_keys(name: str, codec: str) -> list[str]:
    """Every file a source named ``name`` may write: the copy (as image, or video with the codec's suffix) and
    the timeline; compared case-insensitively because macOS and Windows folders are."""
    video = name + (video_suffix(name, codec) or "")
    return [key.casefold() for key in (name, video, name + ".timeline.svg")]


def _relative_name(source: str, inputs: list[str] | None) -> str | None:
    """``source`` relative to the input it came from; None when no input explains it."""
    for given in inputs or ():
        if source in (given, str(Path(given))) and not source.endswith(("/", "\\")):
            return PurePath(source.replace("\\", "/")).name
    for given in inputs or ():
        folder = str(Path(given))
        if folder == "." and not PurePath(source).is_absolute() and not source.startswith(".."):
            return source
        for separator in {os.sep, "/"}:
            if source.startswith(folder.rstrip(separator) + separator):
                return source[len(folder.rstrip(separator)) + 1:]
    return None


def _common_parent_names(sources: list[str]) -> dict[str, str]:
    """Names relative to the deepest folder all ``sources`` share (absolute and relative paths apart)."""
    names: dict[str, str] = {}
    for group in ([s for s in sources if PurePath(s).is_absolute()], [s for s in sources if
                                                                        not PurePath(s).is_absolute()]):
        if not group:
            continue
        try:
            common = os.path.commonpath([os.path.dirname(s) or "." for s in group])
        except ValueError:  # different drives: fall back to bare file names
            common = None
        for source in group:
            names[source] = os.path.relpath(source, common) if common else PurePath(source).name
    return names


@dataclass
class Outputs:
    """Where one source's annotated copy and timeline go (None: that source gets none)."""

    name: str
    copy: Path | None
    timeline: Path | None


def annotatable(rows) -> dict[str, str]:
    """Sources of ``rows`` (CSV rows, in order) that can be annotated - images and videos with at least one item
    that was read - mapped to their kind ("image" or "video")."""
    kinds: dict[str, str] = {}
    for row in rows:
        if (row["status"] == "error" and not row["frame"]) or row["source"] in kinds:
            continue  # a file that could not be read at all has nothing to draw on
        kind = kind_of(Path(row["source"]))
        if kind is not None:
            kinds[row["source"]] = kind
    return kinds


def plan_outputs(sources: dict[str, str], folder: str | Path, inputs: list[str] | None = None,
                 codec: str = "h264", announce: bool = False) -> dict[str, Outputs]:
    """Where the copy and timeline of each of ``sources`` (source -> kind, as from :func:`annotatable`) go under
    ``folder``; :func:`render` writes there and the report finds the copies there. Computes, creates nothing."""
    folder = Path(folder)
    names = output_names(list(sources), inputs, codec, announce)
    plans = {}
    for source, kind in sources.items():
        name = names[source]
        clean = _clean_parts(name)
        if not clean:
            continue
        if kind == "image":
            plans[source] = Outputs(name, folder.joinpath(*clean), None)
        else:
            suffix = video_suffix(name, codec) or ""
            plans[source] = Outputs(name, folder.joinpath(*clean[:-1], clean[-1] + suffix),
                                    folder.joinpath(*clean[:-1], clean[-1] + ".timeline.svg"))
    return plans


def _clean_parts(name: str) -> list[str]:
    return [p for p in PurePath(name.replace("\\", "/")).parts if p not in ("..", ".", "/", "") and
            not PurePath(p).anchor and ":" not in p[:2]]


# ------------------------------------------------------------------------------------------------- render

def render(rows: list[dict[str, str]], folder: str | Path, inputs: list[str] | None = None, codec: str = "h264",
           plots: bool = True, copies: bool = True) -> list[Path]:
    """Write annotated copies (``copies``) and ``.timeline.svg`` files for videos (``plots``) of every source in
    ``rows`` (the CSV's rows) into ``folder``, named after ``inputs`` (the INPUT arguments as given; None: relative
    to the sources' common parent); returns the files written. A source that cannot be read any more is skipped
    with a message naming it on stderr; nothing is written outside ``folder``."""
    from fer_batch.plots import timeline

    if codec not in CODECS:
        raise ValueError(f"unknown annotation codec {codec!r}; choose one of {', '.join(CODECS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_source: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    written = []
    for source, outputs in plan_outputs(annotatable(rows), folder, inputs, codec, announce=True).items():
        source_rows = by_source[source]
        try:
            if copies:
                target = safe_target(folder, outputs.name, None if outputs.timeline is None else
                                     video_suffix(outputs.name, codec))
                if outputs.timeline is None:
                    written.append(_render_image(source, source_rows, target))
                else:
                    written.append(render_video(source, source_rows, target, codec))
            if plots and outputs.timeline is not None:
                svg = timeline(source, source_rows, safe_target(folder, outputs.name, ".timeline.svg"))
                if svg:
                    written.append(svg)
        except (InputError, ValueError, OSError, cv2.error) as error:
            print(f"fer-batch: {source}: not annotated: {error}", file=sys.stderr)
    return written


def _render_image(source: str, rows: list[dict[str, str]], target: Path) -> Path:
    image = read_image(Path(source))
    draw_faces(image, [r for r in rows if r["status"] == "ok"])
    ok, encoded = cv2.imencode(target.suffix or ".png", image)
    if not ok:
        raise ValueError(f"cannot encode {target.suffix} image")
    target.write_bytes(encoded.tobytes())  # bytes + imencode: non-ASCII paths work everywhere
    return target


def render_video(source: str, rows: list[dict[str, str]], target: Path, codec: str = "h264") -> Path:
    """Re-encode the video ``source`` into ``target`` with its faces (``rows``: its CSV rows) drawn on every
    frame; frames between analysed ones (``--every N``) carry the last annotation. Raises InputError when the
    source cannot be read, OSError when the target cannot be written."""
    import av

    from fer_batch.video import VideoReader

    analysed: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        if row["frame"]:
            analysed.setdefault(int(row["frame"]), [])
            if row["status"] == "ok":
                analysed[int(row["frame"])].append(row)
    temporary = target.with_name(target.name + ".part")
    try:
        with VideoReader(Path(source)) as reader:
            writer = VideoWriter(temporary, reader, CODECS[codec], source)
            try:
                current: list[dict[str, str]] = []
                frames = 0
                for frame in reader.frames(on_packet=writer.audio_packet):
                    current = analysed.get(frame.index, current)
                    writer.write(draw_faces(frame.image, current), frame.pts, frame.time_s)
                    frames += 1
                if frames == 0:
                    raise InputError("no decodable frames")
                writer.close()
            finally:
                writer.abort()
    except av.error.FFmpegError as error:  # an encoder or muxer failure, named by FFmpeg
        temporary.unlink(missing_ok=True)
        raise OSError(f"cannot write {target.name}: {error}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(target)
    return target


class VideoWriter:
    """Encodes upright BGR frames at their source timestamps into ``path`` and carries the source's audio.

    Sizes are padded to even numbers (4:2:0 chroma needs them) by repeating the last row/column. Audio packets,
    handed over by the reader in file order, are copied when the container takes the codec and re-encoded
    otherwise; either way the stderr line says what happened to the sound.
    """

    def __init__(self, path: Path, reader, codec: Codec, source: str):
        import av

        info = reader.info
        self.source = source
        if codec.encoder == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints ~20 banner lines per file otherwise; errors stay
        self.width, self.height = int(info.width), int(info.height)
        self.padded = (self.width + self.width % 2, self.height + self.height % 2)
        options = {"movflags": "+faststart"} if codec.container == "mp4" else {}
        self.output = av.open(str(path), "w", format=codec.container, options=options)
        self._closed = False
        time_base = Fraction(info.time_base) if info.time_base else Fraction(1, 90000)
        if codec.encoder == "mpeg4" and time_base.denominator > 65535:
            time_base = Fraction(1, 60000)  # MPEG-4 Part 2 caps the denominator; 60000 is exact for 24..60 fps
        self.time_base = time_base
        self.source_time_base = Fraction(info.time_base) if info.time_base else None
        rate = Fraction(info.fps).limit_denominator(1001) if info.fps and info.fps > 0 else Fraction(25)
        self.fps = float(rate)
        stream = self.output.add_stream(codec.encoder, rate=rate, options=dict(codec.options))
        stream.width, stream.height = self.padded
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base  # both, or PyAV 18 muxes with "pts < dts"
        stream.codec_context.time_base = time_base
        stream.codec_context.framerate = rate
        stream.thread_type = "AUTO"
        self.video = stream
        self.last_pts: int | None = None
        self.audio: dict[int, tuple[str, object]] = {}  # source stream index -> ("copy"|"encode", output stream)
        self._last_audio_dts: dict[int, int] = {}
        self._audio_warned: set[int] = set()
        self._add_audio(reader.container, codec)

    def _add_audio(self, container, codec: Codec) -> None:
        audio_streams = list(container.streams.audio) if container is not None else []
        if not audio_streams:
            print(f"fer-batch: {self.source}: no audio stream; the annotated copy is silent", file=sys.stderr)
            return
        for stream in audio_streams:
            name = stream.codec_context.name if stream.codec_context else "unknown"
            if name in codec.audio_copy:
                try:
                    self.audio[stream.index] = ("copy", self.output.add_stream_from_template(stream))
                    continue
                except ValueError:  # the muxer refuses this codec after all: re-encode below
                    pass
            if stream.codec_context is None or stream.codec_context.sample_rate is None:
                print(f"fer-batch: {self.source}: audio stream {stream.index} ({name}) cannot be decoded; left out",
                      file=sys.stderr)
                continue
            rate = stream.codec_context.sample_rate
            if codec.audio_encoder == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
                rate = 48000  # Opus only takes these rates
            layout = stream.codec_context.layout.name if stream.codec_context.layout.nb_channels <= 2 else "stereo"
            output = self.output.add_stream(codec.audio_encoder, rate=rate, layout=layout)
            self.audio[stream.index] = ("encode", output)
            print(f"fer-batch: {self.source}: audio ({name}) cannot be copied into {codec.container}; re-encoded to "
                  f"{output.codec_context.name}", file=sys.stderr)

    def write(self, image: np.ndarray, pts: int | None, time_s: float) -> None:
        """Encode one upright BGR frame at ``pts`` (source time base units; None: from ``time_s``)."""
        import av

        if image.shape[1] != self.width or image.shape[0] != self.height:  # a mid-stream size change
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        if self.padded != (self.width, self.height):
            image = cv2.copyMakeBorder(image, 0, self.padded[1] - self.height, 0, self.padded[0] - self.width,
                                       cv2.BORDER_REPLICATE)
        if pts is None or self.source_time_base is None:
            pts = round(time_s / self.time_base)
        elif self.source_time_base != self.time_base:
            pts = round(pts * self.source_time_base / self.time_base)
        if self.last_pts is not None and pts <= self.last_pts:  # encoders refuse repeated or backward pts
            pts = self.last_pts + 1
        self.last_pts = pts
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        frame.pts = pts
        frame.time_base = self.time_base
        for packet in self.video.encode(frame):
            self.output.mux(packet)

    def audio_packet(self, packet) -> None:
        """Carry one demuxed audio packet of the source across: muxed as is, or decoded and re-encoded. A packet
        that cannot be placed (no or backward timestamps) or decoded is dropped with one stderr line per stream:
        damaged sound must not cost the picture."""
        import av

        index = packet.stream.index
        entry = self.audio.get(index)
        if entry is None or packet.size == 0:
            return
        mode, stream = entry
        try:
            if mode == "copy":
                dts = packet.dts if packet.dts is not None else packet.pts
                if dts is None or dts <= self._last_audio_dts.get(index, -(2 ** 62)):
                    raise ValueError("a packet without a timestamp or out of order")
                self._last_audio_dts[index] = dts
                packet.stream = stream
                self.output.mux(packet)
                return
            for frame in packet.decode():
                for encoded in stream.encode(frame):
                    self.output.mux(encoded)
        except (av.error.FFmpegError, ValueError) as error:
            if index not in self._audio_warned:
                self._audio_warned.add(index)
                print(f"fer-batch: {self.source}: audio stream {index}: dropped a damaged packet ({error}); "
                      f"any further damaged ones are dropped without a message", file=sys.stderr)

    def close(self) -> None:
        """Flush the encoders and finish the file."""
        for packet in self.video.encode():
            self.output.mux(packet)
        for mode, stream in self.audio.values():
            if mode == "encode":
                for packet in stream.encode():
                    self.output.mux(packet)
        self.output.close()
        self._closed = True

    def abort(self) -> None:
        """Close the file without flushing (after an error); a no-op after :meth:`close`."""
        import av

        if not self._closed:
            self._closed = True
            try:
                self.output.close()
            except (av.error.FFmpegError, OSError, ValueError):
                pass  # the half-written file is deleted next, and the error that stopped it is the one reported

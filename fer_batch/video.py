"""The one video reader: PyAV (FFmpeg) decoding with exact frame numbers, true timestamps and upright frames.

Labelling, annotation and the parallel workers all read videos through :class:`VideoReader`, so a frame number
means the same thing everywhere:

- **Frame numbers** are positions in presentation order, from a packet index built by demuxing the video stream
  without decoding it (~80,000 packets/s). A frame's number is the rank of its presentation timestamp (pts) in that
  index, so it stays exact after a seek, with B-frames, and with variable frame rates.
- **Time** (``time_s``) is the frame's pts relative to the first frame's, in seconds: phones, screen captures and
  webcams that vary their frame rate get the right times.
- **Rotation** metadata (portrait phone videos) is applied to every decoded frame, so boxes are in the picture a
  player shows.
- **Seeking** (``frames(start=...)``): the reader seeks to the keyframe that starts the group of pictures holding
  ``start`` and decodes forward; frames before ``start`` are decoded but not converted. If a container cannot
  seek exactly, the reader notices (the first frame after the seek comes too late) and decodes from the start.

Videos whose packets carry no timestamps at all (rare raw streams) have no index: they are numbered in decoding
order and can only be read from the start (``seekable`` is False).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from fer_batch.sources import InputError

DEFAULT_FPS = 25.0
# Display rotation (degrees counter-clockwise, as FFmpeg's display matrix gives it) -> the turn that makes it upright.
_ROTATIONS = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, -90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180}


@dataclass(frozen=True)
class VideoInfo:
    fps: float  # average frame rate (frames over duration); DEFAULT_FPS when the container says nothing usable
    frame_count: int  # frames in the packet index (exact); for unindexed videos, the container's announcement
    announced_frames: int  # frames the container header announces; 0 when it does not say
    width: int  # as displayed: after rotation
    height: int
    rotation: int  # degrees counter-clockwise applied to each decoded frame (0, 90, 180, -90)
    time_base: Fraction  # unit of the pts values
    has_audio: bool
    audio_codec: str | None
    duration_s: float
    fps_known: bool  # False when the container gave no frame rate and DEFAULT_FPS stands in


@dataclass
class Frame:
    index: int  # 0-based, in presentation order
    time_s: float  # seconds since the first frame
    pts: int | None  # in VideoInfo.time_base units; None for unindexed videos
    image: np.ndarray | None  # upright uint8 BGR; None for frames not asked for (every / skip)


@dataclass(frozen=True)
class FrameIndex:
    """Presentation timestamps in order, and where decoding must start for each frame - of a whole video, or of
    a window of it (frames ``offset`` .. ``offset + len(pts)``), which is what a worker needs for one range."""

    pts: np.ndarray  # (N,) int64, sorted: frame offset + i has pts[i]
    seek_pts: np.ndarray  # (N,) int64: the timestamp to seek to (backward, to a keyframe) to decode that frame
    keyframes: np.ndarray  # frame numbers of keyframes, sorted
    offset: int = 0
    total: int = -1  # frames in the whole video (-1: len(pts))
    first_pts: int | None = None  # pts of frame 0 (None: pts[0])
    last_pts: int | None = None  # pts of the last frame (None: pts[-1])

    def __post_init__(self) -> None:
        if self.total < 0 and len(self.pts):
            object.__setattr__(self, "total", len(self.pts))
            object.__setattr__(self, "first_pts", int(self.pts[0]))
            object.__setattr__(self, "last_pts", int(self.pts[-1]))
        elif self.total < 0:
            object.__setattr__(self, "total", 0)

    def frame_of(self, pts: int) -> int | None:
        """The number of the frame with this pts; None if no frame has it (a sample an edit list trims away).
        Outside a window: offset - 1 before it, offset + len(pts) after it (never a frame asked for)."""
        position = int(np.searchsorted(self.pts, pts))
        if position < len(self.pts) and self.pts[position] == pts:
            return self.offset + position
        if position == 0 and self.offset > 0:
            return self.offset - 1
        if position == len(self.pts) and self.offset + len(self.pts) < self.total:
            return self.offset + len(self.pts)
        return None

    def window(self, start: int, stop: int) -> FrameIndex:
        """The part of a whole-video index covering frames ``start`` .. ``stop`` (exclusive)."""
        return FrameIndex(self.pts[start:stop].copy(), self.seek_pts[start:stop].copy(),
                          self.keyframes[(self.keyframes >= start) & (self.keyframes < stop)].copy(),
                          offset=start, total=self.total, first_pts=self.first_pts, last_pts=self.last_pts)


def _build_index(container, stream) -> FrameIndex | None:
    """Demux every video packet (no decoding) into a FrameIndex; None when timestamps are missing or repeated."""
    decode_order: list[tuple[int, int, bool]] = []  # pts, dts, keyframe
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # flush packets; samples an edit list trims away
            continue
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None:
            return None
        decode_order.append((pts, packet.dts if packet.dts is not None else pts, packet.is_keyframe))
    if not decode_order:
        return FrameIndex(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    pts = np.array([p for p, _, _ in decode_order], np.int64)
    order = np.sort(pts)
    if len(np.unique(order)) != len(order):
        return None
    # For each packet in decoding order: the keyframe that starts its group of pictures. A frame shown before that
    # keyframe (a leading picture of an open GOP) may reference the previous group, so it seeks one keyframe back.
    seek = np.empty(len(pts), np.int64)
    keyframe_dts: list[int] = []
    keyframe_pts: list[int] = []
    for position, (frame_pts, dts, keyframe) in enumerate(decode_order):
        if keyframe or not keyframe_dts:
            keyframe_dts.append(dts)
            keyframe_pts.append(frame_pts)
        if frame_pts >= keyframe_pts[-1] or len(keyframe_dts) < 2:
            seek[position] = keyframe_dts[-1]
        else:
            seek[position] = keyframe_dts[-2]
    rank = np.argsort(pts, kind="stable")
    keyframe_positions = [i for i, (_, _, k) in enumerate(decode_order) if k]
    keyframes = np.sort(np.searchsorted(order, pts[keyframe_positions])) if keyframe_positions else np.zeros(0, int)
    return FrameIndex(order, seek[rank], keyframes.astype(np.int64))


class VideoReader:
    """Open a video file; ``info`` describes it and ``frames()`` decodes any range of it.

    Raises InputError (with the reason; the caller adds the file name) for missing, empty and undecodable files.
    ``threads`` sets FFmpeg's decoding threads (0: FFmpeg's choice).
    """

    def __init__(self, path: str | Path, threads: int = 0, index: FrameIndex | None = None):
        self.path = Path(path)
        self.threads = threads
        try:
            size = self.path.stat().st_size
        except OSError as error:
            raise InputError(f"cannot read file: {error.strerror or error}") from None
        if size == 0:
            raise InputError("empty file (0 bytes)")
        self._open_container()
        try:
            self._describe(index)
        except BaseException:
            self.container.close()
            raise

    def _open_container(self) -> None:
        import av

        try:
            self.container = av.open(str(self.path), metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
            raise InputError(f"cannot open video (corrupt, truncated, or not a video): {_reason(error)}") from None
        if not self.container.streams.video:
            self.container.close()
            raise InputError("no video stream in the file")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = self.threads
        self.audio_streams = list(self.container.streams.audio)

    def _describe(self, index: FrameIndex | None) -> None:
        """Index the packets (unless a window planned elsewhere is given: no need to demux the whole file again),
        then read the first frame for the size and rotation and the index for the frame rate."""
        import av

        try:
            self.index = index or _build_index(self.container, self.stream)
        except av.error.FFmpegError as error:
            raise InputError(f"cannot read video packets: {_reason(error)}") from None
        if index is None:
            self._rewind()
        first = self._first_frame()
        if first is None:
            raise InputError("video has no decodable frames")
        rotation = {90: 90, 180: 180, 270: -90}.get(round(getattr(first, "rotation", 0) or 0) % 360, 0)
        width, height = (first.height, first.width) if rotation in (90, -90) else (first.width, first.height)
        time_base = self.stream.time_base or Fraction(1, 90000)
        announced = int(self.stream.frames or 0)
        rate = self.stream.average_rate or self.stream.guessed_rate
        fps = float(rate) if rate else 0.0
        duration = float(self.stream.duration * time_base) if self.stream.duration else 0.0
        count = announced
        if self.index is not None:
            count = self.index.total
            span = float((self.index.last_pts - self.index.first_pts) * time_base) if count > 1 else 0.0
            if span > 0:  # the average over the indexed frames: right for variable frame rates
                fps = (count - 1) / span
                duration = span + 1 / fps
        fps_known = bool(fps and math.isfinite(fps) and 0 < fps < 1000)
        self.info = VideoInfo(
            fps=fps if fps_known else DEFAULT_FPS, frame_count=count, announced_frames=announced, width=width,
            height=height, rotation=rotation, time_base=time_base, has_audio=bool(self.audio_streams),
            audio_codec=self.audio_streams[0].codec_context.name if self.audio_streams else None,
            duration_s=duration, fps_known=fps_known)
        self._rotate = _ROTATIONS.get(rotation)

    @property
    def seekable(self) -> bool:
        """Whether frames(start > 0) can seek (the video has a packet index) rather than decode from the start."""
        return self.index is not None

    def _rewind(self, hard: bool = False) -> None:
        """Back to the first packet: a seek, or reopening the file where seeking fails (or ``hard``)."""
        import av

        if not hard:
            try:
                target = (int(self.index.seek_pts[0]) if self.index is not None and len(self.index.pts) and
                          self.index.offset == 0 else 0)
                self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
                self.stream.codec_context.flush_buffers()
                return
            except av.error.FFmpegError:
                pass
        self.container.close()
        self._open_container()

    def _first_frame(self):
        """The first decodable frame (for its size and rotation); rewinds afterwards."""
        import av

        found = None
        try:
            for packet in self.container.demux(self.stream):
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    continue
                if decoded:
                    found = decoded[0]
                    break
        except av.error.FFmpegError:
            pass
        self._rewind()
        return found

    def frames(self, start: int = 0, stop: int | None = None, every: int = 1,
               skip: frozenset[int] | set[int] = frozenset(), on_packet: Callable | None = None) -> Iterator[Frame]:
        """Frames ``start`` to ``stop`` (exclusive; None: to the end), in presentation order.

        Frames whose number is a multiple of ``every`` and not in ``skip`` carry their upright BGR image; the others
        are yielded with ``image=None`` (decoded, since later frames depend on them, but not converted). With
        ``on_packet``, every packet of the audio streams, demuxed together with the video in file order, is passed
        to it (for copying the sound into an annotated video; read from the start then). A packet that fails to
        decode is skipped (its frame is missing): compare what came with ``info.frame_count`` to find a video that
        ends early.
        """
        import av

        seeked = False
        index = self.index
        if start > 0 and index is not None and index.offset <= start < index.offset + len(index.pts) and \
                on_packet is None:
            try:
                self.container.seek(int(index.seek_pts[start - index.offset]), stream=self.stream, backward=True,
                                    any_frame=False)
                self.stream.codec_context.flush_buffers()
                seeked = True
            except av.error.FFmpegError:
                pass
        if not seeked:
            self._rewind()
        yield from self._decode(start, stop, every, skip, on_packet, check_seek=seeked)

    def _decode(self, start: int, stop: int | None, every: int, skip, on_packet, check_seek: bool
                ) -> Iterator[Frame]:
        import av

        streams = [self.stream, *self.audio_streams] if on_packet else [self.stream]
        index = self.index
        first_pts = index.first_pts if index is not None else None
        previous = -1  # the last frame number, for frames without a pts

        def packets():
            try:
                yield from self.container.demux(streams)
            except av.error.FFmpegError:  # a damaged tail ends the video here; the caller reports missing frames
                return

        for packet in packets():
            if packet.stream.type != "video":
                if packet.size:
                    on_packet(packet)
                continue
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                continue
            for frame in decoded:
                pts = frame.pts
                if index is None or pts is None:  # count on from the previous frame
                    number = previous + 1
                    position = number - index.offset if index is not None else -1
                    pts = int(index.pts[position]) if 0 <= position < len(index.pts) else None
                else:
                    number = index.frame_of(pts)
                    if number is None:
                        continue  # not in the index (a frame trimmed by an edit list): not a frame of the video
                previous = number
                if check_seek:
                    check_seek = False
                    if number > start:  # the container's seek landed past the frame: decode from the start
                        self._rewind(hard=True)
                        yield from self._decode(start, stop, every, skip, None, check_seek=False)
                        return
                if number < start:
                    continue
                if stop is not None and number >= stop:
                    return
                wanted = number % every == 0 and number not in skip
                if pts is not None and first_pts is not None:
                    time_s = float((pts - first_pts) * self.info.time_base)
                else:
                    time_s = number / self.info.fps
                yield Frame(number, time_s, pts, self._image(frame) if wanted else None)

    def _image(self, frame) -> np.ndarray:
        image = frame.to_ndarray(format="bgr24")
        return cv2.rotate(image, self._rotate) if self._rotate is not None else image

    def keyframes(self) -> list[int]:
        """Numbers of the keyframes (where a range can start without decoding earlier frames); [0] unindexed."""
        return self.index.keyframes.tolist() if self.index is not None and len(self.index.keyframes) else [0]

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.split(";")[0].strip() or type(error).__name__

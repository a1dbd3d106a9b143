"""fer_batch/sources.py: discovery order and problems, and decoding of awkward images."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from fer_batch.sources import InputError, discover, read_image, to_bgr8


def test_discovery_is_sorted_recursive_and_case_insensitive(tmp_path):
    for name in ("b/2.JPG", "b/1.png", "a/z.Mp4", "a/notes.txt", "a/x.jpg.bak", "c.webp"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    sources, problems = discover([str(tmp_path)])
    names = [os.path.relpath(s.name, tmp_path) for s in sources]
    assert names == ["c.webp", "a/z.Mp4", "b/1.png", "b/2.JPG"]
    assert [s.kind for s in sources] == ["image", "video", "image", "image"]
    assert problems == []


def test_explicit_files_missing_and_duplicates(tmp_path):
    image = tmp_path / "face.png"
    image.write_bytes(b"x")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    sources, problems = discover([str(image), str(tmp_path), str(text), str(tmp_path / "gone.jpg")])
    assert [s.name for s in sources] == [str(image)]  # listed once, as first given
    messages = {p.path: p.message for p in problems}
    assert "not a supported image or video extension" in messages[str(text)]
    assert messages[str(tmp_path / "gone.jpg")] == "no such file or folder"


def test_symlink_loop_and_unreadable_folder_are_reported(tmp_path):
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "loop").symlink_to(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        sources, problems = discover([str(tmp_path)])
        text = " ".join(p.message for p in problems)
        assert "symlink loop" in text
        if os.geteuid() != 0:  # root reads everything, so only others see the unreadable folder
            assert "cannot read folder" in text
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("image, expected_shape", [
    (np.full((10, 12), 200, np.uint8), (10, 12, 3)),
    (np.full((10, 12), 60000, np.uint16), (10, 12, 3)),
    (np.dstack([np.full((10, 12), 100, np.uint8)] * 3 + [np.zeros((10, 12), np.uint8)]), (10, 12, 3)),
])
def test_to_bgr8_converts_layouts(image, expected_shape):
    converted = to_bgr8(image)
    assert converted.shape == expected_shape and converted.dtype == np.uint8
    if image.dtype == np.uint16:
        assert converted[0, 0, 0] == 60000 >> 8
    if image.ndim == 3 and image.shape[2] == 4:
        assert converted[0, 0, 0] == 255  # fully transparent pixels become white


def test_read_image_errors(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_image(empty)
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a picture")
    with pytest.raises(InputError, match="not a decodable image"):
        read_image(fake)
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((5, 5), 7, np.uint8))
    assert read_image(grey).shape == (5, 5, 3)

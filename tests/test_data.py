"""training/data.py: FER-2013 CSV (plain, gzip), image folders, FER+ labels, and each malformed-file error."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fer_rows, write_fer_csv

from training import data
from training.data import DataError


def test_csv_plain_and_gzip_load_the_same(tmp_path):
    rows = fer_rows(21)
    plain = data.load(write_fer_csv(tmp_path / "fer.csv", rows))
    zipped = data.load(write_fer_csv(tmp_path / "fer.csv.gz", rows))
    assert plain.images.shape == (21, 48, 48) and plain.images.dtype == np.uint8
    np.testing.assert_array_equal(plain.images, zipped.images)
    np.testing.assert_array_equal(plain.labels, [label for label, _, _ in rows])
    np.testing.assert_array_equal(plain.images[3], rows[3][1])
    assert plain.counts()["Training"] == np.bincount([r[0] for r in rows if r[2] == "Training"], minlength=7).tolist()
    images, labels = plain.split("PrivateTest")
    assert len(images) == len(labels) == 7


def test_column_order_does_not_matter(tmp_path):
    rows = fer_rows(7)
    path = tmp_path / "fer.csv"
    lines = ["Usage,emotion,pixels"] + [f"{u},{lab},{' '.join(map(str, im.ravel()))}" for lab, im, u in rows]
    path.write_text("\n".join(lines) + "\n")
    assert data.load(path).labels.tolist() == [r[0] for r in rows]


def _corrupt(tmp_path: Path, line: str) -> Path:
    rows = fer_rows(3)
    path = write_fer_csv(tmp_path / "bad.csv", rows)
    path.write_text(path.read_text() + line + "\n")
    return path


@pytest.mark.parametrize("line, message", [
    ("3," + " ".join(["1"] * 2000) + ",Training", "line 5: pixels has 2000 values, expected 2304"),
    ("9," + " ".join(["1"] * 2304) + ",Training", "line 5: emotion 9 is out of range 0..6"),
    ("x," + " ".join(["1"] * 2304) + ",Training", "line 5: emotion 'x' is not an integer"),
    ("3," + " ".join(["300"] * 2304) + ",Training", "line 5: pixel values must lie in 0..255"),
    ("3," + " ".join(["a"] * 2304) + ",Training", "line 5: pixels holds a value that is not an integer"),
    ("3," + " ".join(["1"] * 2304) + ",Holdout", "line 5: Usage 'Holdout' is not one of"),
    ("3," + " ".join(["1"] * 2304), "line 5: 2 fields, expected 3"),
])
def test_malformed_rows_name_file_line_and_problem(tmp_path, line, message):
    path = _corrupt(tmp_path, line)
    with pytest.raises(DataError, match=message) as error:
        data.load(path)
    assert str(path) in str(error.value)


def test_missing_column_and_missing_file(tmp_path):
    path = write_fer_csv(tmp_path / "fer.csv", fer_rows(2), header="emotion,pixels,Split")
    with pytest.raises(DataError, match=r"line 1: .*lacks column\(s\) Usage"):
        data.load(path)
    with pytest.raises(DataError, match="no such file"):
        data.load(tmp_path / "absent.csv")


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = write_fer_csv(tmp_path / "fer.csv.gz", fer_rows(40))
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match="cannot read"):
        data.load(path)


def _write_folder(root: Path, splits=("train", "test"), per_class: int = 3) -> None:
    for split in splits:
        for label, name in enumerate(data.EMOTIONS):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                image = np.full((48, 48), label * 30 + index, np.uint8)
                cv2.imwrite(str(folder / f"{index}.png"), image)


def test_image_folder_layout_with_holdout(tmp_path):
    _write_folder(tmp_path, per_class=10)
    dataset = data.load(tmp_path)
    assert set(dataset.usage.tolist()) == {"Training", "PublicTest", "PrivateTest"}
    assert (dataset.usage == "PrivateTest").sum() == 70
    assert (dataset.usage == "PublicTest").sum() == 7  # 10 % of each class of train/
    angry = dataset.images[dataset.labels == 0]
    assert angry.shape[1:] == (48, 48) and int(angry[0, 0, 0]) in range(0, 10)


def test_image_folder_with_val_and_errors(tmp_path):
    _write_folder(tmp_path, splits=("train", "val", "test"), per_class=1)
    assert (data.load(tmp_path).usage == "PublicTest").sum() == 7
    (tmp_path / "train" / "angry" / "broken.png").write_text("not an image")
    with pytest.raises(DataError, match=r"broken.png: unreadable image"):
        data.load(tmp_path)
    os.remove(tmp_path / "train" / "angry" / "broken.png")
    (tmp_path / "train" / "joy").mkdir()
    with pytest.raises(DataError, match="'joy' is not an emotion"):
        data.load(tmp_path)


def test_ferplus_majority_vote(tmp_path):
    rows = fer_rows(6)
    fer = write_fer_csv(tmp_path / "fer.csv", rows)
    votes = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF",
             "Training,fer0.png,8,1,0,0,0,0,0,1,0,0",   # neutral -> 6
             "Training,fer1.png,0,9,1,0,0,0,0,0,0,0",   # happiness -> 3
             "Training,fer2.png,0,0,0,0,0,0,0,7,3,0",   # contempt -> dropped
             "Training,,0,0,0,0,0,0,0,0,0,10",           # not a face -> dropped
             "Training,fer3.png,5,5,0,0,0,0,0,0,0,0",   # tie -> dropped
             "Training,fer4.png,0,0,0,0,6,0,4,0,0,0"]   # anger -> 0
    ferplus = tmp_path / "fer2013new.csv"
    ferplus.write_text("\n".join(votes) + "\n")
    dataset = data.load(fer, ferplus=ferplus)
    assert dataset.labels.tolist() == [6, 3, 0]
    np.testing.assert_array_equal(dataset.images[1], rows[1][1])
    (tmp_path / "short.csv").write_text("\n".join(votes[:3]) + "\n")
    with pytest.raises(DataError, match="2 rows, but the FER-2013 file has 6"):
        data.load(fer, ferplus=tmp_path / "short.csv")


def test_pack_round_trip_keeps_splits_and_votes(tmp_path):
    rows = fer_rows(6)
    fer = write_fer_csv(tmp_path / "fer.csv", rows)
    ferplus = tmp_path / "fer2013new.csv"
    ferplus.write_text("Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
                       + "".join(f"Training,fer{i}.png,{i},1,0,0,0,0,0,0,0,0\n" for i in range(6)))
    dataset = data.load(fer, ferplus_votes=ferplus)
    assert dataset.labels.tolist() == [r[0] for r in rows]  # votes attached, labels untouched
    packed = data.pack(dataset, tmp_path / "fer.npz", splits=("Training", "PublicTest"))
    loaded = data.load(packed)
    keep = dataset.usage != "PrivateTest"
    np.testing.assert_array_equal(loaded.images, dataset.images[keep])
    np.testing.assert_array_equal(loaded.labels, dataset.labels[keep])
    np.testing.assert_array_equal(loaded.votes("Training"), dataset.votes("Training"))
    assert set(loaded.usage) == {"Training", "PublicTest"}
    with pytest.raises(DataError, match="no rows in split 'PrivateTest'"):
        loaded.split("PrivateTest")
    # FER+ majority labels from the packed votes, without the vote file.
    relabelled = data.load(packed, ferplus="fer2013new.csv")
    assert relabelled.labels.tolist() == [3, 6, 6]  # rows 0, 3, 4 kept: 1 (a tie) dropped
    with pytest.raises(DataError, match=r"fer.csv: no FER\+ votes loaded"):
        data.load(fer).votes("Training")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="bad.npz: cannot read"):
        data.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="other.npz: lacks images, labels, usage"):
        data.load(tmp_path / "other.npz")


@pytest.mark.fer2013
@pytest.mark.skipif(not os.environ.get("FER2013_CSV"), reason="set FER2013_CSV to the real fer2013.csv[.gz]")
def test_real_fer2013_counts():
    dataset = data.load(os.environ["FER2013_CSV"])
    assert dataset.images.shape == (35887, 48, 48)
    assert dataset.counts()["PrivateTest"] == [491, 55, 528, 879, 594, 416, 626]

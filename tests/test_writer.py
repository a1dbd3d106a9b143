"""fer_batch/writer.py: the CSV header, row formatting, overwrite protection and resume."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_csv

from fer_batch.labels import EMOTIONS
from fer_batch.writer import COLUMNS, CsvSink, OutputError, Row


def test_columns_are_the_documented_contract():
    assert ",".join(COLUMNS) == ("source,frame,time_s,face,track,x,y,w,h,face_score,emotion,confidence,angry,"
                                 "disgust,fear,happy,sad,surprise,neutral,smooth_s,status,error")


def test_rows_round_to_six_decimals_that_sum_to_one(tmp_path):
    probabilities = np.array([0.1234564, 0.1, 0.1, 0.3765436, 0.1, 0.1, 0.1]) / 1.0000000001
    out = tmp_path / "out.csv"
    with CsvSink(out) as sink:
        sink.write_item([Row("a.jpg", face=0, box=(1.4, 2.6, 30.2, 40.0), face_score=0.99,
                             probabilities=probabilities)])
        sink.write_item([Row("v.mp4", frame=3, time_s=0.12, status="no_face")])
        sink.write_item([Row("bad, \"quoted\".jpg", status="error", error="not a decodable image")])
    rows = read_csv(out)
    assert rows[0]["emotion"] == "happy" and rows[0]["x"] == "1" and rows[0]["y"] == "3"
    assert round(sum(float(rows[0][e]) for e in EMOTIONS), 6) == 1.0
    assert all(len(rows[0][e].split(".")[1]) == 6 for e in EMOTIONS)
    assert rows[1]["frame"] == "3" and rows[1]["time_s"] == "0.120" and rows[1]["emotion"] == ""
    assert rows[2]["source"] == 'bad, "quoted".jpg' and rows[2]["status"] == "error"


def test_existing_output_needs_resume_or_force(tmp_path):
    out = tmp_path / "out.csv"
    with CsvSink(out) as sink:
        sink.write_item([Row("a.jpg", status="no_face")])
    with pytest.raises(OutputError, match="already exists; use --resume"):
        CsvSink(out)
    with CsvSink(out, resume=True) as sink:
        assert sink.done == {("a.jpg", "")}
    with CsvSink(out, force=True) as sink:
        assert sink.done == set()
    assert read_csv(out) == []


def test_resume_cuts_a_torn_last_line_and_refuses_foreign_files(tmp_path):
    out = tmp_path / "out.csv"
    with CsvSink(out) as sink:
        sink.write_item([Row("a.jpg", status="no_face")])
    with open(out, "a") as handle:
        handle.write("b.jpg,,,0,1,2")  # a line cut by a crash
    with CsvSink(out, resume=True) as sink:
        assert sink.done == {("a.jpg", "")}
    assert [r["source"] for r in read_csv(out)] == ["a.jpg"]
    foreign = tmp_path / "other.csv"
    foreign.write_text("name,value\nx,1\n")
    with pytest.raises(OutputError, match="not fer-batch's CSV header"):
        CsvSink(foreign, resume=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        CsvSink(blocker / "out.csv")  # its folder would have to be a regular file


def test_probabilities_round_alike_in_float32_and_float64():
    """A track's first smoothed value (float64) is its raw value (float32): both must write the same six decimals."""
    from fer_batch.writer import _round_to_sum

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (5000, 7)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for single in probabilities:
        assert np.array_equal(_round_to_sum(single), _round_to_sum(single.astype(np.float64)))

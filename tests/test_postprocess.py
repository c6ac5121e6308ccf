"""Label list and Top-k records against a plain argsort and PaddleClas's Topk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.errors import ArtifactError, DeployError, InputSpecError
from ppdeploy.postprocess import DATA_DIR, label_list_names, load_labels, parse_label_lines, top_k

LABEL_FILE = DATA_DIR / "imagenet1k_label_list.txt"


def paddleclas_topk(x: np.ndarray, topk: int, class_id_map: dict[int, str], file_names=None) -> list[dict]:
    """PaddleClas deploy/python/postprocess.py Topk.__call__, transcribed."""
    y = []
    for idx, probs in enumerate(x):
        index = probs.argsort(axis=0)[-topk:][::-1].astype("int32")
        clas_id_list, score_list, label_name_list = [], [], []
        for i in index:
            clas_id_list.append(i.item())
            score_list.append(probs[i].item())
            label_name_list.append(class_id_map[i.item()])
        result = {"class_ids": clas_id_list, "scores": np.around(score_list, decimals=5).tolist()}
        if file_names is not None:
            result["file_name"] = file_names[idx]
        result["label_names"] = label_name_list
        y.append(result)
    return y


def paddleclas_label_map(path: Path) -> dict[int, str]:
    class_id_map = {}
    with open(path) as fin:
        for line in fin:
            partition = line.split("\n")[0].partition(" ")
            class_id_map[int(partition[0])] = str(partition[-1])
    return class_id_map


# ----------------------------------------------------------------------------------------------------- labels


def test_label_file_has_1000_ordered_entries():
    lines = LABEL_FILE.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 1001
    assert [int(line.split(" ", 1)[0]) for line in lines[:-1]] == list(range(1000))


@pytest.mark.parametrize(("class_id", "name"), [
    (0, "tench, Tinca tinca"),
    (8, "hen"),
    (153, "Maltese dog, Maltese terrier, Maltese"),
    (281, "tabby, tabby cat"),
    (553, "file, file cabinet, filing cabinet"),
    (817, "sports car, sport car"),
    (999, "toilet tissue, toilet paper, bathroom tissue  "),  # PaddleClas's file keeps two trailing spaces
])
def test_known_labels(class_id, name):
    assert load_labels()[class_id] == name


def test_labels_match_paddleclas_parsing_and_are_cached():
    labels = load_labels("imagenet1k")
    assert labels == [paddleclas_label_map(LABEL_FILE)[i] for i in range(1000)]
    labels.append("mutated")
    assert len(load_labels()) == 1000  # callers get copies of the cached list
    assert "imagenet1k" in label_list_names()


def test_unknown_label_list():
    with pytest.raises(DeployError, match="imagenet1k"):
        load_labels("coco")


def test_parse_label_lines_refuses_gaps():
    assert parse_label_lines(["0 a\n", "1 b c\n"]) == ["a", "b c"]
    with pytest.raises(ArtifactError, match="line 2"):
        parse_label_lines(["0 a", "2 b"])


# ------------------------------------------------------------------------------------------------------ top-k


@pytest.fixture
def probs() -> np.ndarray:
    logits = np.random.default_rng(0).normal(size=(4, 1000)).astype(np.float32) * 3
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_top_k_against_plain_argsort(probs):
    names = ["a.jpg", "b.png", "c d.jpg", "é.bmp"]
    records = top_k(probs, k=5, filenames=names)
    labels = load_labels()
    for row, record, name in zip(probs, records, names, strict=True):
        expected = np.argsort(-row.astype(np.float64), kind="stable")[:5]
        assert list(record) == ["class_ids", "scores", "label_names", "filename"]
        assert record["class_ids"] == expected.tolist()
        assert record["scores"] == [round(float(row[i]), 5) for i in expected]
        assert record["label_names"] == [labels[i] for i in expected]
        assert record["filename"] == name
        assert all(type(i) is int for i in record["class_ids"]) and all(type(s) is float for s in record["scores"])
    json.dumps(records)


def test_top_k_matches_paddleclas_including_ties():
    rows = np.array([[0.1, 0.3, 0.3, 0.2, 0.1], [0.2] * 5, np.linspace(0, 1, 5)], dtype=np.float32)
    labels = ["zero", "one", "two", "three", "four"]
    ours = top_k(rows, k=3, filenames=["x", "y", "z"], labels=labels)
    theirs = paddleclas_topk(rows, 3, dict(enumerate(labels)), ["x", "y", "z"])
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine["class_ids"] == reference["class_ids"]
        assert mine["scores"] == reference["scores"]
        assert mine["label_names"] == reference["label_names"]
        assert mine["filename"] == reference["file_name"]


def test_top_k_defaults_and_shapes(probs):
    single = top_k(probs[0], k=1)
    assert len(single) == 1 and single[0]["filename"] is None and len(single[0]["label_names"]) == 1
    assert top_k(np.array([[0.2, 0.8]]), k=5) == [{"class_ids": [1, 0], "scores": [0.8, 0.2], "label_names": [],
                                                   "filename": None}]
    assert top_k(probs, k=2, labels=[])[0]["label_names"] == []
    assert top_k(probs[:1], k=1, filenames=[Path("dir/p.jpg")])[0]["filename"] == str(Path("dir/p.jpg"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"probs": np.full((1, 3), np.nan)}, "NaN"),
    ({"probs": np.zeros((1, 2, 3))}, r"not \(N, C\)"),
    ({"probs": np.zeros((2, 3)), "filenames": ["one"]}, "1 names for 2 rows"),
    ({"probs": np.zeros((1, 3)), "k": 0}, "at least 1"),
    ({"probs": np.zeros((1, 3)), "labels": ["a"]}, "1 names for 3 classes"),
])
def test_top_k_refuses(kwargs, message):
    with pytest.raises(InputSpecError, match=message):
        top_k(**kwargs)

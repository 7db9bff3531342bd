"""Dataset ingestion never follows paths outside its root (issue 17, safety): absolute paths, ".." and symlinks
leading out of the folder are refused, naming the metadata line, before anything is read."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from t2ijax.data.tfds_builders import read_caption_records


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.png", "sub/../../outside.png", "link.png", ""])
def test_paths_leading_out_of_the_folder_are_refused(tmp_path, name):
    folder = tmp_path / "data" / "train"
    os.makedirs(folder / "sub")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "data" / "outside.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "ok.png")
    os.symlink(tmp_path / "data" / "outside.png", folder / "link.png")
    with open(folder / "metadata.jsonl", "w") as f:
        f.write(json.dumps({"file_name": "ok.png", "text": "fine"}) + "\n")
        f.write(json.dumps({"file_name": name, "text": "bad"}) + "\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl:2: .*file_name"):
        read_caption_records(str(folder))


def test_paths_inside_the_folder_are_read(tmp_path):
    folder = tmp_path / "train"
    os.makedirs(folder / "sub")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "sub" / "a.png")
    with open(folder / "metadata.jsonl", "w") as f:
        f.write(json.dumps({"file_name": "sub/a.png", "text": "a", "prompt": "b"}) + "\n")
        f.write(json.dumps({"file_name": "sub/../sub/a.png", "text": "a"}) + "\n")
    assert [r["file_name"] for r in read_caption_records(str(folder))] == ["sub/a.png", "sub/../sub/a.png"]

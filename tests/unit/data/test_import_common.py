"""What the importers share: line reading, CSV record lines, the sentence rule, the iterated k-core."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tcf.data.importers.common import csv_rows, k_core, read_lines, sentences
from tcf.errors import DataError


@pytest.mark.parametrize("gz", [False, True])
def test_read_lines(tmp_path, gz):
    data = b"\xef\xbb\xbfone\r\n\r\ntwo \xc3\xa9\n  \n\n"
    path = tmp_path / ("f.txt.gz" if gz else "f.txt")
    path.write_bytes(gzip.compress(data) if gz else data)
    # the BOM and CRLF go, a blank line inside is kept for the caller to refuse, blank lines at the end go
    assert list(read_lines(path)) == [(1, "one"), (2, ""), (3, "two é")]


def test_read_lines_names_the_undecodable_line(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"one\ntwo\nthr\xffee\n")
    with pytest.raises(DataError) as e:
        list(read_lines(path))
    assert str(e.value) == f"{path}:3: invalid UTF-8"
    assert list(read_lines(path, "latin-1"))[2] == (3, "thrÿee")


def test_csv_records_start_where_they_start(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text('a,b\n1,"two\nlines"\n3,x\n')
    assert list(csv_rows(path)) == [(1, ["a", "b"]), (2, ["1", "two\nlines"]), (4, ["3", "x"])]


@pytest.mark.parametrize("parts,text", [
    (("Title", "Abstract"), "Title. Abstract"),
    (("Why?", "Because."), "Why? Because."),
    (("Done.", "", "More"), "Done. More"),
    (("Tab\there", "line\nbreak"), "Tab here. line break"),
    (("", "An abstract"), ""),
    (("  Title  ", "  "), "Title"),
])  # fmt: skip
def test_sentences(parts, text):
    assert sentences(*parts) == text


def test_k_core_is_iterated():
    # user 0: items 0, 1; user 1: items 0, 1; user 2: items 0, 2. Item 2 has one user, so user 2 falls
    # below 2 when it goes, and then item 0 keeps users 0 and 1: the 2-core is users 0, 1 x items 0, 1.
    u = np.array([0, 0, 1, 1, 2, 2])
    i = np.array([0, 1, 0, 1, 0, 2])
    assert k_core(u, i, np.ones(6, dtype=bool), 2).tolist() == [True, True, True, True, False, False]
    assert not k_core(u, i, np.ones(6, dtype=bool), 3).any()

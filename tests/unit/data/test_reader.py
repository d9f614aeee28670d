"""tcf.data.reader: the dataset layout, strict errors with exact file:line, lenient skip counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcf.data.reader import load_dataset
from tcf.errors import DataError

ITEMS = "news_id\ttitle\nN1\tFirst title\nN2\tSecond\ttitle with a tab\nN3\tThird\n"
BEHAVIORS = "user_id\titems\nU1\tN1 N2\nU2\tN3  N1 N2\n"


def make(folder: Path, items: str | bytes = ITEMS, behaviors: str | bytes = BEHAVIORS, item_file="news.tsv"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in ((item_file, items), ("behaviors.tsv", behaviors)):
        data = content.encode() if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder


def test_valid_dataset_is_read_in_file_order(tmp_path):
    raw = load_dataset(make(tmp_path / "d"))
    assert raw.path == (tmp_path / "d").resolve()
    assert raw.item_file == "news.tsv"
    assert raw.item_keys == ["N1", "N2", "N3"]
    assert raw.item_texts == ["First title", "Second\ttitle with a tab", "Third"]
    assert raw.user_keys == ["U1", "U2"]
    assert raw.sequences == [["N1", "N2"], ["N3", "N1", "N2"]]  # double space is fine
    assert raw.skipped == {}
    assert raw.text_of()["N2"] == "Second\ttitle with a tab"


def test_crlf_bom_and_trailing_blank_lines_are_accepted(tmp_path):
    items = "\ufeffid\ttext\r\nN1\tOne\r\nN2\tTwo\r\n\r\n  \n"
    behaviors = "user\titems\r\nU1\tN2 N1\r\n\n\n"
    raw = load_dataset(make(tmp_path / "d", items, behaviors))
    assert raw.item_texts == ["One", "Two"]
    assert raw.sequences == [["N2", "N1"]]


@pytest.mark.parametrize("name", ["items.tsv", "videos.tsv"])
def test_item_file_is_detected(tmp_path, name):
    raw = load_dataset(make(tmp_path / "d", item_file=name))
    assert raw.item_file == name


def test_no_item_file(tmp_path):
    folder = make(tmp_path / "d", item_file="other.tsv")
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    assert (
        str(e.value) == f"{folder.resolve()}: no item file: expected one of news.tsv, items.tsv, videos.tsv"
    )


def test_several_item_files_need_a_choice(tmp_path):
    folder = make(tmp_path / "d")
    (folder / "items.tsv").write_text("id\ttext\nX\tother\n")
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    assert (
        str(e.value)
        == f"{folder.resolve()}: several item files (news.tsv, items.tsv): choose one with item_file"
    )
    assert load_dataset(folder, item_file="news.tsv").item_keys == ["N1", "N2", "N3"]


def test_explicit_item_file(tmp_path):
    folder = make(tmp_path / "d", item_file="titles.tsv")
    assert load_dataset(folder, item_file="titles.tsv").item_file == "titles.tsv"


@pytest.mark.parametrize("name", ["../news.tsv", "sub/news.tsv", "..", "a\\b.tsv", ""])
def test_item_file_must_stay_inside_the_folder(tmp_path, name):
    folder = make(tmp_path / "d")
    with pytest.raises(DataError) as e:
        load_dataset(folder, item_file=name)
    assert str(e.value).startswith(
        f"{folder.resolve()}: item file must be a bare file name inside the folder"
    )


def test_missing_files_and_folder(tmp_path):
    folder = make(tmp_path / "d")
    with pytest.raises(DataError) as e:
        load_dataset(folder, item_file="nope.tsv")
    assert str(e.value) == f"{folder.resolve() / 'nope.tsv'}: file not found"
    (folder / "behaviors.tsv").unlink()
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    assert str(e.value) == f"{folder.resolve() / 'behaviors.tsv'}: file not found"
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "missing")
    assert str(e.value) == f"{(tmp_path / 'missing').resolve()}: dataset folder not found"


BAD = [
    # (file, content, line, message)
    ("news.tsv", "id\ttext\nN1\tok\nN2 no tab here\n", 3, "no tab: expected 'item_key<TAB>text'"),
    ("news.tsv", "id\ttext\nN1\tok\n\tsome text\n", 3, "empty item key"),
    ("news.tsv", "id\ttext\nN1\tok\nN2\t  \n", 3, "empty text for item 'N2'"),
    ("news.tsv", "id\ttext\nN1\tok\nN2\tfine\nN1\tagain\n", 4, "duplicated item key 'N1' (first on line 2)"),
    ("news.tsv", b"id\ttext\nN1\tok\nN2\tbad \xff byte\n", 3, "invalid UTF-8"),
    ("news.tsv", "id\ttext\nN1\tok\n\nN2\tafter a blank line\n", 3, "blank line"),
    ("news.tsv", "id\ttext\nN1 x\tok\n", 2, "item key 'N1 x' contains whitespace"),
    ("behaviors.tsv", "u\ti\nU1\tN1\nU2 N1 N2\n", 3, "no tab: expected 'user_key<TAB>item_key item_key ...'"),
    ("behaviors.tsv", "u\ti\n\tN1 N2\n", 2, "empty user key"),
    ("behaviors.tsv", "u\ti\nU1\tN1\nU2\tN2\nU1\tN3\n", 4, "duplicated user 'U1' (first on line 2)"),
    ("behaviors.tsv", "u\ti\nU1\tN1\nU2\tN1 N5531 N2\n", 3, "unknown item key 'N5531'"),
    ("behaviors.tsv", "u\ti\nU1\tN1\nU2\t   \n", 3, "user 'U2' has no items"),
    ("behaviors.tsv", b"u\ti\nU1\tN1\nU2\tN1\nU\xc3(\tN2\n", 4, "invalid UTF-8"),
]


@pytest.mark.parametrize(("file", "content", "line", "message"), BAD)
def test_strict_errors_give_exact_location(tmp_path, file, content, line, message):
    kwargs = {"items": content} if file == "news.tsv" else {"behaviors": content}
    folder = make(tmp_path / "d", **kwargs)
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    path = folder.resolve() / file
    assert str(e.value) == f"{path}:{line}: {message}"
    assert (e.value.path, e.value.line, e.value.message) == (str(path), line, message)


def test_empty_files(tmp_path):
    folder = make(tmp_path / "d", items="")
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    assert str(e.value) == f"{folder.resolve() / 'news.tsv'}: file is empty (expected a header line)"
    folder = make(tmp_path / "e", behaviors="user\titems\n")
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    assert str(e.value) == f"{folder.resolve() / 'behaviors.tsv'}: no users"


def test_lenient_skips_and_counts_each_kind(tmp_path):
    items = (
        b"id\ttext\n"
        b"N1\tone\n"
        b"N2 no tab\n"  # no_tab
        b"N3\t \n"  # empty_text
        b"N1\tdup\n"  # duplicate_item
        b"N4\tbad \xff\n"  # invalid_utf8
        b"N5\tfive\n"
        b"\tno key\n"  # empty_key
    )
    behaviors = (
        b"user\titems\n"
        b"U1\tN1 N3 N5 N9\n"  # N3 (empty text, skipped) and N9 unknown: 2 unknown_item, line kept
        b"U2\tN4\n"  # N4 was skipped -> unknown_item, then empty_sequence
        b"U1\tN5\n"  # duplicate_user (first accepted U1 wins)
        b"U3 N1\n"  # no_tab
        b"U4\t\xfe\n"  # invalid_utf8
        b"U5\tN5 N1\n"
        b"U6\t\n"  # empty_sequence
    )
    raw = load_dataset(make(tmp_path / "d", items, behaviors), lenient=True)
    assert raw.item_keys == ["N1", "N5"]
    assert raw.item_texts == ["one", "five"]
    assert raw.user_keys == ["U1", "U5"]
    assert raw.sequences == [["N1", "N5"], ["N5", "N1"]]
    assert raw.skipped == {
        "duplicate_item": 1,
        "duplicate_user": 1,
        "empty_key": 1,
        "empty_sequence": 2,
        "empty_text": 1,
        "invalid_utf8": 2,
        "no_tab": 2,
        "unknown_item": 3,
    }


def test_lenient_on_a_clean_dataset_skips_nothing(tmp_path):
    raw = load_dataset(make(tmp_path / "d"), lenient=True)
    assert raw.skipped == {}
    assert raw.sequences == [["N1", "N2"], ["N3", "N1", "N2"]]


def test_a_user_skipped_for_an_empty_sequence_may_appear_again(tmp_path):
    behaviors = "u\ti\nU1\tN9\nU1\tN1\n"
    raw = load_dataset(make(tmp_path / "d", behaviors=behaviors), lenient=True)
    assert raw.user_keys == ["U1"] and raw.sequences == [["N1"]]
    assert raw.skipped == {"unknown_item": 1, "empty_sequence": 1}


def test_strict_reports_the_first_bad_line_in_file_order(tmp_path):
    # An unknown item (line 3) before a duplicated user (line 4), and the reverse.
    folder = make(tmp_path / "a", behaviors="u\ti\nU1\tN1\nU2\tN1 N7\nU1\tN2\n")
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    assert str(e.value) == f"{folder.resolve() / 'behaviors.tsv'}:3: unknown item key 'N7'"
    folder = make(tmp_path / "b", behaviors="u\ti\nU1\tN1\nU1\tN2\nU2\tN1 N7\n")
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    assert str(e.value) == f"{folder.resolve() / 'behaviors.tsv'}:3: duplicated user 'U1' (first on line 2)"


def test_lenient_without_unknown_items(tmp_path):
    behaviors = "u\ti\nU1\tN1\nbroken line\nU1\tN2\nU2\tN3 N3\n"
    raw = load_dataset(make(tmp_path / "d", behaviors=behaviors), lenient=True)
    assert raw.user_keys == ["U1", "U2"] and raw.sequences == [["N1"], ["N3", "N3"]]
    assert raw.skipped == {"no_tab": 1, "duplicate_user": 1}

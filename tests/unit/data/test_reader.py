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


# -- several text fields: dataset.text_template ---------------------------------------------------
WIDE = (
    "item_id\ttitle\tcategory\tbrand\n"
    "I1\tShoe\tSports\tAcme\n"
    "I2\tHat\t\tBrim {co}\n"  # no category; braces in a value are text
    "I3\tSock\tWear\t \n"  # a blank brand
    "I4\t\t\tOnly brand\n"
)
WIDE_BEHAVIORS = "user\titems\nU1\tI1 I2 I3 I4\n"
TEMPLATE = "{title}. {category}. Brand: {brand} {{{item_id}}}"


def test_template_makes_the_exact_texts(tmp_path):
    raw = load_dataset(make(tmp_path / "d", WIDE, WIDE_BEHAVIORS, "items.tsv"), text_template=TEMPLATE)
    assert raw.item_keys == ["I1", "I2", "I3", "I4"]
    assert raw.item_texts == [
        "Shoe. Sports. Brand: Acme {I1}",
        "Hat. Brand: Brim {co} {I2}",  # no category, and no '. ' before it
        "Sock. Wear {I3}",  # a blank brand, with its label
        "Brand: Only brand {I4}",  # no title or category: the text starts at the label
    ]
    assert raw.item_columns == ("item_id", "title", "category", "brand")
    assert raw.text_template == TEMPLATE


def test_a_multi_column_file_needs_a_template(tmp_path):
    folder = make(tmp_path / "d", WIDE, WIDE_BEHAVIORS, "items.tsv")
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    assert str(e.value) == (f"{folder.resolve() / 'items.tsv'}:1: 4 columns (item_id, title, category, brand): "
                            "set dataset.text_template to make each item's text from them, e.g. \"{title}\"")


def test_the_two_column_layout_is_unchanged_and_may_use_a_template(tmp_path):
    folder = make(tmp_path / "d", "id\ttext\t\nN1\t Padded\ttext \nN2\tTwo\n", "u\ti\nU1\tN1 N2\n")
    assert load_dataset(folder).item_texts == [" Padded\ttext ", "Two"]  # a trailing tab in a header is no column
    raw = load_dataset(folder, text_template="Movie: {text} ({id})")
    assert raw.item_texts == ["Movie: Padded\ttext (N1)", "Movie: Two (N2)"]


def test_template_errors_name_the_key_and_the_columns(tmp_path):
    from tcf.errors import ConfigError

    folder = make(tmp_path / "d", WIDE, WIDE_BEHAVIORS, "items.tsv")
    with pytest.raises(ConfigError) as e:
        load_dataset(folder, text_template="{title} {colour}")
    assert str(e.value) == (f"{folder.resolve() / 'items.tsv'}:1: dataset.text_template: no column 'colour' in "
                            "the item file; its columns are item_id, title, category, brand")
    with pytest.raises(ConfigError) as e:
        load_dataset(folder, text_template="{title!r}", template_key="--text-template")
    assert str(e.value) == "--text-template: conversion in {title!r} at position 0: a placeholder is a column name only"
    dup = make(tmp_path / "e", "id\ttitle\ttitle\nI1\ta\tb\n", WIDE_BEHAVIORS)
    with pytest.raises(DataError, match=r"news.tsv:1: column 'title' appears twice \(columns 2 and 3\)"):
        load_dataset(dup, text_template="{title}")


WIDE_BAD = [
    ("id\ttitle\tbrand\nI1\ta\tb\nI2\tonly two\n", 3, "bad_columns", "2 columns, the header has 3"),
    ("id\ttitle\tbrand\nI1\ta\tb\nI2\ta\tb\tc\n", 3, "bad_columns", "4 columns, the header has 3"),
    ("id\ttitle\tbrand\nI1\ta\tb\nI2 no tab\n", 3, "no_tab", "no tab: expected 'id<TAB>title<TAB>brand'"),
    ("id\ttitle\tbrand\nI1\ta\tb\nI2\t \t\n", 3, "empty_text", "empty text for item 'I2'"),
    ("id\ttitle\tbrand\nI1\ta\tb\nI1\tc\td\n", 3, "duplicate_item", "duplicated item key 'I1' (first on line 2)"),
]


@pytest.mark.parametrize(("items", "line", "kind", "message"), WIDE_BAD)
def test_multi_column_lines_keep_file_line_errors(tmp_path, items, line, kind, message):
    folder = make(tmp_path / "d", items, "u\ti\nU1\tI1\n")
    with pytest.raises(DataError) as e:
        load_dataset(folder, text_template="{title}, {brand}")
    assert str(e.value) == f"{folder.resolve() / 'news.tsv'}:{line}: {message}"
    raw = load_dataset(folder, text_template="{title}, {brand}", lenient=True)
    assert raw.item_texts == ["a, b"] and raw.skipped == {kind: 1}


def test_raw_rows_copy_every_column(tmp_path):
    raw = load_dataset(make(tmp_path / "d", WIDE, WIDE_BEHAVIORS), raw_rows=True)
    assert raw.item_texts == ["Shoe\tSports\tAcme", "Hat\t\tBrim {co}", "Sock\tWear\t ", "\t\tOnly brand"]

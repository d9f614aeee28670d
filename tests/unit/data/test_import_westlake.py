"""`tcf data import microlens` and `pixelrec` on small files laid out as the two datasets ship them."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import dataset_files, import_fails, import_ok

from tcf.data.importers import import_microlens, import_pixelrec

PAIRS = [
    "user,item,timestamp",
    "1,3,1583250000000",
    "1,7,1583240000000",  # before line 2
    "2,3,1583250000000",
    "1,3,1583250000000",  # line 2 again
    "2,9,1583250000000",  # ties with line 4
    "3,12,1583250000000",  # item 12 has no title row
    "1,5,1583260000000",  # item 5's title is empty
]
TITLES = ["item,title", '7,"Cute cat, dancing"', "3,Funny moment", "5,", '9,"A ""quoted"" title"', "10,Unused"]


def write(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(s if isinstance(s, bytes) else (s + "\n").encode() for s in lines))
    return path


def microlens_50k(folder: Path, pairs=PAIRS, titles=TITLES) -> Path:
    write(folder / "MicroLens-50k_pairs.csv", pairs)
    write(folder / "MicroLens-50k_titles.csv", titles)
    write(folder / "MicroLens-50k_pairs.tsv", ["1\t7 3 5", "2\t3 9"])  # shipped alongside, not read
    write(folder / "MicroLens-50k_likes_and_views.txt", ["3\t10\t100"])
    return folder


MICROLENS_OUT = {
    "behaviors.tsv": "user_id\titems\n1\t7 3\n2\t3 9\n",
    "items.tsv": 'item_id\ttext\n7\tCute cat, dancing\n3\tFunny moment\n9\tA "quoted" title\n',
}


def test_microlens_50k(tmp_path):
    src = microlens_50k(tmp_path / "MicroLens-50k")
    report = import_ok(tmp_path, "microlens", str(src), str(tmp_path / "out"))
    assert dataset_files(tmp_path / "out") == MICROLENS_OUT
    assert report.endswith("format microlens, users 2, items 3, interactions 4, duplicates 1, "
                           "interactions_without_text 2")  # fmt: skip


def test_microlens_100k_titles_have_no_header(tmp_path):
    src = tmp_path / "MicroLens-100k"
    write(src / "MicroLens-100k_pairs.csv", PAIRS)
    write(src / "MicroLens-100k_title_en.csv", TITLES[1:])
    write(src / "tags_to_summary.csv", ["item_id,tags", "3,funny"])
    info = import_microlens(src, tmp_path / "out")
    assert dataset_files(tmp_path / "out") == MICROLENS_OUT
    assert info == {"format": "microlens", "users": 2, "items": 3, "interactions": 4, "duplicates": 1,
                    "interactions_without_text": 2}  # fmt: skip


PIXEL_ITEM_HEADER = ("item_id,view_number,comment_number,thumbup_number,share_number,coin_number,favorite_number,"
                     "barrage_number,title,tag,description")  # fmt: skip


def pixelrec(folder: Path, interactions=None, items=None) -> Path:
    write(folder / "interaction" / "Pixel200K.csv", interactions or [
        "item_id,user_id,timestamp",
        "i1,u1,1636300000",
        "i2,u1,1636200000",  # before line 2
        "i1,u2,1636300000",
        "i3,u2,1636300000",  # ties with line 4; i3 has an empty title
        "i1,u1,1636300000",  # line 2 again
    ])
    write(folder / "item_info" / "Pixel200K.csv", items or [
        PIXEL_ITEM_HEADER,
        "i1,3058,12,98,1,7,30,61,《原神》新角色演示,游戏,一段描述",
        'i2,10,0,1,0,0,0,0,"Title, two",tag,"A description, with a comma"',
        "i3,10,0,1,0,0,0,0,,tag,No title",
        "i4,10,0,1,0,0,0,0,Unused,tag,",
    ])
    return folder


def test_pixelrec_files_told_apart_by_header(tmp_path):
    src = pixelrec(tmp_path / "PixelRec")
    report = import_ok(tmp_path, "pixelrec", str(src), str(tmp_path / "out"))
    assert dataset_files(tmp_path / "out") == {
        "behaviors.tsv": "user_id\titems\nu1\ti2 i1\nu2\ti1\n",
        "items.tsv": "item_id\ttext\ni1\t《原神》新角色演示\ni2\tTitle, two\n",
    }
    assert report.endswith("format pixelrec, users 2, items 2, interactions 3, duplicates 1, "
                           "interactions_without_text 1")  # fmt: skip


def test_files_named_by_option(tmp_path):
    src = pixelrec(tmp_path / "PixelRec")
    write(src / "interaction" / "Pixel1M.csv", ["item_id,user_id,timestamp", "i2,u9,1"])
    several = "several interactions (user, item, timestamp) CSV files (interaction/Pixel1M.csv, " \
              "interaction/Pixel200K.csv): name it with --interactions"  # fmt: skip
    assert import_fails(tmp_path, "pixelrec", str(src), str(tmp_path / "out")) == f"error: {src}: {several}"
    import_ok(tmp_path, "pixelrec", "--interactions", "interaction/Pixel1M.csv", "--items", "item_info/Pixel200K.csv",
              str(src), str(tmp_path / "out"))  # fmt: skip
    assert dataset_files(tmp_path / "out")["behaviors.tsv"] == "user_id\titems\nu9\ti2\n"
    assert import_pixelrec(src, tmp_path / "out2", interactions="interaction/Pixel200K.csv")["users"] == 2


def test_no_item_file(tmp_path):
    src = microlens_50k(tmp_path / "m")
    (src / "MicroLens-50k_titles.csv").unlink()
    line = import_fails(tmp_path, "microlens", str(src), str(tmp_path / "out"))
    assert line == f"error: {src}: no item (item, title) CSV file: name it with --items"


P = "MicroLens-50k_pairs.csv"
T = "MicroLens-50k_titles.csv"


@pytest.mark.parametrize("file,line,row,message", [
    (P, 3, "1,7", "expected 3 comma-separated fields, found 2"),
    (P, 3, "1,7,soon", "timestamp: 'soon' is not a number"),
    (P, 3, ",7,1", "user: empty"),
    (P, 3, "1,7 8,1", "item: '7 8' contains whitespace"),
    (P, 3, b"1,\xe97,1\n", "invalid UTF-8"),
    (P, 3, '1,"7,1', "bad CSV: unexpected end of data"),  # the quote runs to the end of the file
    (T, 4, "7,Again", "item: '7' is on line 2 already"),
    (T, 4, "5,a,b", "expected 2 comma-separated fields, found 3"),
    (T, 3, b"3,Funny \xff\n", "invalid UTF-8"),
])  # fmt: skip
def test_a_malformed_line_is_one_error(tmp_path, file, line, row, message):
    pairs, titles = list(PAIRS), list(TITLES)
    rows = pairs if file == P else titles
    rows[line - 1] = row
    if message.endswith("end of data"):
        del rows[line:]
    src = microlens_50k(tmp_path / "m", pairs, titles)
    got = import_fails(tmp_path, "microlens", str(src), str(tmp_path / "out"))
    assert got == f"error: {src / file}:{line}: {message}"


def test_pixelrec_errors_name_its_columns(tmp_path):
    src = pixelrec(tmp_path / "p", interactions=["item_id,user_id,timestamp", "i1,u 1,5"])
    line = import_fails(tmp_path, "pixelrec", str(src), str(tmp_path / "out"))
    assert line == f"error: {src / 'interaction' / 'Pixel200K.csv'}:2: user_id: 'u 1' contains whitespace"
    src = pixelrec(tmp_path / "q", items=["item_id,name,tag", "i1,One,x"])
    line = import_fails(tmp_path, "pixelrec", "--items", "item_info/Pixel200K.csv", str(src), str(tmp_path / "out"))
    no_title = "title: no such column in the header (item_id, name, tag)"
    assert line == f"error: {src / 'item_info' / 'Pixel200K.csv'}:1: {no_title}"

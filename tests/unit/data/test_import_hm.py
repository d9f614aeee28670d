"""`tcf data import hm` on small H&M files in the Kaggle format (CSV with a header, pandas-style quoting)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from helpers import dataset_files, import_fails, import_ok

from tcf.data.importers import import_hm

C1 = "000058a12d5b43e67d225668fa1f8d618c13dc232df0cad8ffe7ad4a1091e318"
C2 = "00007d2de826758b65a93dd24ce629ed66842531df6699338c5570910a014cc2"
C3 = "00083cda041544b2fbb0e0d2905ad17da7cf1007526fb4c73235dccbbc132280"
T_HEADER = ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]
TRANSACTIONS = [
    ["2018-09-20", C1, "0663713001", "0.0508305084745762", "2"],
    ["2018-09-20", C2, "0541518023", "0.0304915254237288", "2"],
    ["2018-09-18", C1, "0505221004", "0.0152372881355932", "2"],  # before line 2
    ["2018-09-20", C1, "0663713001", "0.0491525423728813", "1"],  # line 2 again (the day is the time)
    ["2018-09-21", C1, "0541518023", "0.0304915254237288", "2"],
    ["2018-09-20", C1, "0599580038", "0.0220338983050847", "2"],  # ties with line 2
    ["2018-09-22", C2, "0999999999", "0.0100000000000000", "2"],  # not in articles.csv
    ["2018-09-22", C3, "108775015", "0.0084576271186440", "1"],  # the leading zero lost by a spreadsheet
    ["2018-09-23", C2, "0111111001", "0.0100000000000000", "2"],  # an article without a name
]
A_HEADER = [
    "article_id", "product_code", "prod_name", "product_type_no", "product_type_name", "product_group_name",
    "graphical_appearance_no", "graphical_appearance_name", "colour_group_code", "colour_group_name",
    "perceived_colour_value_id", "perceived_colour_value_name", "perceived_colour_master_id",
    "perceived_colour_master_name", "department_no", "department_name", "index_code", "index_name",
    "index_group_no", "index_group_name", "section_no", "section_name", "garment_group_no", "garment_group_name",
    "detail_desc",
]  # fmt: skip


def article(aid: str, name: str, kind: str, colour: str, desc: str) -> list[str]:
    return [aid, aid[:7], name, "253", kind, "Garment Upper body", "1010016", "Solid", "09", colour, "4", "Dark",
            "5", "Black", "1676", "Jersey Basic", "A", "Ladieswear", "1", "Ladieswear", "16",
            "Womens Everyday Basics", "1002", "Jersey Basic", desc]  # fmt: skip


ARTICLES = [
    article("0108775015", "Strap top", "Vest top", "Black", "Jersey top with narrow shoulder straps."),
    article("0663713001", "Atlanta Push Body Harlow", "Underwear body", "Black",
            'Lace push-up body, "Harlow", with\nunderwired cups'),  # quoted, over two lines
    article("0541518023", "Rae Push (Melbourne) 2p", "Bra", "Light Pink", ""),
    article("0505221004", "Inca jumper", "Sweater", "Dark Grey", "Jumper in rib-knit cotton!"),
    article("0599580038", "Tilly (1)", "Sweater", "", "Long-sleeved top."),
    article("0111111001", "", "Sweater", "Black", "No name."),
    article("0222222002", "Never sold", "Sweater", "Black", "Unused."),
]


def csv_text(header: list[str], rows: list) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    lines = [buf.getvalue().encode()]
    for row in rows:
        if isinstance(row, bytes):
            lines.append(row)
            continue
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        lines.append(buf.getvalue().encode())
    return b"".join(lines)


def write_hm(folder: Path, transactions=TRANSACTIONS, articles=ARTICLES, t_header=T_HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transactions_train.csv").write_bytes(csv_text(t_header, transactions))
    (folder / "articles.csv").write_bytes(csv_text(A_HEADER, articles))
    return folder


def test_purchases_by_day_and_the_item_text(tmp_path):
    src = write_hm(tmp_path / "h-and-m-personalized-fashion-recommendations")
    report = import_ok(tmp_path, "hm", str(src), str(tmp_path / "out"))
    assert dataset_files(tmp_path / "out") == {
        "behaviors.tsv": (
            "user_id\titems\n"
            f"{C1}\t0505221004 0663713001 0599580038 0541518023\n"
            f"{C2}\t0541518023\n"
            f"{C3}\t0108775015\n"
        ),
        "items.tsv": (
            "item_id\ttext\n"
            "0108775015\tStrap top. Vest top, Black. Jersey top with narrow shoulder straps.\n"
            '0663713001\tAtlanta Push Body Harlow. Underwear body, Black. Lace push-up body, "Harlow", with '
            "underwired cups\n"
            "0541518023\tRae Push (Melbourne) 2p. Bra, Light Pink\n"
            "0505221004\tInca jumper. Sweater, Dark Grey. Jumper in rib-knit cotton!\n"
            "0599580038\tTilly (1). Sweater. Long-sleeved top.\n"
        ),
    }
    assert report.endswith("format hm, users 3, items 5, interactions 6, duplicates 1, interactions_without_text 2")


def test_the_counts(tmp_path):
    assert import_hm(write_hm(tmp_path / "hm"), tmp_path / "out") == {
        "format": "hm", "users": 3, "items": 5, "interactions": 6, "duplicates": 1, "interactions_without_text": 2,
    }  # fmt: skip


T = "transactions_train.csv"
A = "articles.csv"
ROW = ["2018-09-20", C1, "0663713001", "0.05", "2"]


@pytest.mark.parametrize("file,line,row,message", [
    (T, 3, ROW[:4], "expected 5 comma-separated fields, found 4"),
    (T, 3, [*ROW, "x"], "expected 5 comma-separated fields, found 6"),
    (T, 2, ["2018-13-01", *ROW[1:]], "t_dat: '2018-13-01' is not a date like 2018-09-20"),
    (T, 2, ["20/09/2018", *ROW[1:]], "t_dat: '20/09/2018' is not a date like 2018-09-20"),
    (T, 4, [ROW[0], C1, "ABC", *ROW[3:]], "article_id: 'ABC' is not a number of at most 10 digits"),
    (T, 4, [ROW[0], C1, "06637130011", *ROW[3:]], "article_id: '06637130011' is not a number of at most 10 digits"),
    (T, 4, [ROW[0], "", *ROW[2:]], "customer_id: empty"),
    (T, 2, b"\n", "blank line"),
    (T, 3, b'2018-09-20,"' + C1.encode() + b'"x,0663713001,0.05,2\n', "bad CSV: ',' expected after '\"'"),
    (T, 5, b"2018-09-20,c\xff,0663713001,0.05,2\n", "invalid UTF-8"),
    (A, 6, article("0108775015", "Again", "Top", "Red", ""), "article_id: '0108775015' is on line 2 already"),
    (A, 5, article("0541518023", "Rae", "Bra", "Pink", "")[:-1], "expected 25 comma-separated fields, found 24"),
    (A, 5, b"0541518023" + b",x" * 23 + b',"unterminated\n', "bad CSV: unexpected end of data"),
])  # fmt: skip
def test_a_malformed_line_is_one_error(tmp_path, file, line, row, message):
    transactions, articles = list(TRANSACTIONS), list(ARTICLES)
    if file == T:
        transactions[line - 2] = row
    else:
        articles[line - 3] = row  # the second article spans lines 3 and 4
        if message.endswith("end of data"):
            del articles[line - 2:]  # the unterminated quote runs to the end of the file
    src = write_hm(tmp_path / "hm", transactions, articles)
    assert import_fails(tmp_path, "hm", str(src), str(tmp_path / "out")) == f"error: {src / file}:{line}: {message}"


def test_a_missing_column(tmp_path):
    header = ["t_dat", "customer_id", "article", "price", "sales_channel_id"]
    src = write_hm(tmp_path / "hm", t_header=header)
    assert import_fails(tmp_path, "hm", str(src), str(tmp_path / "out")) == (
        f"error: {src / T}:1: article_id: no such column in the header (t_dat, customer_id, article, price, "
        "sales_channel_id)"
    )


def test_an_empty_or_missing_file(tmp_path):
    src = write_hm(tmp_path / "hm")
    (src / A).write_bytes(b"")
    assert import_fails(tmp_path, "hm", str(src), str(tmp_path / "out")) == (
        f"error: {src / A}: file is empty (expected a header line)"
    )
    (src / T).unlink()
    assert import_fails(tmp_path, "hm", str(src), str(tmp_path / "out")) == f"error: {src / T}: file not found"

"""`tcf data import amazon` on small Amazon Reviews 2018 (gzipped) and 2023 (plain) files in the real format."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from helpers import dataset_files, import_fails, import_ok

from tcf.data.importers import import_amazon


def review_2018(user: str, asin: str, time: int) -> dict:
    return {"overall": 5.0, "verified": True, "reviewTime": "09 1, 2016", "reviewerID": user, "asin": asin,
            "style": {"Size:": " 7.0 oz"}, "reviewerName": "A name", "reviewText": "Nice.", "summary": "Five Stars",
            "unixReviewTime": time}  # fmt: skip


def meta_2018(asin: str, title: str, brand: str | None = None, category: list[str] | None = None) -> dict:
    m = {"tech1": "", "description": ["A description."], "fit": "", "title": title, "also_buy": [], "image": [],
         "tech2": "", "feature": [], "rank": "1,234", "also_view": [], "details": {}, "main_cat": "All Beauty",
         "similar_item": "", "date": "", "price": "$9.99", "asin": asin}  # fmt: skip
    if brand is not None:
        m["brand"] = brand
    if category is not None:
        m["category"] = category
    return m


def review_2023(user: str, parent: str, ms: int, asin: str = "") -> dict:
    return {"rating": 4.0, "title": "Good", "text": "Works.", "images": [], "asin": asin or parent,
            "parent_asin": parent, "user_id": user, "timestamp": ms, "helpful_vote": 0, "verified_purchase": True}


def meta_2023(parent: str, title: str, store: str | None = None, categories: list[str] | None = None) -> dict:
    return {"main_category": "All Beauty", "title": title, "average_rating": 4.5, "rating_number": 10,
            "features": [], "description": [], "price": None, "images": [], "videos": [], "store": store,
            "categories": categories or [], "details": {"Brand": "X"}, "parent_asin": parent,
            "bought_together": None}  # fmt: skip


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON object per line (bytes pass through: a malformed line); gzipped when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


REVIEWS_2018 = [
    review_2018("A1", "P1", 300),
    review_2018("A2", "P2", 100),
    review_2018("A1", "P2", 100),
    review_2018("A1", "P3", 300),  # ties with line 1: after it
    review_2018("A1", "P1", 300),  # line 1 again: dropped
    review_2018("A2", "P9", 50),  # P9 is not in the meta file
    review_2018("A3", "P4", 200),  # P4 has no title: A3 is left with nothing
    review_2018("A2", "P1", 100),  # ties with line 2
]
META_2018 = [
    meta_2018("P3", "Shampoo &amp; Conditioner", "Crest", ["All Beauty", "Hair Care &amp; Styling"]),
    meta_2018("P1", "Soap!", "", []),
    meta_2018("P2", "Lotion", "Nivea"),
    meta_2018("P4", "", "Brand only", ["All Beauty"]),
    meta_2018("P1", "Soap, again", "Other"),  # a repeated item: the first line counts
    meta_2018("P7", "Never reviewed", "Crest", ["All Beauty"]),
]


def test_2018_gzipped(tmp_path):
    src = tmp_path / "Beauty"
    write_jsonl(src / "All_Beauty.json.gz", REVIEWS_2018)
    write_jsonl(src / "meta_All_Beauty.json.gz", META_2018)
    report = import_ok(tmp_path, "amazon", str(src), str(tmp_path / "out"))
    assert dataset_files(tmp_path / "out") == {
        "behaviors.tsv": "user_id\titems\nA1\tP2 P1 P3\nA2\tP2 P1\n",
        "items.tsv": (
            "item_id\ttext\n"
            "P3\tShampoo & Conditioner. Brand: Crest. Categories: All Beauty, Hair Care & Styling\n"
            "P1\tSoap!\n"
            "P2\tLotion. Brand: Nivea\n"
        ),
    }
    assert report.endswith("format amazon-2018, users 2, items 3, interactions 5, duplicates 1, "
                           "interactions_without_text 2, meta_duplicates 1")  # fmt: skip


REVIEWS_2023 = [
    review_2023("U1", "A", 1588687728923, asin="A-red"),  # a variant: its parent is the item
    review_2023("U1", "B", 1588687728000),
    review_2023("U2", "A", 1600000000000),
    review_2023("U4", "D", 1600000000001),  # D: one review, below the 2-core; then U4 is too
    review_2023("U2", "B", 1500000000000),
    review_2023("U3", "C", 1600000000000),
    review_2023("U3", "A", 1600000000000),
    review_2023("U1", "C", 1700000000000),
    review_2023("U4", "A", 1600000000002),
]
META_2023 = [meta_2023(p, f"Item {p}", store="Howard Products" if p == "A" else None) for p in "ABCD"]


def test_2023_with_the_k_core_iterated(tmp_path):
    src = tmp_path / "Beauty"
    write_jsonl(src / "All_Beauty.jsonl", REVIEWS_2023)
    write_jsonl(src / "meta_All_Beauty.jsonl", META_2023)
    report = import_ok(tmp_path, "amazon", "--k-core", "2", str(src), str(tmp_path / "out"))
    assert dataset_files(tmp_path / "out") == {
        "behaviors.tsv": "user_id\titems\nU1\tB A C\nU2\tB A\nU3\tC A\n",
        "items.tsv": "item_id\ttext\nA\tItem A. Brand: Howard Products\nB\tItem B\nC\tItem C\n",
    }
    assert report.endswith("format amazon-2023, users 3, items 3, interactions 7, duplicates 0, "
                           "interactions_without_text 0, interactions_below_2_core 2, meta_duplicates 0")  # fmt: skip


def test_2023_without_the_k_core_keeps_everyone(tmp_path):
    src = tmp_path / "Beauty"
    write_jsonl(src / "All_Beauty.jsonl", REVIEWS_2023)
    write_jsonl(src / "meta_All_Beauty.jsonl", META_2023)
    info = import_amazon(src, tmp_path / "out")
    assert dataset_files(tmp_path / "out")["behaviors.tsv"] == "user_id\titems\nU1\tB A C\nU2\tB A\nU4\tD A\nU3\tC A\n"
    assert info["interactions"] == 9 and "interactions_below_2_core" not in info


def test_a_k_core_that_leaves_nothing(tmp_path):
    src = tmp_path / "Beauty"
    write_jsonl(src / "All_Beauty.jsonl", REVIEWS_2023)
    write_jsonl(src / "meta_All_Beauty.jsonl", META_2023)
    line = import_fails(tmp_path, "amazon", "--k-core", "4", str(src), str(tmp_path / "out"))
    assert line == f"error: {tmp_path / 'out'}: no interaction left after the 4-core: nothing to write"


def test_files_named_by_option(tmp_path):
    src = tmp_path / "amazon"
    write_jsonl(src / "Beauty_5.json.gz", REVIEWS_2018)
    write_jsonl(src / "Beauty.json.gz", REVIEWS_2018[:2])
    write_jsonl(src / "meta_Beauty.json.gz", META_2018)
    write_jsonl(src / "sub" / "meta.jsonl", META_2018[:3])
    out = str(tmp_path / "out")
    several = "several reviews *.json[l][.gz] files (Beauty.json.gz, Beauty_5.json.gz): name it with --reviews"
    assert import_fails(tmp_path, "amazon", str(src), out) == f"error: {src}: {several}"
    import_ok(tmp_path, "amazon", "--reviews", "Beauty.json.gz", "--meta", "sub/meta.jsonl", str(src), out)
    assert dataset_files(tmp_path / "out")["behaviors.tsv"] == "user_id\titems\nA1\tP1\nA2\tP2\n"


def test_no_meta_file(tmp_path):
    src = tmp_path / "amazon"
    write_jsonl(src / "Beauty.json", REVIEWS_2018)
    line = import_fails(tmp_path, "amazon", str(src), str(tmp_path / "out"))
    assert line == f"error: {src}: no meta_*.json[l][.gz] file: name it with --meta"


GOOD = review_2023("U1", "A", 1)


@pytest.mark.parametrize("meta,line,record,message", [
    (False, 2, b'{"user_id": "U1", "parent_asin": "A", ', "bad JSON: Expecting property name enclosed in double "
                                                        "quotes (column 39)"),
    (False, 2, {k: v for k, v in GOOD.items() if k != "timestamp"}, "timestamp: missing"),
    (False, 2, {**GOOD, "timestamp": "soon"}, "timestamp: 'soon' is not a number"),
    (False, 2, {**GOOD, "timestamp": None}, "timestamp: expected a number, found null"),
    (False, 2, {**GOOD, "timestamp": float("nan")}, "timestamp: 'nan' is not a finite number"),
    (False, 2, {**GOOD, "user_id": ["U1"]}, "user_id: expected a string, found a list"),
    (False, 2, {**GOOD, "parent_asin": "A B"}, "parent_asin: 'A B' contains whitespace"),
    (False, 2, {**GOOD, "user_id": ""}, "user_id: empty"),
    (False, 2, b"[1, 2]", "expected a JSON object, found list"),
    (False, 2, b"", "blank line"),
    (False, 2, b'{"user_id": "U\xe9"}', "invalid UTF-8"),
    (False, 2, review_2018("A1", "P1", 5), "user_id: missing"),  # line 1 is 2023's: so is every line
    (True, 2, {"title": "No id"}, "parent_asin: missing (the reviews are Amazon 2023's: is this their meta file?)"),
    (True, 2, meta_2018("A", "2018 meta"), "parent_asin: missing (the reviews are Amazon 2023's: is this their "
                                           "meta file?)"),
    (True, 2, meta_2023("A", "T", categories="Beauty"), "categories: expected a list of strings"),
    (True, 2, meta_2023("A", ["T"]), "title: expected a string, found list"),
])  # fmt: skip
def test_a_malformed_line_is_one_error(tmp_path, meta, line, record, message):
    reviews = [GOOD, review_2023("U2", "B", 2), review_2023("U2", "A", 3)]
    metas = [meta_2023("A", "Item A"), meta_2023("B", "Item B")]
    (metas if meta else reviews)[line - 1] = record
    src = tmp_path / "a"
    path = write_jsonl(src / ("meta_Beauty.jsonl.gz" if meta else "Beauty.jsonl.gz"), metas if meta else reviews)
    write_jsonl(src / ("Beauty.jsonl.gz" if meta else "meta_Beauty.jsonl.gz"), reviews if meta else metas)
    assert import_fails(tmp_path, "amazon", str(src), str(tmp_path / "out")) == f"error: {path}:{line}: {message}"


def test_the_first_review_decides_the_release(tmp_path):
    src = tmp_path / "a"
    path = write_jsonl(src / "Beauty.jsonl", [{"rating": 5.0, "asin": "A", "timestamp": 1}])
    write_jsonl(src / "meta_Beauty.jsonl", [meta_2023("A", "T")])
    line = import_fails(tmp_path, "amazon", str(src), str(tmp_path / "out"))
    assert line == f"error: {path}:1: reviewerID: missing (and no user_id: neither Amazon 2018 nor 2023 reviews)"


def test_a_truncated_gzip_names_its_file(tmp_path):
    src = tmp_path / "a"
    path = write_jsonl(src / "Beauty.json.gz", REVIEWS_2018 * 50)
    path.write_bytes(path.read_bytes()[:-40])
    write_jsonl(src / "meta_Beauty.json.gz", META_2018)
    line = import_fails(tmp_path, "amazon", str(src), str(tmp_path / "out"))
    assert line.startswith(f"error: {path}:") and "cannot read: Compressed file ended" in line

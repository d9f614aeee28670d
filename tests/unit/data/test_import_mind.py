"""`tcf data import mind` on a small MIND folder in the real format (no header lines, tab-separated)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import dataset_files, import_fails, import_ok, tcf_here

from tcf.data.importers import import_mind
from tcf.errors import DataError

ENTITIES = '[{"Label": "Prince Philip", "Type": "P", "WikidataId": "Q80976", "Confidence": 1.0}]'
NEWS = [
    ["N5", "news", "newsus", '"Quoted" words, in a title', "Its abstract", "https://x/5", ENTITIES, "[]"],
    ["N1", "sports", "football", "Title one", "Abstract one.", "https://x/1", "[]", "[]"],
    ["N2", "news", "newsworld", "Why?", "Because.", "https://x/2", "[]", ENTITIES],
    ["N3", "news", "newsworld", "Shown, never clicked", "", "https://x/3", "[]", "[]"],
    ["N4", "finance", "markets", "Four", "", "https://x/4", "[]", "[]"],
    ["N6", "video", "viral", "Six", "Six abstract", "https://x/6", "[]", "[]"],
    ["N7", "travel", "tips", "Seven", "Seven abstract", "https://x/7", "[]", "[]"],
    ["N8", "lifestyle", "royals", "Eight", "", "https://x/8", "[]", "[]"],
    ["N11", "lifestyle", "royals", "", "An abstract without a title", "https://x/11", "[]", "[]"],
    ["N10", "autos", "cars", "Never shown", "", "https://x/10", "[]", "[]"],
]
BEHAVIORS = [
    ["1", "U1", "11/15/2019 8:55:22 AM", "N1 N2", "N3-0 N4-1 N5-1"],
    ["2", "U2", "11/14/2019 1:00:00 PM", "", "N4-1 N3-0 N11-1"],  # N11 has no title
    ["3", "U1", "11/14/2019 9:00:00 AM", "N1 N2", "N6-1 N4-0"],  # earlier than line 1
    ["4", "U1", "11/15/2019 8:55:22 AM", "N1 N2", "N4-1 N7-1"],  # line 1's time: N4 repeats it, N7 ties
    ["5", "U3", "11/13/2019 1:00:00 AM", "N2 N9", "N5-1"],  # N9 is not in news.tsv
    ["6", "U2", "11/14/2019 11:00:00 AM", "", "N8-1"],  # before line 2's 1 PM
    ["7", "U3", "11/13/2019 12:30:00 AM", "N2 N9", "N1-1 N3-0"],  # 12:30 AM is before 1:00 AM
]


def write_mind(folder: Path, behaviors=BEHAVIORS, news=NEWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("behaviors.tsv", behaviors), ("news.tsv", news)):
        (folder / name).write_bytes(b"".join(r if isinstance(r, bytes) else ("\t".join(r) + "\r\n").encode()
                                             for r in rows))
    return folder


def test_sequences_are_history_then_clicks_by_time(tmp_path):
    src = write_mind(tmp_path / "MINDsmall_train")
    report = import_ok(tmp_path, "mind", str(src), str(tmp_path / "out"))
    assert dataset_files(tmp_path / "out") == {
        "behaviors.tsv": "user_id\titems\nU1\tN1 N2 N6 N4 N5 N7\nU2\tN8 N4\nU3\tN2 N1 N5\n",
        "items.tsv": (
            "item_id\ttext\n"
            'N5\t"Quoted" words, in a title. Its abstract\n'
            "N1\tTitle one. Abstract one.\n"
            "N2\tWhy? Because.\n"
            "N4\tFour\n"
            "N6\tSix. Six abstract\n"
            "N7\tSeven. Seven abstract\n"
            "N8\tEight\n"
        ),
    }
    assert "users 3, items 7, interactions 11, duplicates 1, interactions_without_text 2" in report


def test_the_counts(tmp_path):
    info = import_mind(write_mind(tmp_path / "m"), tmp_path / "out")
    assert info == {"format": "mind", "users": 3, "items": 7, "interactions": 11, "duplicates": 1,
                    "interactions_without_text": 2}  # fmt: skip


def test_a_user_without_a_click_keeps_the_history(tmp_path):
    rows = [["1", "U9", "11/15/2019 8:55:22 AM", "N2 N1 N2", "N3-0"]]  # N2 twice, both before any time: once
    import_ok(tmp_path, "mind", str(write_mind(tmp_path / "m", rows)), str(tmp_path / "out"))
    assert dataset_files(tmp_path / "out")["behaviors.tsv"] == "user_id\titems\nU9\tN2 N1\n"


B = "behaviors.tsv"
N = "news.tsv"


@pytest.mark.parametrize("file,line,row,message", [
    (B, 3, b"3\tU1\t11/14/2019 9:00:00 AM\tN1 N2\n", "expected 5 tab-separated fields, found 4"),
    (B, 2, b"2\tU2\t2019-11-14 13:00:00\t\tN4-1\n", "time: '2019-11-14 13:00:00' is not a MIND time like "
                                                    "11/15/2019 8:55:22 AM"),
    (B, 2, b"2\tU2\t2/30/2019 1:00:00 PM\t\tN4-1\n", "time: '2/30/2019 1:00:00 PM' is not a MIND time like "
                                                     "11/15/2019 8:55:22 AM"),
    (B, 2, b"2\tU2\t11/14/2019 13:00:00 PM\t\tN4-1\n", "time: '11/14/2019 13:00:00 PM' is not a MIND time "
                                                       "like 11/15/2019 8:55:22 AM"),
    (B, 4, b"4\tU1\t11/15/2019 8:55:22 AM\tN1 N2\tN4 N7\n", "impressions: 'N4' is not NEWS_ID-1 or NEWS_ID-0 "
                                                            "(a MIND test set has no clicks to import)"),
    (B, 4, b"4\tU1\t11/15/2019 8:55:22 AM\tN1 N2\tN4-2\n", "impressions: 'N4-2' is not NEWS_ID-1 or "
                                                           "NEWS_ID-0 (a MIND test set has no clicks to import)"),
    (B, 3, b"3\tU1\t11/14/2019 9:00:00 AM\tN2 N1\tN6-1\n", "history: not the history of user 'U1' on line 1 "
                                                           "(MIND gives a user one history)"),
    (B, 2, b"2\t\t11/14/2019 1:00:00 PM\t\tN4-1\n", "user_id: empty"),
    (B, 2, b"\n", "expected 5 tab-separated fields, found 1"),
    (B, 5, b"5\tU3\t11/13/2019 1:00:00 AM\tN2 N\xe9\tN5-1\n", "invalid UTF-8"),
    (N, 2, b"N1\tsports\tfootball\tTitle one\tAbstract one.\thttps://x/1\t[]\n", "expected 8 tab-separated "
                                                                                "fields, found 7"),
    (N, 4, b"N1\tnews\tnews\tAgain\t\thttps://x\t[]\t[]\n", "news_id: 'N1' is on line 2 already"),
    (N, 3, b"N2\tnews\tnewsworld\tWhy\xff\tBecause.\thttps://x/2\t[]\t[]\n", "invalid UTF-8"),
])  # fmt: skip
def test_a_malformed_line_is_one_error(tmp_path, file, line, row, message):
    behaviors, news = list(BEHAVIORS), list(NEWS)
    rows = behaviors if file == B else news
    rows[line - 1] = row
    src = write_mind(tmp_path / "m", behaviors, news)
    out = tmp_path / "out"
    assert import_fails(tmp_path, "mind", str(src), str(out)) == f"error: {src / file}:{line}: {message}"


def test_a_missing_file_or_folder(tmp_path):
    src = write_mind(tmp_path / "m")
    (src / "news.tsv").unlink()
    assert import_fails(tmp_path, "mind", str(src), str(tmp_path / "out")) == f"error: {src / N}: file not found"
    with pytest.raises(DataError, match="folder not found: expected a MIND train or dev folder"):
        import_mind(tmp_path / "nowhere", tmp_path / "out")


def test_an_output_that_holds_data_is_never_touched(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    r = tcf_here("data", "import", "mind", str(write_mind(tmp_path / "m")), str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == f"error: {tmp_path / 'out'}: output folder already exists and is not empty\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep"]

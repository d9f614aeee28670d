"""tcf.data.importers on small hand-made MovieLens files and a real RecBole ml-100k excerpt."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcf.data.importers import import_movielens, import_recbole
from tcf.data.reader import load_dataset
from tcf.errors import DataError


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(text.encode(encoding))
    return folder / name


def read(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------- MovieLens ml-100k

U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|Misérables, Les (1995)|01-Jan-1995||http://y|0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0\n"
    "3|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)
U_GENRE = (
    "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\nDocumentary|7\n"
    "Drama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\nRomance|14\nSci-Fi|15\n"
    "Thriller|16\nWar|17\nWestern|18\n\n"
)
U_DATA = (
    "7\t2\t5\t300\n"
    "5\t1\t3\t200\n"
    "7\t1\t4\t100\n"
    "5\t3\t1\t200\n"  # tie with the line above: file order kept
    "5\t99\t2\t50\n"  # item 99 has no text: dropped
    "7\t3\t2\t300\n"  # tie with the first line
)


def test_movielens_100k(tmp_path):
    src = tmp_path / "ml-100k"
    write(src, "u.item", U_ITEM, "latin-1")
    write(src, "u.genre", U_GENRE, "latin-1")
    write(src, "u.data", U_DATA, "latin-1")
    info = import_movielens(src, tmp_path / "out")
    assert info == {
        "format": "ml-100k",
        "users": 2,
        "items": 3,
        "interactions": 5,
        "duplicates": 0,
        "interactions_without_text": 1,
    }
    assert read(tmp_path / "out") == {
        "behaviors.tsv": "user_id\titems\n7\t1 2 3\n5\t1 3\n",
        "items.tsv": (
            "item_id\ttext\n"
            "1\tToy Story (1995). Genres: Animation, Children's, Comedy\n"
            "2\tMisérables, Les (1995). Genres: Drama, Musical\n"
            "3\tunknown\n"
        ),
    }
    assert load_dataset(tmp_path / "out").item_file == "items.tsv"


def test_movielens_100k_without_u_genre_uses_the_standard_names(tmp_path):
    src = tmp_path / "ml-100k"
    write(src, "u.item", U_ITEM, "latin-1")
    write(src, "u.data", U_DATA, "latin-1")
    import_movielens(src, tmp_path / "out")
    assert (
        "1\tToy Story (1995). Genres: Animation, Children's, Comedy\n" in read(tmp_path / "out")["items.tsv"]
    )


def test_movielens_1m(tmp_path):
    src = tmp_path / "ml-1m"
    write(
        src,
        "movies.dat",
        "10::GoldenEye (1995)::Action|Adventure\n20::Café (2000)::(no genres listed)\n",
        "latin-1",
    )
    write(src, "ratings.dat", "1::20::5::978300760\n1::10::3::978300000\n2::10::4::1\n", "latin-1")
    info = import_movielens(src, tmp_path / "out")
    assert info["format"] == "ml-1m" and info["interactions"] == 3
    assert read(tmp_path / "out") == {
        "behaviors.tsv": "user_id\titems\n1\t10 20\n2\t10\n",
        "items.tsv": "item_id\ttext\n10\tGoldenEye (1995). Genres: Action, Adventure\n20\tCafé (2000)\n",
    }


def test_movielens_errors(tmp_path):
    src = tmp_path / "ml-1m"
    write(src, "movies.dat", "10::GoldenEye (1995)::Action\n", "latin-1")
    write(src, "ratings.dat", "1::10::5::978300760\n1::10::5\n", "latin-1")
    with pytest.raises(DataError) as e:
        import_movielens(src, tmp_path / "out")
    assert str(e.value) == f"{src / 'ratings.dat'}:2: expected 'user::item::rating::timestamp'"
    write(src, "ratings.dat", "1::10::5::soon\n", "latin-1")
    with pytest.raises(DataError) as e:
        import_movielens(src, tmp_path / "out")
    assert str(e.value) == f"{src / 'ratings.dat'}:1: timestamp: 'soon' is not a number"
    write(src, "movies.dat", "10::A (1995)::Action\n10::B (1996)::Drama\n", "latin-1")
    with pytest.raises(DataError) as e:
        import_movielens(src, tmp_path / "out")
    assert str(e.value) == f"{src / 'movies.dat'}:2: duplicated item id '10' (first on line 1)"
    with pytest.raises(DataError) as e:
        import_movielens(tmp_path / "nothing", tmp_path / "out")
    assert "not a MovieLens folder" in str(e.value)
    assert not (tmp_path / "out").exists()
    write(tmp_path / "out", "x", "keep")
    with pytest.raises(DataError) as e:
        import_movielens(src, tmp_path / "out")
    assert str(e.value) == f"{tmp_path / 'out'}: output folder already exists and is not empty"


def test_movielens_100k_bad_item_line(tmp_path):
    src = tmp_path / "ml-100k"
    write(src, "u.item", U_ITEM + "4|Too short|01-Jan-1995\n", "latin-1")
    write(src, "u.data", U_DATA, "latin-1")
    with pytest.raises(DataError) as e:
        import_movielens(src, tmp_path / "out")
    assert str(e.value).startswith(
        f"{src / 'u.item'}:4: expected 'id|title|release date|video date|url|19 genre"
    )


# ---------------------------------------------------------------- RecBole atomic files


def as_tsv(text: str) -> str:
    return text.replace("|", "\t")


def test_recbole_ml100k_excerpt(tmp_path):
    """The first 120 interactions of RecBole's ml-100k.inter and their items (item 118 removed)."""
    src = tmp_path / "ml-100k"
    write(src, "ml-100k.inter", as_tsv(ML100K_INTER))
    write(src, "ml-100k.item", as_tsv(ML100K_ITEM))
    info = import_recbole(src, tmp_path / "out")

    # Expected, computed independently: order users by first appearance, items by (time, line).
    records = [line.split("|") for line in ML100K_INTER.splitlines()[1:]]
    with_text = {line.split("|")[0] for line in ML100K_ITEM.splitlines()[1:]}
    per_user: dict[str, list[tuple[float, int, str]]] = {}
    for no, (user, item, _, ts) in enumerate(records):
        if item in with_text:
            per_user.setdefault(user, []).append((float(ts), no, item))
    expected = "".join(f"{u}\t{' '.join(i for *_, i in sorted(v))}\n" for u, v in per_user.items())

    out = read(tmp_path / "out")
    assert out["behaviors.tsv"] == "user_id\titems\n" + expected
    assert "\n62\t257 21 498 382\n" in out["behaviors.tsv"]  # sorted by timestamp
    assert "\n291\t1042 144\n" in out["behaviors.tsv"]  # 118 has no text
    items = out["items.tsv"].splitlines()
    assert items[0] == "item_id\ttext" and len(items) == 1 + len(with_text)
    assert "242\tKolya (1996). Genres: Comedy" in items
    assert "21\tMuppet Treasure Island (1996). Genres: Action, Adventure, Comedy, Musical, Thriller" in items
    assert info == {
        "format": "recbole",
        "users": len(per_user),
        "items": len(with_text),
        "interactions": 118,
        "duplicates": 0,
        "interactions_without_text": 2,
    }
    raw = load_dataset(tmp_path / "out")
    assert raw.user_keys[:3] == ["196", "186", "22"]


def test_recbole_genre_field_no_timestamp_and_inter_path(tmp_path):
    src = tmp_path / "shop"
    write(
        src,
        "shop.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
        "a\tHeat (1995)\t1995\tAction Crime\n"
        "b\tNo year\tunknown\t\n"
        "c\t\t2001\tDrama\n",  # no title -> no text -> not an item
    )
    write(src, "shop.inter", "user_id:token\titem_id:token\nu\tb\nu\ta\nu\tc\nv\ta\n")
    info = import_recbole(src / "shop.inter", tmp_path / "out")
    assert read(tmp_path / "out") == {
        "behaviors.tsv": "user_id\titems\nu\tb a\nv\ta\n",
        "items.tsv": "item_id\ttext\na\tHeat (1995). Genres: Action, Crime\nb\tNo year\n",
    }
    assert info["interactions_without_text"] == 1


def test_recbole_errors(tmp_path):
    src = tmp_path / "r"
    item = write(src, "r.item", "item_id:token\ttitle:token_seq\n1\tOne\n2\tTwo\textra\n")
    inter = write(src, "r.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\t1\t5\n")
    with pytest.raises(DataError) as e:
        import_recbole(src, tmp_path / "out")
    assert str(e.value) == f"{item}:3: expected 2 tab-separated fields, found 3"
    write(src, "r.item", "item_id:token\tname:token\n1\tOne\n")
    with pytest.raises(DataError) as e:
        import_recbole(src, tmp_path / "out")
    assert str(e.value) == f"{item}:1: no '...title...' field in the header"
    write(src, "r.item", "item_id:token\ttitle:token_seq\n1\tOne\n")
    write(src, "r.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\t1\t5\nu\t1\tlater\n")
    with pytest.raises(DataError) as e:
        import_recbole(src, tmp_path / "out")
    assert str(e.value) == f"{inter}:3: timestamp: 'later' is not a number"
    write(src, "r.inter", "session:token\titem_id:token\nu\t1\n")
    with pytest.raises(DataError) as e:
        import_recbole(src, tmp_path / "out")
    assert str(e.value) == f"{inter}:1: no 'user_id...' field in the header"
    write(src, "s.inter", "user_id:token\titem_id:token\n")
    with pytest.raises(DataError) as e:
        import_recbole(src, tmp_path / "out")
    several = "several .inter files (r.inter, s.inter): expected one RecBole NAME.inter with its NAME.item"
    assert str(e.value) == f"{src}: {several}"
    (src / "r.inter").unlink()
    with pytest.raises(DataError) as e:
        import_recbole(src, tmp_path / "out")
    assert str(e.value) == f"{src / 's.item'}: file not found"
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


ML100K_INTER = """\
user_id:token|item_id:token|rating:float|timestamp:float
196|242|3|881250949
186|302|3|891717742
22|377|1|878887116
244|51|2|880606923
166|346|1|886397596
298|474|4|884182806
115|265|2|881171488
253|465|5|891628467
305|451|3|886324817
6|86|3|883603013
62|257|2|879372434
286|1014|5|879781125
200|222|5|876042340
210|40|3|891035994
224|29|3|888104457
303|785|3|879485318
122|387|5|879270459
194|274|2|879539794
291|1042|4|874834944
234|1184|2|892079237
119|392|4|886176814
167|486|4|892738452
299|144|4|877881320
291|118|2|874833878
308|1|4|887736532
95|546|2|879196566
38|95|5|892430094
102|768|2|883748450
63|277|4|875747401
160|234|5|876861185
50|246|3|877052329
301|98|4|882075827
225|193|4|879539727
290|88|4|880731963
97|194|3|884238860
157|274|4|886890835
181|1081|1|878962623
278|603|5|891295330
276|796|1|874791932
7|32|4|891350932
10|16|4|877888877
284|304|4|885329322
201|979|2|884114233
276|564|3|874791805
287|327|5|875333916
246|201|5|884921594
242|1137|5|879741196
249|241|5|879641194
99|4|5|886519097
178|332|3|882823437
251|100|4|886271884
81|432|2|876535131
260|322|4|890618898
25|181|5|885853415
59|196|5|888205088
72|679|2|880037164
87|384|4|879877127
290|143|5|880474293
42|423|5|881107687
292|515|4|881103977
115|20|3|881171009
20|288|1|879667584
201|219|4|884112673
13|526|3|882141053
246|919|4|884920949
138|26|5|879024232
167|232|1|892738341
60|427|5|883326620
57|304|5|883698581
223|274|4|891550094
189|512|4|893277702
243|15|3|879987440
92|1049|1|890251826
246|416|3|884923047
194|165|4|879546723
241|690|2|887249482
178|248|4|882823954
254|1444|3|886475558
293|5|3|888906576
127|229|5|884364867
225|237|5|879539643
299|229|3|878192429
225|480|5|879540748
276|54|3|874791025
291|144|5|874835091
222|366|4|878183381
267|518|5|878971773
42|403|3|881108684
11|111|4|891903862
95|625|4|888954412
8|338|4|879361873
162|25|4|877635573
87|1016|4|879876194
279|154|5|875296291
145|275|2|885557505
119|1153|5|874781198
62|498|4|879373848
62|382|3|879375537
28|209|4|881961214
135|23|4|879857765
32|294|3|883709863
90|382|5|891383835
286|208|4|877531942
293|685|3|888905170
216|144|4|880234639
166|328|5|886397722
250|496|4|878090499
271|132|5|885848672
160|174|5|876860807
265|118|4|875320714
198|498|3|884207492
42|96|5|881107178
168|151|5|884288058
110|307|4|886987260
58|144|4|884304936
90|648|4|891384754
271|346|4|885844430
62|21|3|879373460
279|832|3|881375854
237|514|4|879376641
"""

ML100K_ITEM = """\
item_id:token|movie_title:token_seq|release_year:token|class:token_seq
1|Toy Story|1995|Animation Children's Comedy
4|Get Shorty|1995|Action Comedy Drama
5|Copycat|1995|Crime Drama Thriller
15|Mr. Holland's Opus|1995|Drama
16|French Twist (Gazon maudit)|1995|Comedy Romance
20|Angels and Insects|1995|Drama Romance
21|Muppet Treasure Island|1996|Action Adventure Comedy Musical Thriller
23|Taxi Driver|1976|Drama Thriller
25|Birdcage, The|1996|Comedy
26|Brothers McMullen, The|1995|Comedy
29|Batman Forever|1995|Action Adventure Comedy Crime
32|Crumb|1994|Documentary
40|To Wong Foo, Thanks for Everything! Julie Newmar|1995|Comedy
51|Legends of the Fall|1994|Drama Romance War Western
54|Outbreak|1995|Action Drama Thriller
86|Remains of the Day, The|1993|Drama
88|Sleepless in Seattle|1993|Comedy Romance
95|Aladdin|1992|Animation Children's Comedy Musical
96|Terminator 2: Judgment Day|1991|Action Sci-Fi Thriller
98|Silence of the Lambs, The|1991|Drama Thriller
100|Fargo|1996|Crime Drama Thriller
111|Truth About Cats & Dogs, The|1996|Comedy Romance
132|Wizard of Oz, The|1939|Adventure Children's Drama Musical
143|Sound of Music, The|1965|Musical
144|Die Hard|1988|Action Thriller
151|Willy Wonka and the Chocolate Factory|1971|Adventure Children's Comedy
154|Monty Python's Life of Brian|1979|Comedy
165|Jean de Florette|1986|Drama
174|Raiders of the Lost Ark|1981|Action Adventure
181|Return of the Jedi|1983|Action Adventure Romance Sci-Fi War
193|Right Stuff, The|1983|Drama
194|Sting, The|1973|Comedy Crime
196|Dead Poets Society|1989|Drama
201|Evil Dead II|1987|Action Adventure Comedy Horror
208|Young Frankenstein|1974|Comedy Horror
209|This Is Spinal Tap|1984|Comedy Drama Musical
219|Nightmare on Elm Street, A|1984|Horror
222|Star Trek: First Contact|1996|Action Adventure Sci-Fi
229|Star Trek III: The Search for Spock|1984|Action Adventure Sci-Fi
232|Young Guns|1988|Action Comedy Western
234|Jaws|1975|Action Horror
237|Jerry Maguire|1996|Drama Romance
241|Last of the Mohicans, The|1992|Action Romance War
242|Kolya|1996|Comedy
246|Chasing Amy|1997|Drama Romance
248|Grosse Pointe Blank|1997|Comedy Crime
257|Men in Black|1997|Action Adventure Comedy Sci-Fi
265|Hunt for Red October, The|1990|Action Thriller
274|Sabrina|1995|Comedy Romance
275|Sense and Sensibility|1995|Drama Romance
277|Restoration|1995|Drama
288|Scream|1996|Horror Thriller
294|Liar Liar|1997|Comedy
302|L.A. Confidential|1997|Crime Film-Noir Mystery Thriller
304|Fly Away Home|1996|Adventure Children's
307|Devil's Advocate, The|1997|Crime Horror Mystery Thriller
322|Murder at 1600|1997|Mystery Thriller
327|Cop Land|1997|Crime Drama Mystery
328|Conspiracy Theory|1997|Action Mystery Romance Thriller
332|Kiss the Girls|1997|Crime Drama Thriller
338|Bean|1997|Comedy
346|Jackie Brown|1997|Crime Drama
366|Dangerous Minds|1995|Drama
377|Heavyweights|1994|Children's Comedy
382|Adventures of Priscilla, Queen of the Desert, The|1994|Comedy Drama
384|Naked Gun 33 1/3: The Final Insult|1994|Comedy
387|Age of Innocence, The|1993|Drama
392|Man Without a Face, The|1993|Drama
403|Batman|1989|Action Adventure Crime Drama
416|Old Yeller|1957|Children's Drama
423|E.T. the Extra-Terrestrial|1982|Children's Drama Fantasy Sci-Fi
427|To Kill a Mockingbird|1962|Drama
432|Fantasia|1940|Animation Children's Musical
451|Grease|1978|Comedy Musical Romance
465|Jungle Book, The|1994|Adventure Children's Romance
474|Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb|1963|Sci-Fi War
480|North by Northwest|1959|Comedy Thriller
486|Sabrina|1954|Comedy Romance
496|It's a Wonderful Life|1946|Drama
498|African Queen, The|1951|Action Adventure Romance War
512|Wings of Desire|1987|Comedy Drama Romance
514|Annie Hall|1977|Comedy Romance
515|Boot, Das|1981|Action Drama War
518|Miller's Crossing|1990|Drama
526|Ben-Hur|1959|Action Adventure Drama
546|Broken Arrow|1996|Action Thriller
564|Tales from the Hood|1995|Comedy Horror
603|Rear Window|1954|Mystery Thriller
625|Sword in the Stone, The|1963|Animation Children's
648|Quiet Man, The|1952|Comedy Romance
679|Conan the Barbarian|1981|Action Adventure
685|Executive Decision|1996|Action Thriller
690|Seven Years in Tibet|1997|Drama War
768|Casper|1995|Adventure Children's
785|Only You|1994|Comedy Romance
796|Speechless|1994|Comedy Romance
832|Bogus|1996|Children's Drama Fantasy
919|City of Lost Children, The|1995|Adventure Sci-Fi
979|Trigger Effect, The|1996|Drama Thriller
1014|Romy and Michele's High School Reunion|1997|Comedy
1016|Con Air|1997|Action Adventure Thriller
1042|Just Cause|1995|Mystery Thriller
1049|House Arrest|1996|Comedy
1081|Curdled|1996|Crime
1137|Beautiful Thing|1996|Drama Romance
1153|Backbeat|1993|Drama Musical
1184|Endless Summer 2, The|1994|Documentary
1444|That Darn Cat!|1965|Children's Comedy Mystery
"""

"""Control characters in user text are escaped wherever it is shown (issue 17, item 8)."""

from tcf.util.text import printable


def test_controls_and_bidi_overrides_are_escaped_and_the_rest_kept():
    assert printable("mind\x1b[2J\r\n\x07\x7f\x9b") == "mind\\x1b[2J\\x0d\\x0a\\x07\\x7f\\x9b"
    assert printable("gnp.\u202eexe") == "gnp.\\u202eexe"
    assert printable("café ± 東京 [red]x[/]") == "café ± 東京 [red]x[/]"
    assert printable("") == ""

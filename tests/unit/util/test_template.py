"""tcf.util.template: column placeholders only, literal braces, the empty-field rule, errors with positions."""

from __future__ import annotations

import pytest

from tcf.util.template import parse_template

ROW = {"title": "Shoe", "category": "Sports", "brand": "Acme", "year": "1999"}


@pytest.mark.parametrize(("template", "fields", "text"), [
    ("{title}. {category}. {brand}", {}, "Shoe. Sports. Acme"),
    ("{title}. {category}. {brand}", {"category": ""}, "Shoe. Acme"),  # the text before a field is its own
    ("{title}. {category}. {brand}", {"brand": " "}, "Shoe. Sports"),  # whitespace only is empty
    ("{title}. {category}. {brand}", {"title": ""}, "Sports. Acme"),  # no separator left at the start
    ("{title}. {category}. {brand}", {"title": "", "category": ""}, "Acme"),
    ("{title}. {category}. {brand}", {"title": " Shoe ", "brand": "\tAcme "}, "Shoe. Sports. Acme"),  # stripped
    ("{title}. {category}. {brand}", {"title": "", "category": "", "brand": ""}, ""),
    # labels stay with their field: never "Shoe. Brand: Sports"
    ("{title}. Brand: {brand}. Category: {category}", {"brand": ""}, "Shoe. Category: Sports"),
    ("Title: {title}. Brand: {brand}.", {"title": ""}, "Brand: Acme."),
    ("Title: {title}. Brand: {brand}.", {"brand": ""}, "Title: Shoe"),  # the last field owns the text after it
    ("{title} ({year})", {"year": ""}, "Shoe"),
    ("{title} ({year})", {"title": ""}, "(1999)"),
    ("- {title} / {brand}", {}, "- Shoe / Acme"),  # the first field keeps its text as written
    ("- {title} / {brand}", {"title": ""}, "Acme"),
    ("Item: {title}", {"title": ""}, ""),  # all fields empty: no text, whatever the literals
])
def test_fill_and_the_empty_field_rule(template, fields, text):
    assert parse_template(template).fill({**ROW, **fields}) == text


def test_the_readme_example():
    t = parse_template("{title}. Brand: {brand}. {category}")
    assert [t.fill({**ROW, **fields}) for fields in ({}, {"brand": ""}, {"title": ""})] == [
        "Shoe. Brand: Acme. Sports", "Shoe. Sports", "Brand: Acme. Sports"]
    assert parse_template("{title} ({year}) {brand}").fill({**ROW, "year": ""}) == "Shoe) Acme"  # put it last


def test_literal_braces_and_repeated_columns():
    t = parse_template("{{{title}}} by {brand}: {title}")
    assert t.names == ("title", "brand", "title")
    assert t.literals == ("{", "} by ", ": ", "")
    assert t.fill(ROW) == "{Shoe} by Acme: Shoe"
    assert parse_template("{a-b}|{_c}|{标题}").fill({"a-b": "1", "_c": "2", "标题": "3"}) == "1|2|3"


def test_values_are_never_interpreted():
    """A value holding braces or format syntax is text, not a template (one pass, no re-formatting)."""
    t = parse_template("{title} ({brand})")
    assert t.fill({"title": "{brand}", "brand": "{0.__class__}"}) == "{brand} ({0.__class__})"


@pytest.mark.parametrize(("source", "message"), [
    ("{title", "unbalanced '{' at position 0"),
    ("a {title {x}}", "unbalanced '{' at position 2"),
    ("{title}}", "single '}' at position 7: write '}}' for a literal brace"),
    ("{}", "empty placeholder {} at position 0"),
    ("x {0}", "positional placeholder {0} at position 2"),
    ("{a.b}", "attribute or index access in {a.b} at position 0"),
    ("{a[0]}", "attribute or index access in {a[0]} at position 0"),
    ("{title.__class__.__init__}", "attribute or index access in {title.__class__.__init__}"),
    ("{a!r}", "conversion in {a!r} at position 0"),
    ("{a:>10}", "format spec in {a:>10} at position 0"),
    ("{a b}", "bad placeholder {a b} at position 0"),
    ("no placeholder {{here}}", "names no column"),
    ("", "names no column"),
])
def test_malformed_templates_say_what_and_where(source, message):
    with pytest.raises(ValueError) as e:
        parse_template(source)
    assert str(e.value).startswith(message)

"""Byte sizes as people write them."""

from __future__ import annotations

import pytest

from tcf.util.units import GiB, MiB, parse_bytes


@pytest.mark.parametrize("text,value", [
    ("8GiB", 8 * GiB), ("6.5GB", 6_500_000_000), ("512MiB", 512 * MiB), ("512 mib", 512 * MiB),
    ("1024", 1024), ("2KB", 2000), ("1TiB", 1 << 40), (" 0.5 GiB ", GiB // 2), (4096, 4096),
])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "8G", "GiB", "-1GiB", "0", "1.2.3GB", "eight GiB", "8 GiBs"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match="bad memory size"):
        parse_bytes(text)

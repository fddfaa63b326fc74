"""Server-sent filenames become single, distinct path components, whatever they contain."""

from __future__ import annotations

import pytest

from sectra_adapter._errors import DownloadError
from sectra_adapter._filenames import NameAllocator, filename_from_disposition, sanitise


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('attachment; filename="slide.svs"', "slide.svs"),
        ("attachment; filename=slide.svs", "slide.svs"),
        ("attachment; filename*=UTF-8''sl%C3%A9de.ndpi", "sléde.ndpi"),
        ("attachment; filename=\"fallback.svs\"; filename*=UTF-8''real.svs", "real.svs"),
        ('attachment; filename="with \\"quote\\".svs"', 'with "quote".svs'),
        ("attachment", None),
        ('attachment; filename=""', None),
        (None, None),
    ],
)
def test_filename_from_content_disposition(header: str | None, expected: str | None) -> None:
    assert filename_from_disposition(header) == expected


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("../../etc/x", "x"),
        ("/etc/passwd", "passwd"),
        ("C:\\Windows\\evil.dll", "evil.dll"),
        ("..\\..\\x.svs", "x.svs"),
        ("a\x00b\x1fc\x7f.svs", "abc.svs"),
        ("line\r\nbreak.svs", "linebreak.svs"),
        ("..", ""),
        ("...hidden", "hidden"),
        ("name. ", "name"),
        ('a<b>c:d"e|f?g*h.svs', "a_b_c_d_e_f_g_h.svs"),
        ("dir/", ""),
    ],
)
def test_sanitise(raw: str, safe: str) -> None:
    assert sanitise(raw) == safe


def test_long_names_are_cut_keeping_the_extension() -> None:
    cut = sanitise("é" * 300 + ".ome.tiff")
    assert cut.endswith(".ome.tiff")
    assert len(cut.encode()) <= 200


def test_allocator_never_hands_out_a_name_or_its_part_file_twice() -> None:
    names = NameAllocator()
    got = [
        names.allocate(raw, i)
        for i, raw in enumerate(["a.svs", "a.svs", "A.SVS", "a.svs.part", "../a.svs"], 1)
    ]
    assert got == ["a.svs", "a-2.svs", "A-3.SVS", "a-4.svs.part", "a-5.svs"]
    folded = {n.casefold() for n in got} | {(n + ".part").casefold() for n in got}
    assert len(folded) == 2 * len(got)


@pytest.mark.parametrize("raw", [None, "", "..", "/"])
def test_a_part_without_a_usable_name_is_an_error_that_does_not_echo_it(raw: str | None) -> None:
    with pytest.raises(DownloadError, match="part 3 of the slide response has no"):
        NameAllocator().allocate(raw, 3)

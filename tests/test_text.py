"""bintally.text: control characters are refused with the character named; whole numbers are ASCII digits only."""

import pytest

from bintally.text import TextError, check_text, control_character, whole_number


@pytest.mark.parametrize("value", ["bin\x00", "a\nb", "tab\there", "cr\r", "del\x7f", "c1\x85", "sep\u2028", "esc\x1b[31m", "bin\u202e21", "iso\u2066x\u2069"])
def test_control_characters_in_one_line_text_are_refused_naming_the_character(value):
    with pytest.raises(TextError) as caught:
        check_text(value, "bin id")
    assert str(caught.value).startswith("bin id: contains the control character U+")
    assert control_character(value) in str(caught.value)


def test_bidi_overrides_are_refused_even_in_comments():
    with pytest.raises(TextError, match="U\\+202E"):
        check_text("fine\nthen \u202egnp.exe", "comment", multiline=True)


def test_multiline_text_keeps_line_breaks_and_tabs_but_not_nul():
    comment = "first line\n\tsecond line\r\n"
    assert check_text(comment, "comment", multiline=True) == comment
    with pytest.raises(TextError, match="U\\+0000"):
        check_text("ok\nthen\x00", "comment", multiline=True)


@pytest.mark.parametrize("value", ["B00-12", "ÄÖ bin ünïcode", "名前", "' =1+2", ""])
def test_ordinary_text_passes_unchanged(value):
    assert check_text(value, "name") is value


@pytest.mark.parametrize("text, number", [("0", 0), ("12", 12), (" 7 ", 7), ("+3", 3), ("-2", -2), ("007", 7)])
def test_whole_numbers_in_ascii_digits(text, number):
    assert whole_number(text) == number


@pytest.mark.parametrize("text", ["1_000", "１２", "١٢", "1.0", "1e3", "", " ", "0x10", "3 4", "²"])
def test_what_python_int_would_stretch_to_is_not_a_whole_number(text):
    assert whole_number(text) is None


@pytest.mark.parametrize("value", ["a\ud800", "\udfffb", "name\udcff"])  # JSON's "\ud800"; a byte not UTF-8 in argv
def test_a_lone_surrogate_is_refused_as_not_text(value):
    with pytest.raises(TextError, match="U\\+D[89A-F][0-9A-F]{2}, half of a UTF-16 surrogate pair"):
        check_text(value, "by")
    assert check_text("ok 😀", "by") == "ok 😀"  # a pair, decoded, is one character

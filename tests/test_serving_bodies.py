"""The one base64 decoder and the one refusal of a URI, without a server."""

from __future__ import annotations

import asyncio
import base64

import pytest

from bintally.serving.bodies import decode_base64
from bintally.serving.errors import RequestError, source_refusal
from bintally.sources import SourceError, SourcePolicy, UriFetcher

PHOTO = b"\xff\xd8\xff\xe0 not really a JPEG"
B64 = base64.b64encode(PHOTO).decode()


@pytest.mark.parametrize("text", [B64, f"data:image/jpeg;base64,{B64}", f"data:;base64,{B64}",
                                  f"{B64[:8]}\n{B64[8:]}"])
def test_base64_and_base64_data_urls_decode(text):
    assert decode_base64(text, "image_b64") == PHOTO


@pytest.mark.parametrize(("value", "words"), [
    (7, "base64 string, got int"),
    ("", "got an empty string"),
    ("not*base64", "not valid base64"),
    (f"data:image/jpeg,{B64}", "data:[<media type>];base64,<data>"),  # a data: URL that is not base64
    (f"data:image/jpeg;base64{B64}", "data:[<media type>];base64,<data>"),  # no comma
    ("data:" + "x" * 300 + f";base64,{B64}", "data:[<media type>];base64,<data>"),
])
def test_anything_else_is_a_400_naming_where(value, words):
    with pytest.raises(RequestError) as refused:
        decode_base64(value, "images[3].image_b64")
    assert refused.value.status == 400 and refused.value.message.startswith("images[3].image_b64: ") and words in refused.value.message


def test_a_source_refusal_keeps_its_message_and_maps_to_a_status(tmp_path):
    (tmp_path / "inside.jpg").write_bytes(PHOTO)
    fetcher = UriFetcher(SourcePolicy(file_root=str(tmp_path), max_bytes=10).checked())
    cases = {"http://example.com/a.jpg": 403, (tmp_path / "missing.jpg").as_uri(): 400, (tmp_path / "inside.jpg").as_uri(): 413,
             "file:///etc/passwd": 403, "": 400}
    for uri, status in cases.items():
        with pytest.raises(SourceError) as failed:
            asyncio.run(fetcher.fetch(uri))
        refusal = source_refusal(failed.value)
        assert (refusal.status, refusal.message) == (status, failed.value.message), uri

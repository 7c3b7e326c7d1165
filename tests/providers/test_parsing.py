"""InlinePayloads: base64 image payloads decoded while a JSON answer streams in."""

from __future__ import annotations

import base64
import json
import os

import pytest

from bot.providers.parsing import InlinePayloads

IMAGE = os.urandom(50_000)
B64 = base64.b64encode(IMAGE).decode()
OTHER = base64.b64encode(IMAGE[::-1]).decode()


def feed(body: bytes, size: int) -> InlinePayloads:
    payloads = InlinePayloads()
    for i in range(0, len(body), size):
        payloads.feed(body[i : i + size])
    return payloads


@pytest.mark.parametrize("size", [1, 3, 7, 31, 32, 33, 4096, 65536, 10**7])
def test_payloads_survive_any_chunking(size: int) -> None:
    answer = {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": 'a "quoted" word'},
                        {"inlineData": {"mimeType": "image/png", "data": B64}},
                        {"inline_data": {"mime_type": "image/jpeg", "data": OTHER}},
                    ]
                }
            }
        ],
        "data": "short stays",
    }
    payloads = feed(json.dumps(answer).encode(), size)
    skeleton = payloads.skeleton()
    assert len(skeleton) < 500 and payloads.error is None
    parsed = json.loads(skeleton)
    parts = parsed["candidates"][0]["content"]["parts"]
    assert parts[0]["text"] == 'a "quoted" word' and parsed["data"] == "short stays"
    assert payloads.payload(parts[1]["inlineData"]["data"]) == IMAGE
    second = payloads.payload(parts[2]["inline_data"]["data"])
    assert second == IMAGE[::-1]
    assert payloads.payload("short stays") is None


def test_escaped_slashes_and_whitespace_are_accepted() -> None:
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))
    body = json.dumps({"inlineData": {"data": wrapped}}).replace("/", "\\/").encode()
    payloads = feed(body, 100)
    assert payloads.error is None
    assert payloads.payload(json.loads(payloads.skeleton())["inlineData"]["data"]) == IMAGE


@pytest.mark.parametrize(
    ("data", "fragment"),
    [(B64[:-3], "truncated"), (B64[:5000] + "!!!!" + B64[5004:], ""), (B64[:100] + "=" + B64[101:], "")],
)
def test_corrupt_payloads_are_reported(data: str, fragment: str) -> None:
    payloads = feed(json.dumps({"inlineData": {"data": data}}).encode(), 1000)
    json.loads(payloads.skeleton())
    assert payloads.error is not None and fragment in payloads.error


def test_an_answer_cut_inside_a_payload_is_not_valid_json() -> None:
    body = json.dumps({"inlineData": {"data": B64}}).encode()[:-5000]
    with pytest.raises(ValueError):
        json.loads(feed(body, 4096).skeleton())

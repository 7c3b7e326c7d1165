"""The Edit button's modal: the "which image" number is parsed strictly, and bad input costs nothing."""

from __future__ import annotations

import base64
import time

import pytest

from bot.errors import ValidationError
from bot.presentation.views import parse_image_number
from tests.presentation.conftest import Palette, text_inputs

BAD_NUMBERS = ["²", "0", "3", "-1", "١", "1.5", "two", "+1", "1 2"]


async def test_which_image_takes_ascii_numbers_in_range_only(palette: Palette) -> None:
    ix = await palette.imagine(palette.alice, "two lighthouses", count=2)
    result = await palette.result_message(ix)
    await palette.idle()
    assert len(result.files) == 2
    second_image = result.files[1][1]
    generated = palette.listenhub.calls["generate"]
    reserved = (await palette.bot.db.jobs.ledger_balance()).reserved
    for value in BAD_NUMBERS:
        click = await palette.fake.click_button(palette.alice, result, palette.button(result, "edit"))
        await click.wait_for(lambda i: i.modal is not None, timeout=5)
        assert len(text_inputs(click.modal)) == 2  # the prompt and which image
        submitted = await palette.fill_modal(click, palette.alice, ["add a rainbow", value])
        text = await palette.reply(submitted)
        assert submitted.ephemeral, value
        assert "from 1 to 2" in text and "Nothing was charged" in text, (value, text)
        assert "Something went wrong" not in text
    await palette.idle()
    assert palette.listenhub.calls["generate"] == generated
    assert (await palette.bot.db.jobs.ledger_balance()).reserved == reserved
    usage = await palette.bot.db.jobs.usage(palette.alice.id, time.time())
    assert usage.in_flight == 0
    # Spaces around a good number are fine: the second image is edited.
    click = await palette.fake.click_button(palette.alice, result, palette.button(result, "edit"))
    submitted = await palette.fill_modal(click, palette.alice, ["add a rainbow", " 2 "])
    edited = await palette.result_message(submitted)
    body = palette.listenhub.generate_requests[-1].json
    assert base64.b64decode(body["referenceImages"][0]["inlineData"]["data"]) == second_image
    assert (await palette.job_of(edited)).kind == "edit"


@pytest.mark.parametrize(("raw", "expected"), [("", 1), ("  ", 1), ("1", 1), (" 2 ", 2), ("02", 2)])
def test_parse_image_number_accepts(raw: str, expected: int) -> None:
    assert parse_image_number(raw, 2) == expected


@pytest.mark.parametrize("raw", BAD_NUMBERS)
def test_parse_image_number_refuses(raw: str) -> None:
    with pytest.raises(ValidationError, match="from 1 to 2"):
        parse_image_number(raw, 2)

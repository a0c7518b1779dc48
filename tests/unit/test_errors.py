"""How a refused value and its reason are shown back (txguard.errors, intake.problem): masked, short, in words."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from txguard.errors import echo, quoted, said, shorten
from txguard.intake import TransactionIn, problem
from txguard.label_intake import LabelBatch

PAN = 4111111111111111
MASKED = "411111******1111"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (PAN, MASKED),
        (-PAN, "-" + MASKED),
        (Decimal("4111111111111111"), MASKED),
        (Decimal("4111111111111111.0"), MASKED + ".0"),
        (str(PAN), MASKED),
        ([PAN], f"[{MASKED}]"),
        ({"card": PAN}, f'{{"card": {MASKED}}}'),
        # Not a card number: shown as it came, an integer as an integer.
        (4111111111111112, 4111111111111112),
        (1714700000000, 1714700000000),
        # An epoch-millisecond timestamp that passes the Luhn check (one in ten does): a refused timestamp or expiry
        # is shown back as sent, never as a masked card number.
        (1714700000008, 1714700000008),
        (42, 42),
        (True, True),
        (None, None),
    ],
)
def test_a_card_number_is_masked_whatever_its_json_type(value: Any, shown: Any) -> None:
    assert echo(value) == shown
    assert str(PAN) not in quoted(value)


def test_a_problem_line_masks_its_value_and_reason_and_omits_a_value_never_given() -> None:
    assert said("card_id", PAN, f"{PAN} is refused") == f"card_id = '{MASKED}': {MASKED} is refused"
    assert said("kind", None, "is required") == "kind: is required"
    assert said("fraud", "yes", "must be true or false") == "fraud = 'yes': must be true or false"
    assert said("limit", 5, "too small") == "limit = 5: too small"
    assert shorten(f"the value {PAN}") == f"the value {MASKED}"


def problems_of(model: Any, body: Any) -> list[tuple[str | None, Any, str]]:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(body)
    return [(p.field, p.value, p.reason) for p in (problem(e, e["loc"]) for e in refused.value.errors())]


def test_a_card_number_sent_as_a_json_integer_is_masked_in_the_problem() -> None:
    body = {"account_id": 50, "transaction_id": 6002, "timestamp": 1714700000000, "amount": "1.00", "card_id": PAN}
    ((field, value, reason),) = problems_of(TransactionIn, body)
    assert (field, value) == ("card_id", MASKED) and "card number" in reason
    body = {**body, "card_id": None, "currency": PAN}
    ((field, value, reason),) = problems_of(TransactionIn, body)
    assert (field, value) == ("currency", MASKED) and str(PAN) not in reason


def test_pydantic_wording_is_replaced_by_txguards() -> None:
    assert problems_of(LabelBatch, {"labels": []}) == [("labels", "[]", "must hold at least 1 item; it holds 0")]
    assert problems_of(LabelBatch, {"labels": 5}) == [("labels", 5, "must be an array")]
    label = {"transaction_id": 1, "fraud": True, "source": "analyst"}
    assert problems_of(LabelBatch, {"labels": [label, 5]}) == [("labels.1", 5, "must be a JSON object")]
    assert problems_of(LabelBatch, {}) == [("labels", None, "is required")]

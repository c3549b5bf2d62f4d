"""One rule for two numbers: the ring, the Celery tasks and CLI, and the math server give the same verdict and
the same message for the same input.

Before labnodes.numbers, each program had its own rule: 10**30 went round the ring (it allowed n <= 10**30) but
Celery refused it (n < 10**30), and the math server allowed 100 digits; "-4" was "numbers must not be
negative, got -4" on the ring, "gcd: a must be >= 0, got -4" from Celery and "negative numbers are not
allowed" from the math server. These tests tried every written pair below on all three.
"""

from __future__ import annotations

import pytest

from labnodes import LabnodesError, celery_cli, mathserver, numbers, ring, tasks

# (written pair, the verdict: (a, b) or the message)
CASES = [
    ("48,18", (48, 18)),
    (" 48 ,\t18 ", (48, 18)),
    ("0,0", (0, 0)),
    (f"{10**30 - 1},1", (10**30 - 1, 1)),
    ("0" * 40 + "7,3", (7, 3)),  # leading zeros are not significant digits
    (f"{10**30},1", numbers.TOO_BIG),
    (f"1,{10**30}", numbers.TOO_BIG),
    ("9" * 31 + ",1", numbers.TOO_BIG),
    ("1" * 200 + ",1", numbers.TOO_BIG),
    ("-4,6", numbers.NEGATIVE),
    ("4,- 6", numbers.NEGATIVE),
    ("-0,6", numbers.NEGATIVE),
    ("4.5,2", numbers.DIGITS),
    ("+5,2", numbers.DIGITS),
    ("0x10,2", numbers.DIGITS),
    ("1_000,2", numbers.DIGITS),
    ("\u0661\u0662,3", numbers.DIGITS),  # Arabic-Indic digits are not 0-9
    ("12,oops", numbers.DIGITS),
    (",", numbers.DIGITS),
    ("1,2,3", numbers.SHAPE),
    ("48", numbers.SHAPE),
    ("", numbers.SHAPE),
    ("  ", numbers.SHAPE),
]


def ring_verdict(text: str):
    try:
        return ring.parse_numbers(text)
    except ValueError as exc:
        return str(exc)


def celery_verdict(text: str):
    fields = text.split(",")
    if len(fields) != 2 or not text.strip(" \t"):
        return numbers.SHAPE  # `celery submit gcd A B` takes two arguments: the shape is argparse's business
    try:
        return celery_cli.parse_args_for("gcd", fields)
    except LabnodesError as exc:
        return str(exc)


def math_verdict(text: str):
    reply = mathserver.answer(text.encode())
    if reply.startswith("ERR "):
        return reply[4:]
    a, b = mathserver.parse_request(text.encode())
    return (a, b)


@pytest.mark.parametrize("text, verdict", CASES)
@pytest.mark.parametrize("program", [ring_verdict, celery_verdict, math_verdict], ids=["ring", "celery", "math"])
def test_every_program_gives_the_same_verdict_and_message(program, text, verdict):
    assert program(text) == verdict


@pytest.mark.parametrize("text, verdict", CASES)
def test_parse_pair_is_the_rule(text, verdict):
    if isinstance(verdict, tuple):
        assert numbers.parse_pair(text) == verdict
    else:
        with pytest.raises(numbers.NumbersError) as info:
            numbers.parse_pair(text)
        assert str(info.value) == verdict


@pytest.mark.parametrize(
    "a, b, message",
    [
        (10**30, 1, numbers.TOO_BIG),
        pytest.param(1, 10**5000, numbers.TOO_BIG, id="b-has-5001-digits"),
        (-1, 18, numbers.NEGATIVE),
        (4.0, 2, "numbers must be integers, got float"),
        (True, 2, "numbers must be integers, got bool"),
        ("48", 2, "numbers must be integers, got str"),
    ],
)
def test_typed_values_get_the_same_messages_on_the_ring_and_in_celery_tasks(a, b, message):
    with pytest.raises(ValueError) as on_ring:
        ring.check_numbers([a, b])
    with pytest.raises(ValueError) as in_task:
        tasks.check_operands("gcd", a, b)
    assert str(on_ring.value) == str(in_task.value) == message


def test_the_largest_valid_pair_is_accepted_everywhere():
    big = 10**30 - 1
    assert ring.check_numbers([big, big]) == (big, big)
    assert tasks.check_operands("lcm", big, big) == (big, big)
    assert mathserver.answer(f"{big},{big}".encode()) == f"OK gcd={big} lcm={big}"

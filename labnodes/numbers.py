"""Two numbers: the one rule every labnodes program applies to a gcd/lcm pair, with one message per verdict.

A valid number is a non-negative integer below 10**30 (at most 30 decimal digits once leading zeros are
dropped). The ring (`ring send --numbers`, the message on the wire), the Celery tasks and `celery submit`, and
the math server (its ERR lines) all check with these functions, so the same input gets the same verdict and
the same message everywhere.

Written form (command lines, the math server's request line)
    pair   = number "," number        spaces or tabs allowed around each number: "48, 18"
    number = 1*DIGIT                  ASCII 0-9 only; no sign, no "+", no "_", no exponent

Verdicts and their messages (NumbersError, a ValueError; str(exc) is the message, never echoing the input):
    SHAPE     "expected two numbers separated by a comma, like 48,18"   also for an empty text
    NEGATIVE  "negative numbers are not allowed"                        "-4", "- 4", "-0"
    DIGITS    "numbers must be decimal digits 0-9"                      "4.5", "+5", "0x10", "4a", "١٢"
    TOO_BIG   "numbers must be less than 10**30"                        31 or more significant digits
    NOT_INT   "numbers must be integers, got <type>"                    typed values only (JSON, serpent): a
                                                                        bool, float (even 4.0), str or None

The rule is checked on the digits before they are converted, so a huge text never reaches int().
"""

from __future__ import annotations

import re

MAX_DIGITS = 30  # significant decimal digits
LIMIT = 10**MAX_DIGITS  # numbers are < LIMIT
LIMIT_TEXT = f"10**{MAX_DIGITS}"

SHAPE = "expected two numbers separated by a comma, like 48,18"
NEGATIVE = "negative numbers are not allowed"
DIGITS = "numbers must be decimal digits 0-9"
TOO_BIG = f"numbers must be less than {LIMIT_TEXT}"

_DIGITS = re.compile(r"[ \t]*([0-9]+)[ \t]*")
_NEGATIVE = re.compile(r"[ \t]*-[ \t]*[0-9]+[ \t]*")


class NumbersError(ValueError):
    """Input that is not a valid number or pair; str(exc) is one of the messages above."""


def check_number(value) -> int:
    """A typed value (from JSON or serpent) -> the int, or NumbersError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise NumbersError(f"numbers must be integers, got {type(value).__name__}")
    if value < 0:
        raise NumbersError(NEGATIVE)
    if value >= LIMIT:
        raise NumbersError(TOO_BIG)
    return int(value)


def check_pair(a, b) -> tuple[int, int]:
    """Two typed values -> (a, b), or NumbersError for the first bad one."""
    return check_number(a), check_number(b)


def parse_number(text: str) -> int:
    """One written number ("48", " 48 ") -> int, or NumbersError (DIGITS, NEGATIVE or TOO_BIG)."""
    match = _DIGITS.fullmatch(text)
    if match is None:
        raise NumbersError(NEGATIVE if _NEGATIVE.fullmatch(text) else DIGITS)
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > MAX_DIGITS:
        raise NumbersError(TOO_BIG)
    return int(digits)


def parse_pair(text: str) -> tuple[int, int]:
    """The written pair "A,B" -> (a, b), or NumbersError."""
    fields = text.split(",")
    if len(fields) != 2 or not text.strip(" \t"):
        raise NumbersError(SHAPE)
    return parse_number(fields[0]), parse_number(fields[1])

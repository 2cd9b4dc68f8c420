"""The phone recognizer that skips what cannot match finds exactly what Presidio's finds."""

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers.phonenumberutil import SUPPORTED_REGIONS
from presidio_analyzer.predefined_recognizers import PhoneRecognizer

from llm_pipeline.curation.pii_phone import DigitWindowPhoneRecognizer, digit_floor, nsn_digits, plus_floor

DEFAULT_REGIONS = PhoneRecognizer.DEFAULT_SUPPORTED_REGIONS
TYPES = [PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE, PhoneNumberType.PREMIUM_RATE,
         PhoneNumberType.SHARED_COST, PhoneNumberType.VOIP, PhoneNumberType.PERSONAL_NUMBER, PhoneNumberType.PAGER,
         PhoneNumberType.UAN, PhoneNumberType.VOICEMAIL]


def _examples(regions):
    for region in regions:
        for kind in TYPES:
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                yield region, number


def test_digit_floors_hold_for_every_example_number():
    # phonenumbers ships a valid example number per region and type: none may have fewer digits than the floors.
    for _, number in _examples(SUPPORTED_REGIONS):
        assert nsn_digits(phonenumbers.format_number(number, PhoneNumberFormat.E164)) >= plus_floor()
    for region, number in _examples(DEFAULT_REGIONS):
        national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
        assert nsn_digits(national) >= digit_floor(region, False), (region, national)
    assert digit_floor("DE", False) == 4  # Germany has four-digit numbers: four-digit groups are still parsed there
    assert min(digit_floor(r, False) for r in DEFAULT_REGIONS if r != "DE") > 4


def test_nsn_digits_counts_digits_and_the_letter_x():
    assert nsn_digits("(212) 555-0147") == 10
    assert nsn_digits("１２３") == 3  # full-width digits are digits to phonenumbers too
    assert nsn_digits("1x2X3") == 5


TEXTS = [
    "Call (212) 555-0147 or +1 415 555 2671 today.",
    "Our London office: +44 20 7946 0958 ext. 123, fax 020 7946 0959.",
    "Dial 00 44 20 7946 0958 from Germany or 011 44 20 7946 0958 from the US.",
    "Berlin 030 1234567, Munich 089 12345, short 1234 and 12345.",
    "In 2019 we had 45 staff and 3 offices; invoice 2019-0045 is due.",
    "Card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32, SSN 536-22-8790, IP 192.168.10.25.",
    "abc8005551234 and 8005551234def are not numbers, but (800) 555-1234 is.",
    "Times 10:30 and 12:45:00, dates 12/05/2019 and 2019/12/05.",
    "tel 1x2x3x4x5x6x7x8 and 555x0147",
    "Tokyo ０３−１２３４−５６７８ and Cairo +٢٠ ٢ ٢٥٧٥ ٦٦٢٤.",
    "+33 1 42 68 53 00, +49 30 901820, +972 3 555 1234, +91 98765 43210, +55 11 91234 5678, +1 604 555 1234.",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_matches_presidio_on_the_whole_text(text):
    key = lambda rs: sorted((r.start, r.end, r.score) for r in rs)  # noqa: E731
    ours = DigitWindowPhoneRecognizer().analyze(text, ["PHONE_NUMBER"])
    assert key(ours) == key(PhoneRecognizer().analyze(text, ["PHONE_NUMBER"]))


def test_an_international_number_is_parsed_once_for_all_regions():
    rec = DigitWindowPhoneRecognizer()
    found = rec.analyze("Call +44 20 7946 0958 now.", ["PHONE_NUMBER"])
    assert [(r.start, r.end) for r in found] == [(5, 21)]
    assert [key for key in rec._memo if key[0] == "+44 20 7946 0958"] == [("+44 20 7946 0958", " ", " ", "+")]

"""Write the dates demo data: dates written many ways, in varied requests and distracting text -> `YYYY-MM-DD`.

Usage: python examples/dates/make_data.py [--out DIR] [--train 2000] [--test 200] [--seed 0]

Deterministic (one seeded `random.Random`, no set iteration order) and standard library only, so the committed
train.jsonl / test.jsonl can be rebuilt byte for byte. Every answer follows from its prompt alone:

- numeric dates with day and month both written as numbers (5/3/21, 05.03.2021) always say which comes first,
  in the date itself ("(day first)", "(MM/DD/YYYY)") or in the request ("dates here are written month first");
  year-first numbers (2021.03.05, 20210305) are always year, month, day;
- two-digit years follow the POSIX/Python `%y` rule (69-99 -> 19xx, 00-68 -> 20xx); they are only used for
  years 1970-2039, where nobody would read them otherwise;
- when a text holds two dates, the question says which one is wanted (the new or the original one).

No date that appears in a test prompt appears in any train prompt, so the test split measures the skill, not
memorised rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from collections.abc import Callable
from pathlib import Path

FIRST_DAY, LAST_DAY = dt.date(1950, 1, 1).toordinal(), dt.date(2049, 12, 31).toordinal()
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
UNITS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth"]
TEENS = [
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
]


def ordinal_suffix(n: int) -> str:
    """1st 2nd 3rd 4th ... 11th 12th 13th ... 21st 22nd 23rd ... 31st."""
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}" + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def ordinal_words(n: int) -> str:
    """first ... thirty-first."""
    if n < 10:
        return UNITS[n - 1]
    if n < 20:
        return TEENS[n - 10]
    tens = {2: "twent", 3: "thirt"}[n // 10]
    return f"{tens}ieth" if n % 10 == 0 else f"{tens}y-{UNITS[n % 10 - 1]}"


def month_name(d: dt.date, rng: random.Random) -> str:
    name = MONTHS[d.month - 1]
    style = rng.random()
    if style < 0.55:
        return name
    if style < 0.8:
        return name[:3]
    if style < 0.88:
        return name[:3] + "." if d.month != 5 else name
    return name.upper() if style < 0.95 else name.lower()


def day_number(d: dt.date, rng: random.Random) -> str:
    return rng.choice([str(d.day), str(d.day), f"{d.day:02d}", ordinal_suffix(d.day)])


def two_digit_year_ok(d: dt.date) -> bool:
    return 1970 <= d.year <= 2039


# Each writer turns a date into text. Numeric day/month writers also return the order they used, so the
# prompt can say it; the others return None.
Writer = Callable[[dt.date, random.Random], tuple[str, str | None]]


def w_month_day_year(d: dt.date, rng: random.Random) -> tuple[str, str | None]:
    sep = rng.choice([", ", ", ", " "])
    return f"{month_name(d, rng)} {day_number(d, rng)}{sep}{d.year}", None


def w_day_month_year(d: dt.date, rng: random.Random) -> tuple[str, str | None]:
    of = " of" if rng.random() < 0.15 else ""
    day = ordinal_suffix(d.day) if of else day_number(d, rng)
    return f"{day}{of} {month_name(d, rng)}{rng.choice([' ', ', '])}{d.year}", None


def w_words(d: dt.date, rng: random.Random) -> tuple[str, str | None]:
    day, month = ordinal_words(d.day), MONTHS[d.month - 1]
    if rng.random() < 0.6:
        return f"the {day} of {month}{rng.choice([' ', ', '])}{d.year}", None
    return f"{month} the {day}, {d.year}", None


def w_weekday(d: dt.date, rng: random.Random) -> tuple[str, str | None]:
    weekday = WEEKDAYS[d.weekday()]
    if rng.random() < 0.5:
        return f"{weekday}, {MONTHS[d.month - 1]} {d.day}, {d.year}", None
    return f"{weekday[:3]} {d.day} {MONTHS[d.month - 1][:3]} {d.year}", None


def w_abbrev_short_year(d: dt.date, rng: random.Random) -> tuple[str, str | None]:
    month = MONTHS[d.month - 1][:3]
    if rng.random() < 0.5:
        return f"{month} {d.day} '{d.year % 100:02d}", None
    return f"{d.day} {month} '{d.year % 100:02d}", None


def w_dashed_month(d: dt.date, rng: random.Random) -> tuple[str, str | None]:
    month = MONTHS[d.month - 1][:3]
    month = month.upper() if rng.random() < 0.4 else month
    forms = [f"{d.day:02d}-{month}-{d.year}", f"{d.day}-{month}-{d.year}", f"{d.day:02d} {month} {d.year}"]
    return rng.choice(forms), None


def w_year_first(d: dt.date, rng: random.Random) -> tuple[str, str | None]:
    sep = rng.choice([".", "/", "."])
    return rng.choice([f"{d.year}{sep}{d.month:02d}{sep}{d.day:02d}", f"{d.year}{d.month:02d}{d.day:02d}"]), None


def w_iso_with_time(d: dt.date, rng: random.Random) -> tuple[str, str | None]:
    hh, mm = rng.randrange(24), rng.randrange(0, 60, 5)
    return rng.choice([f"{d.isoformat()}T{hh:02d}:{mm:02d}:00Z", f"{d.isoformat()} {hh:02d}:{mm:02d}"]), None


def w_numeric(d: dt.date, rng: random.Random) -> tuple[str, str | None]:
    order = rng.choice(["day", "month"])
    sep = rng.choice(["/", "/", ".", "-"])
    pad = rng.random() < 0.5
    day, month = (f"{d.day:02d}", f"{d.month:02d}") if pad else (str(d.day), str(d.month))
    year = f"{d.year % 100:02d}" if two_digit_year_ok(d) and rng.random() < 0.4 else str(d.year)
    first, second = (day, month) if order == "day" else (month, day)
    return f"{first}{sep}{second}{sep}{year}", order


WRITERS: list[tuple[Writer, float]] = [
    (w_month_day_year, 0.14),
    (w_day_month_year, 0.12),
    (w_words, 0.1),
    (w_weekday, 0.07),
    (w_abbrev_short_year, 0.08),
    (w_dashed_month, 0.1),
    (w_year_first, 0.08),
    (w_iso_with_time, 0.05),
    (w_numeric, 0.26),
]

# How a date says its own order: (day-first text, month-first text).
INLINE_CUES = [
    (" (day first)", " (month first)"),
    (" (DD/MM/YYYY)", " (MM/DD/YYYY)"),
    (" (day/month/year)", " (month/day/year)"),
    (" [D-M-Y]", " [M-D-Y]"),
]
REQUEST_CUES = [
    ("Numeric dates here are written day first.", "Numeric dates here are written month first."),
    ("Note: the day comes before the month.", "Note: the month comes before the day."),
    ("The source uses UK-style day/month order.", "The source uses US-style month/day order."),
]


def write_date(d: dt.date, rng: random.Random, request_cue: bool = True) -> tuple[str, str]:
    """The date as text, and a sentence for the request that disambiguates it ('' when none is needed).

    Without `request_cue` the order is always said next to the date (a text with two dates may use both orders).
    """
    writers, weights = zip(*WRITERS, strict=True)
    while True:
        writer = rng.choices(writers, weights)[0]
        if writer is w_abbrev_short_year and not two_digit_year_ok(d):
            continue
        text, order = writer(d, rng)
        break
    if order is None:
        return text, ""
    side = 0 if order == "day" else 1
    # A day above 12 already says which number is the day, but the cue is given anyway: the rule stays simple.
    if not request_cue or rng.random() < 0.65:
        return text + rng.choice(INLINE_CUES)[side], ""
    return text, rng.choice(REQUEST_CUES)[side]


# Text around one date. {d} is the date.
ONE_DATE = [
    "{d}",
    "{d}",
    "{d}",
    "Invoice #{n4}, issued {d}, total ${n3}.{n2}.",
    "The package shipped on {d} and arrived {k} days later.",
    "Meeting notes - {d} - {k} attendees, room {n3}.",
    "Patient record {n4}: admitted {d}, ward {k}.",
    "Contract ref {n3}/{n2} was signed on {d} by both parties.",
    "Our records show the account was opened {d}.",
    "Deadline: {d}, 5 pm. Late submissions lose {k}0% of the grade.",
    "Posted {d} | {n3} views | {k} comments",
    "The firmware v{k}.{n2} was released {d}.",
    "Flight LH{n3} departs {d} at {hh}:{mm} from gate {k}.",
    "She was born {d} in a town of {n4} people.",
]
ONE_DATE_ASK = [
    "Convert the date to ISO 8601 (YYYY-MM-DD). Reply with the date only.\n\n{t}",
    "{t}\n\nWhat date is this, in YYYY-MM-DD format? Answer with just the date.",
    "Normalize the date to YYYY-MM-DD: {t}",
    "Rewrite as YYYY-MM-DD: {t}",
    "Extract the date from the text and give it as YYYY-MM-DD, nothing else.\nText: {t}",
    "Date: {t}\nISO format (YYYY-MM-DD):",
    "What is the date in this text? Reply in ISO format (YYYY-MM-DD) only.\n{t}",
    "Please turn this into an ISO date (YYYY-MM-DD): {t}",
    "Input: {t}\nOutput the date as YYYY-MM-DD.",
    "I need the date below in year-month-day form with dashes (YYYY-MM-DD), no other words.\n\n{t}",
]

# Text around two dates, with the question that picks one: (text, {question: which}).
TWO_DATES = [
    ("The appointment originally set for {a} was moved to {b}.", "appointment"),
    ("The launch, first planned for {a}, has been rescheduled to {b}.", "launch"),
    ("Delivery was promised for {a} but changed to {b}.", "delivery"),
]
TWO_DATES_ASK = {
    "new": [
        "{t}\n\nWhat is the new date of the {what}? Answer in YYYY-MM-DD format only.",
        "{t}\nGive the rescheduled date as YYYY-MM-DD.",
    ],
    "old": [
        "{t}\n\nWhat was the original date of the {what}? Answer in YYYY-MM-DD format only.",
        "{t}\nGive the date it was first planned for, as YYYY-MM-DD.",
    ],
}


def random_date(rng: random.Random) -> dt.date:
    return dt.date.fromordinal(rng.randint(FIRST_DAY, LAST_DAY))


def fill(template: str, rng: random.Random, **values: str) -> str:
    numbers = {
        "n2": f"{rng.randrange(100):02d}",
        "n3": str(rng.randrange(100, 1000)),
        "n4": str(rng.randrange(1000, 10000)),
        "k": str(rng.randint(2, 9)),
        "hh": f"{rng.randrange(6, 23):02d}",
        "mm": f"{rng.randrange(0, 60, 5):02d}",
    }
    return template.format(**numbers, **values)


def make_row(rng: random.Random) -> tuple[str, str, list[dt.date]]:
    """One prompt, its answer, and every date the prompt mentions."""
    if rng.random() < 0.15:
        # Rescheduled to a later day, within about a year: the two dates often share year and month.
        a = random_date(rng)
        b = dt.date.fromordinal(min(a.toordinal() + rng.randint(1, 400), LAST_DAY))
        if a == b:
            a = dt.date.fromordinal(a.toordinal() - 1)
        (text_a, _), (text_b, _) = write_date(a, rng, request_cue=False), write_date(b, rng, request_cue=False)
        template, what = rng.choice(TWO_DATES)
        which = rng.choice(["new", "old"])
        prompt = fill(rng.choice(TWO_DATES_ASK[which]), rng, t=template.format(a=text_a, b=text_b), what=what)
        return prompt, (b if which == "new" else a).isoformat(), [a, b]
    d = random_date(rng)
    text, cue = write_date(d, rng)
    prompt = fill(rng.choice(ONE_DATE_ASK), rng, t=fill(rng.choice(ONE_DATE), rng, d=text))
    return (f"{cue}\n{prompt}" if cue else prompt), d.isoformat(), [d]


def make_split(
    rng: random.Random, n: int, seen_prompts: set[str], banned_dates: set[dt.date]
) -> tuple[list[dict], set[dt.date]]:
    rows: list[dict] = []
    used: set[dt.date] = set()
    while len(rows) < n:
        prompt, answer, dates = make_row(rng)
        if prompt in seen_prompts or any(d in banned_dates for d in dates):
            continue
        seen_prompts.add(prompt)
        used.update(dates)
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    return rows, used


def write_jsonl(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    seen: set[str] = set()
    # The test split is drawn first; train rows may not mention any of its dates.
    test, test_dates = make_split(rng, args.test, seen, set())
    train, _ = make_split(rng, args.train, seen, test_dates)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, args.out / "train.jsonl")
    write_jsonl(test, args.out / "test.jsonl")
    print(f"wrote {len(train)} train and {len(test)} test rows to {args.out}")


if __name__ == "__main__":
    main()

"""Seeded task generators for the automatic-settings measurements (benchmarks/auto_settings.py,
benchmarks/tune_embedded.py): chat rows of several kinds and answer lengths, each answer following from its prompt.

Derivation tasks (the rules are fitted on them): `dates` (short answers, the committed demo data), `json`
(extracting three fields as a JSON object), `label` (a topic as a one-word answer), `notice` (a templated
paragraph of about 60 tokens). Held-out tasks (never used to fit): `digits` (a number in words to digits) and
`clock` (a spoken time to 24-hour HH:MM). Every generator is standard library only and deterministic by seed; test
rows use names, numbers and things the train rows never show.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
Row = dict[str, list[dict[str, str]]]

FIRST = ["Maria", "Jonas", "Aiko", "Pedro", "Lena", "Omar", "Sofia", "Tariq", "Ines", "Mateo", "Yuki", "Nora",
         "Felix", "Amara", "Lucas", "Hana", "Viktor", "Zara", "Emil", "Leila"]  # fmt: skip
CITIES = ["Lyon", "Porto", "Osaka", "Bergen", "Quito", "Tunis", "Graz", "Leeds", "Malmo", "Cork", "Turin", "Brno",
          "Kyoto", "Perth", "Lille", "Basel"]  # fmt: skip
TOPICS = {
    "sport": ["the football match", "tennis practice", "the marathon", "a swimming race", "the rugby final",
              "a golf tournament", "the basketball playoffs", "a ski jumping contest", "volleyball training"],
    "cooking": ["a lemon cake", "fresh pasta", "the roast chicken", "a spicy curry", "homemade bread",
                "a mushroom risotto", "the apple pie", "steamed dumplings", "a lentil stew"],
    "computers": ["the new laptop", "a mechanical keyboard", "the database migration", "a graphics card",
                  "the wifi router", "the web server", "a solid-state drive", "the operating system update",
                  "a python script"],
    "travel": ["the hotel booking", "a train to Vienna", "the flight delay", "a passport renewal",
               "the ferry crossing", "a hostel in Lisbon", "the airport lounge", "a night bus", "the visa office"],
}  # fmt: skip
SUBJECTS = ["The team", "Our neighbour", "My sister", "A colleague", "The teacher", "We", "Grandpa", "The intern"]
VERBS = ["talked about", "complained about", "wrote about", "asked about", "laughed about", "read about"]
TAILS = ["", " at lunch", " yesterday", " on the phone", " all evening", " in the meeting"]
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]  # fmt: skip
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def chat(prompt: str, answer: str) -> Row:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def _split_pick(items: list, test: bool) -> list:
    """Every third item is kept for test rows, the rest for train rows (no test name or thing seen in training)."""
    return [x for i, x in enumerate(items) if (i % 3 == 2) == test]


def json_row(rng: random.Random, test: bool) -> Row:
    name, city = rng.choice(_split_pick(FIRST, test)), rng.choice(_split_pick(CITIES, test))
    age = rng.randrange(20, 80) if not test else rng.randrange(18, 90)
    said = number_words(age) if rng.random() < 0.5 else str(age)  # half the ages are written out in words
    text = rng.choice([
        f"{name} ({said}) moved to {city} last spring.",
        f"Meet {name}: {said} years old, based in {city}.",
        f"From {city}, {name} turned {said} this week.",
        f"Customer {name}, age {said}, city of residence {city}.",
        f"{city} is home to {name}, who is {said}.",
    ])  # fmt: skip
    ask = rng.choice(["Extract name, age and city as JSON.", "Return a JSON object with keys name, age, city."])
    return chat(f"{ask}\n\n{text}", json.dumps({"name": name, "age": age, "city": city}))


def label_row(rng: random.Random, test: bool) -> Row:
    topic = rng.choice(sorted(TOPICS))
    thing = rng.choice(_split_pick(TOPICS[topic], test))
    sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {thing}{rng.choice(TAILS)}."
    return chat(f"Topic of this sentence (sport, cooking, computers or travel)? One word.\n\n{sentence}", topic)


def notice_row(rng: random.Random, test: bool) -> Row:
    name, city = rng.choice(_split_pick(FIRST, test)), rng.choice(_split_pick(CITIES, test))
    order, days = rng.randrange(1000, 9999), rng.randrange(2, 9)
    item = rng.choice(["lamp", "kettle", "backpack", "chair", "blender", "monitor", "tent", "drill"])
    prompt = f"Write the shipping notice. Customer: {name}. City: {city}. Order: {order}. Item: {item}. Days: {days}."
    answer = (
        f"Dear {name}, your order #{order} ({item}) has left our warehouse and is on its way to {city}. "
        f"It should arrive within {days} days. Thank you for shopping with us."
    )
    return chat(prompt, answer)


def number_words(n: int) -> str:
    """English words for 0 <= n < 10000 ("three thousand four hundred and five")."""
    parts = []
    if n >= 1000:
        parts.append(f"{ONES[n // 1000]} thousand")
        n %= 1000
    if n >= 100:
        parts.append(f"{ONES[n // 100]} hundred")
        n %= 100
    if n:
        below = ONES[n] if n < 20 else TENS[n // 10] + (f"-{ONES[n % 10]}" if n % 10 else "")
        parts.append(("and " if parts else "") + below)
    return " ".join(parts) or "zero"


def digits_row(rng: random.Random, test: bool) -> Row:
    n = rng.randrange(0, 10000)
    while (n % 7 == 3) != test:  # test numbers are never train numbers
        n = rng.randrange(0, 10000)
    ask = rng.choice(["Write this number in digits only:", "Digits please, nothing else:", "As a numeral:"])
    return chat(f"{ask} {number_words(n)}", str(n))


def clock_row(rng: random.Random, test: bool) -> Row:
    hour, minute = rng.randrange(0, 24), rng.choice([0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55])
    while ((hour * 60 + minute) % 5 == 0 and (hour + minute // 5) % 4 == 1) != test:
        hour, minute = rng.randrange(0, 24), rng.choice([0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55])
    h12 = hour % 12 or 12
    part = "in the morning" if hour < 12 else "in the afternoon" if hour < 18 else "in the evening"
    words = {0: f"{number_words(h12)} o'clock", 15: f"quarter past {number_words(h12)}",
             30: f"half past {number_words(h12)}", 45: f"quarter to {number_words(hour % 12 + 1)}"}  # fmt: skip
    spoken = words.get(minute, f"{number_words(minute)} minutes past {number_words(h12)}")
    return chat(f"Give the time in 24-hour HH:MM form, nothing else: {spoken} {part}", f"{hour:02d}:{minute:02d}")


def dates_rows(split: str, n: int, seed: int) -> list[Row]:
    """`n` rows of the committed dates demo (examples/dates), drawn by seed."""
    lines = (ROOT / "examples" / "dates" / f"{split}.jsonl").read_text().splitlines()
    return [json.loads(x) for x in random.Random(seed).sample(lines, n)]


GENERATORS: dict[str, Callable[[random.Random, bool], Row]] = {
    "json": json_row,
    "label": label_row,
    "notice": notice_row,
    "digits": digits_row,
    "clock": clock_row,
}


def task_rows(task: str, split: str, n: int, seed: int = 0) -> list[Row]:
    """`n` rows of `task` (`train` or `test` split), the same for the same seed."""
    if task == "dates":
        return dates_rows(split, n, seed)
    rng = random.Random(f"{task}-{split}-{seed}")
    return [GENERATORS[task](rng, split == "test") for _ in range(n)]


def write_task(folder: Path, task: str, train_rows: int, test_rows: int, seed: int = 0) -> tuple[Path, Path]:
    """train.jsonl and test.jsonl of `task` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n in (("train", train_rows), ("test", test_rows)):
        path = folder / f"{task}-{split}-{n}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in task_rows(task, split, n, seed)))
        paths.append(path)
    return paths[0], paths[1]

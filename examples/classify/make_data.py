"""Write the topic-classification demo data: short sentences about sport, cooking, computers or travel.

Usage: python examples/classify/make_data.py [--out DIR] [--train 200] [--test 80] [--seed 0]

Deterministic (one seeded `random.Random`) and standard library only, so the committed train.jsonl / test.jsonl
can be rebuilt byte for byte. A sentence is someone talking about one thing ("My sister complained about the
rugby final yesterday."); only that thing says the topic. The test split's things never appear in training
(basketball playoffs, not the football match), so it measures whether the encoder's sense of meaning carries the
topic over, not whether it memorised words.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TOPICS = {
    "sport": {
        "train": [
            "the football match",
            "tennis practice",
            "the marathon",
            "a swimming race",
            "the cycling tour",
            "the rugby final",
            "a golf tournament",
            "the boxing title fight",
        ],
        "test": ["the basketball playoffs", "a ski jumping contest", "volleyball training", "the hockey season"],
    },
    "cooking": {
        "train": [
            "a lemon cake",
            "fresh pasta",
            "the roast chicken",
            "pancakes for breakfast",
            "a spicy curry",
            "the vegetable soup",
            "homemade bread",
            "a chocolate mousse",
        ],
        "test": ["a mushroom risotto", "the apple pie", "steamed dumplings", "a lentil stew"],
    },
    "computers": {
        "train": [
            "the new laptop",
            "a mechanical keyboard",
            "the database migration",
            "the compiler warnings",
            "a graphics card",
            "the wifi router",
            "the spreadsheet macros",
            "a printer driver",
        ],
        "test": ["the web server", "a solid-state drive", "the operating system update", "a python script"],
    },
    "travel": {
        "train": [
            "the flight to Lisbon",
            "a train ticket",
            "the hotel booking",
            "a passport renewal",
            "the ferry",
            "a road trip",
            "the airport lounge",
            "a visa application",
        ],
        "test": ["a cruise to Norway", "a hostel in Berlin", "the overnight bus", "a camping holiday"],
    },
}
# Shared by every topic, so the topic is in the subject alone.
PEOPLE = ["I", "We", "My sister", "The team", "Our neighbour", "Everyone"]
VERBS = [
    "talked about",
    "read about",
    "asked about",
    "wrote about",
    "complained about",
    "could not stop thinking about",
]
ENDINGS = ["", " yesterday", " at lunch", " in a long email", " on the phone", " all evening"]


def sentence(rng: random.Random, topic: str, split: str) -> str:
    return f"{rng.choice(PEOPLE)} {rng.choice(VERBS)} {rng.choice(TOPICS[topic][split])}{rng.choice(ENDINGS)}."


def rows(rng: random.Random, n: int, split: str) -> list[dict[str, str]]:
    topics = sorted(TOPICS)
    return [{"text": sentence(rng, topics[i % len(topics)], split), "label": topics[i % len(topics)]} for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--test", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for name, n, split in (("train.jsonl", args.train, "train"), ("test.jsonl", args.test, "test")):
        lines = [json.dumps(row) for row in rows(rng, n, split)]
        (args.out / name).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

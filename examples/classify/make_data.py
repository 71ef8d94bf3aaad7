"""Write the topic-classification demo data: short sentences about sport, cooking, computers or travel.

Usage: python examples/classify/make_data.py [--out DIR] [--train 200] [--test 80] [--seed 0]

Deterministic (one seeded `random.Random`) and standard library only, so the committed train.jsonl / test.jsonl
can be rebuilt byte for byte. Each topic has its own subjects, actions and places; the test split uses subjects
that never appear in training (basketball, not football), so it measures whether the encoder's sense of meaning
carries the topic over, not whether it memorised words.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TOPICS = {
    "sport": {
        "train": ["football", "tennis", "the marathon", "swimming", "cycling", "the rugby final"],
        "test": ["basketball", "the ski race", "volleyball"],
        "verbs": ["won", "lost", "trained for", "watched", "scored in", "coached"],
        "places": ["at the stadium", "on the court", "in the league", "after the match"],
    },
    "cooking": {
        "train": ["the soup", "a lemon cake", "fresh pasta", "the roast chicken", "pancakes", "the curry"],
        "test": ["a mushroom risotto", "the apple pie", "dumplings"],
        "verbs": ["baked", "stirred", "tasted", "seasoned", "served", "burnt"],
        "places": ["in the kitchen", "for dinner", "in the oven", "at the bakery"],
    },
    "computers": {
        "train": ["the laptop", "a new keyboard", "the database", "the compiler", "my graphics card", "the router"],
        "test": ["the web server", "a solid-state drive", "the operating system"],
        "verbs": ["installed", "rebooted", "upgraded", "debugged", "configured", "crashed"],
        "places": ["at the office", "over the network", "in the data centre", "after the update"],
    },
    "travel": {
        "train": ["the flight", "a train ticket", "the hotel room", "my passport", "the ferry", "a road trip"],
        "test": ["the cruise", "a hostel bed", "the overnight bus"],
        "verbs": ["booked", "missed", "cancelled", "planned", "enjoyed", "delayed"],
        "places": ["at the airport", "abroad", "for the holiday", "at the border"],
    },
}
SUBJECTS = ["I", "We", "My sister", "The team", "Our neighbour", "Everyone"]
ENDINGS = ["", " yesterday", " last week", " again", " this morning"]


def sentence(rng: random.Random, topic: str, split: str) -> str:
    t = TOPICS[topic]
    return (
        f"{rng.choice(SUBJECTS)} {rng.choice(t['verbs'])} {rng.choice(t[split])} "
        f"{rng.choice(t['places'])}{rng.choice(ENDINGS)}."
    )


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

"""Write the RAG demo data: fact cards about fictional buildings, and questions whose answers only the cards hold.

Usage: python examples/rag/make_data.py [--out DIR] [--stems 64] [--test-cards 60] [--seed 0]

Deterministic (one seeded `random.Random`, standard library only), so the committed corpus.jsonl, train.jsonl and
test.jsonl can be rebuilt byte for byte. Every name is invented, so a model cannot know the answers beforehand.

- Each invented name ("Veltrin") is given to three buildings of different kinds (a bridge, a tower, a mill...),
  so the cards that share a name are hard negatives for retrieval.
- Questions name the kind by a synonym ("the Veltrin crossing" for the bridge) and ask for the year, the builder
  or the town: the retriever must match the kind by meaning, not by the word.
- Test questions are about cards no training question is about; the corpus holds every card.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

KINDS = {  # kind on the card -> words a question uses for it
    "bridge": ["crossing", "span"],
    "tower": ["spire", "watchtower"],
    "mill": ["grinding works", "millhouse"],
    "library": ["book hall", "reading house"],
    "canal": ["waterway", "cut"],
    "lighthouse": ["beacon", "light station"],
    "theatre": ["playhouse", "stage house"],
    "observatory": ["star house", "telescope dome"],
}
ONSETS = ["v", "k", "m", "t", "br", "s", "d", "gr", "l", "p", "h", "z", "f", "n", "r", "j"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "y"]
CODAS = ["lt", "rn", "ss", "x", "nd", "rk", "m", "sh", "l", "th"]
ENDINGS = ["in", "a", "ek", "or", "ith", "um", "ane", "is"]
FIRST = ["Ada", "Borin", "Celia", "Doran", "Elsa", "Fenno", "Greta", "Halvar", "Ines", "Jorun", "Kaia", "Lenz"]
LAST = ["Marn", "Oskel", "Pirrow", "Quill", "Rask", "Sorvin", "Tamm", "Ulvar", "Vesk", "Wendt", "Yorra", "Zell"]
CARD = [
    "The {name} {kind} in {town} was built in {year} by {builder}.",
    "{builder} built the {name} {kind} in {town}; it was finished in {year}.",
    "In {year}, {builder} completed the {name} {kind}, which stands in {town}.",
]
QUESTIONS = {
    "year": ["In which year was the {name} {syn} completed?", "When was the {name} {syn} finished?"],
    "builder": ["Who built the {name} {syn}?", "Which builder made the {name} {syn}?"],
    "town": ["In which town is the {name} {syn}?", "Where does the {name} {syn} stand?"],
}


def invented(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = (rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) + rng.choice(ENDINGS)).capitalize()
        if name not in names:
            names.append(name)
    return names


def make(stems: int, test_cards: int, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    rng = random.Random(seed)
    names = invented(rng, stems + 40)
    towns, names = names[stems:], names[:stems]
    cards: list[dict] = []
    for name in names:
        for kind in rng.sample(sorted(KINDS), 3):
            facts = {"year": str(rng.randint(1620, 1930)), "town": rng.choice(towns)}
            facts["builder"] = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            text = rng.choice(CARD).format(name=name, kind=kind, **facts)
            cards.append({"id": f"card-{len(cards):03d}", "text": text, "name": name, "kind": kind, **facts})
    order = list(range(len(cards)))
    rng.shuffle(order)
    test_ids = set(order[:test_cards])

    def question(card: dict, attribute: str) -> dict:
        syn = rng.choice(KINDS[card["kind"]])
        text = rng.choice(QUESTIONS[attribute]).format(name=card["name"], syn=syn)
        return {"question": text, "answer": card[attribute], "passage": card["id"]}

    train, test = [], []
    for i, card in enumerate(cards):
        attributes = sorted(QUESTIONS)
        if i in test_ids:
            test.append(question(card, rng.choice(attributes)))
        else:
            train.extend(question(card, a) for a in rng.sample(attributes, 2))
    corpus = [{"id": c["id"], "text": c["text"]} for c in cards]
    return corpus, train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--stems", type=int, default=64)
    parser.add_argument("--test-cards", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    corpus, train, test = make(args.stems, args.test_cards, args.seed)
    for name, rows in (("corpus", corpus), ("train", train), ("test", test)):
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{name}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    main()

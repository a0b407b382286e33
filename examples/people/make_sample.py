"""Writes ``users.csv``: 1,200 deterministic sample users with ids 1001 upward.

Run ``python -m examples.people.make_sample`` to regenerate; the output is the
same on every machine (a seeded generator, no clock).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

FIRST = ["Mary", "John", "Ava", "Liam", "Noah", "Emma", "Olivia", "Lucas", "Mia", "Ethan", "Zoe", "Hugo"]
LAST = ["Smith", "Jones", "Brown", "Garcia", "Miller", "Davis", "Lopez", "Wilson", "Martin", "Lee"]
PLACES = {
    "United States": ["New York", "Chicago", "Austin", "Seattle", "Boston"],
    "Australia": ["Sydney", "Melbourne", "Perth"],
    "Canada": ["Toronto", "Montreal", "Vancouver"],
    "France": ["Paris", "Lyon", "Nantes"],
    "Japan": ["Tokyo", "Osaka"],
    "Brazil": ["São Paulo", "Recife"],
}
STREETS = ["Leaf St.", "Oak Ave.", "Main St.", "River Rd.", "Hill Ln."]
COUNT = 1200
FIRST_ID = 1001


def main() -> None:
    rng = random.Random(20261126)
    countries = sorted(PLACES)
    out = Path(__file__).with_name("users.csv")
    with open(out, "w", newline="", encoding="utf-8") as target:
        writer = csv.writer(target)
        writer.writerow(["id", "first_name", "last_name", "country", "address", "city"])
        for offset in range(COUNT):
            country = countries[rng.randrange(len(countries))]
            writer.writerow(
                [
                    FIRST_ID + offset,
                    rng.choice(FIRST),
                    rng.choice(LAST),
                    country,
                    f"{rng.randint(1, 999)} {rng.choice(STREETS)}",
                    rng.choice(PLACES[country]),
                ]
            )


if __name__ == "__main__":
    main()

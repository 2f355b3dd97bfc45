"""The rewriting of ``--pseudonymize`` against its independent check, on random names built from identity.

The two share no matching (README, "Pseudonymization"): where the rewriting keeps what the check reads as identity,
a case fails "please report it" (a false refusal); where both miss it, it leaks. Hostile trials found such pairs by
fuzzing (``Lung2024001``, ``006.06.2024``, a dotted ID after another number). This test builds, from a fixed seed,
ROI-like names out of an identity's pieces (names, IDs split at random with separators, dates in several spellings)
and innocent pieces, and asserts that what the rewriting writes, the check passes.
"""

from __future__ import annotations

import random
import re

import pytest
from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

#: (PatientName, PatientIDs, dates YYYYMMDD) of the inputs the names are made from.
IDENTITIES = [
    ("Doe^John", ("QX-12345",), ("19580914", "20240102")),
    ("O'Neil-Smith^Mary Ann", ("0072315",), ("19700315", "20231130")),
    ("Li^Na", ("MRN1072315",), ("19851201", "20240229")),
    ("van der Berg^Pieter", ("12-345-678",), ("19491001", "20221010")),
    ("Müller^Jürgen", ("A00123",), ("19660606", "20240606")),
    ("Ring^Anna", ("PT0001",), ("19510101", "20240101")),
    ("Lung^Wai Man", ("LW-2024-001",), ("19621212", "20240115")),
    ("Silva^Ana", ("12345678909",), ("19800229", "20240301")),
]
#: Pieces that are nobody's identity.
INNOCENT = ["PTV", "CTV", "GTV", "Boost", "L", "R", "70", "60Gy", "5mm", "v2", "Rx", "Eval", "ring", "cord", "1.5",
            "63.0584", "3.10.1", "D95", "x", "2", "0", "High", "opt"]  # fmt: skip
SEPARATORS = ["", "_", "-", " ", ".", "/", " - ", "^"]


def _spelled_id(rng: random.Random, identifier: str) -> str:
    """``identifier``'s letters and digits, split at random places with random separators."""
    plain = re.sub(r"[^0-9A-Za-z]", "", identifier)
    out, rest = "", plain
    while rest:
        cut = rng.randint(1, 4)
        out += rest[:cut]
        rest = rest[cut:]
        if rest:
            out += rng.choice(SEPARATORS)
    return out


def _spelled_date(rng: random.Random, date: str) -> str:
    year, month, day = date[:4], date[4:6], date[6:]
    return rng.choice(
        [
            f"{day}.{month}.{year}",
            f"{year}-{month}-{day}",
            f"{month}/{day}/{year[2:]}",
            f"{year}{month}{day}",
            f"{day}{month}{year[2:]}",
            f"{int(day)}.{int(month)}.{year}",
        ]
    )


def _piece(rng: random.Random, name: str, ids: tuple, dates: tuple) -> str:
    kind = rng.random()
    if kind < 0.3:
        return rng.choice([c for c in re.split(r"[\^ ]", name) if c])
    if kind < 0.5:
        return _spelled_id(rng, rng.choice(ids))
    if kind < 0.65:
        return _spelled_date(rng, rng.choice(dates))
    return rng.choice(INNOCENT)


@pytest.mark.parametrize("seed", range(4))
def test_what_the_rewriting_writes_the_check_passes(seed):
    rng = random.Random(seed)
    failures = []
    for _ in range(300):
        name, ids, dates = rng.choice(IDENTITIES)
        identity = Identity(patient_ids=set(ids), dates=set(dates))
        identity.add_name(name)
        pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=identity)
        text = rng.choice(["", "PTV_", "CTV ", "Ring_"]) + rng.choice(["", "_", " "]).join(
            _piece(rng, name, ids, dates) for _ in range(rng.randint(1, 3))
        )
        for rewritten, own in ((pseudonymizer.name(text), False), (pseudonymizer.text(text), True)):
            found = pseudonymizer.guard.find(rewritten, own=own)
            if found:
                failures.append((name, text, rewritten, found))
    assert not failures, failures[:5]

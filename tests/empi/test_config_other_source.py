"""A source with different columns links correctly with only a new YAML config.

The Chinese visit-card config leans on ID numbers and pinyin; this source has neither: English
names, an ISO birth date, a ZIP code and an e-mail address. The test writes a config for it (no
normaliser, features from steps) and runs the bulk pipeline (frame → train → predict → cluster) on
generated records with realistic errors, checking the clusters against the known people.
"""

from __future__ import annotations

import itertools
import random
import string
from collections import defaultdict
from datetime import date, timedelta

import pytest
import yaml

from smartcare.empi import linkage
from smartcare.empi.fields import parse_config

CONFIG = """
name: english-clinic-export
features:
  first_name: {from: first_name, steps: [ascii, letters]}
  last_name: {from: last_name, steps: [ascii, letters]}
  dob: {from: dob, steps: [strip, date]}
  dob_year: {from: dob, steps: [year]}
  dob_day: {from: dob, steps: [ordinal]}
  dob_swapped: {from: dob, steps: [swap_month_day]}
  zip: {from: zip, steps: [digits]}
  email: {from: email, steps: [strip, lower]}

comparisons:
  - name: first_name
    levels:
      - {label: missing, missing: first_name}
      - {label: exact, exact: first_name, tf: first_name}
      - {label: one typo or transposition, edit: {col: first_name, max: 1}}
      - {label: similar, jaro_winkler: {col: first_name, min: 0.88}}
      - {label: first and last name swapped, cross: [first_name, last_name]}
      - {label: different, else: true}
  - name: last_name
    levels:
      - {label: missing, missing: last_name}
      - {label: exact, exact: last_name, tf: last_name}
      - {label: one typo or transposition, edit: {col: last_name, max: 1}}
      - {label: similar, jaro_winkler: {col: last_name, min: 0.88}}
      - {label: first and last name swapped, cross: [first_name, last_name]}
      - {label: different, else: true}
  - name: dob
    levels:
      - {label: missing, missing: dob}
      - {label: exact, exact: dob}
      - {label: one day off, within: {col: dob_day, max: 1}}
      - {label: month and day swapped, cross: [dob, dob_swapped]}
      - {label: same year, exact: dob_year}
      - {label: different, else: true}
  - name: zip
    levels:
      - {label: missing, missing: zip}
      - {label: exact, exact: zip}
      - {label: different, else: true}
  - name: email
    levels:
      - {label: missing, missing: email}
      - {label: exact, exact: email}
      - {label: different, else: true}

blocking:
  - [last_name, dob]
  - [email]
  - [first_name, zip]
  - [dob, zip]
  - [first_name, last_name]
  - [first_name, dob]
  - [last_name, zip]

training:
  deterministic: [[first_name, last_name, dob], [email]]
  recall: 0.8
  em_blocking: [[dob], [first_name, last_name]]

thresholds:
  link: 6.0
  review: 0.0
"""

FIRST = ("James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara Richard "
         "Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Nancy Daniel Lisa Matthew Betty "
         "Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua "
         "Michelle Kenneth Dorothy Kevin Carol Brian Amanda George Melissa Edward Deborah Ronald "
         "Stephanie Timothy Rebecca Jason Sharon Jeffrey Laura Ryan Cynthia Jacob Kathleen Gary Amy "
         "Nicholas Shirley Eric Angela Jonathan Helen Stephen Anna Larry Brenda Justin Pamela Scott "
         "Nicole Brandon Emma Benjamin Samantha Samuel Katherine Frank Christine Gregory Debra Raymond "
         "Rachel Alexander Catherine Patrick Carolyn Jack Janet Dennis Ruth Jerry Maria").split()
LAST = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
        "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
        "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
        "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips "
        "Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers "
        "Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson "
        "Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo "
        "Sanders Patel Myers Long Ross Foster").split()
DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "aol.com", "icloud.com")


def _typo(rng: random.Random, name: str) -> str:
    """One substitution or one transposition of adjacent letters, past the first letter."""
    i = rng.randrange(1, len(name) - 1)
    if rng.random() < 0.5:
        return name[:i] + name[i + 1] + name[i] + name[i + 2:]
    return name[:i] + rng.choice([c for c in string.ascii_lowercase if c != name[i].lower()]) + name[i + 1:]


def _styled(rng: random.Random, text: str) -> str:
    """How another clerk typed it: upper or lower case, stray spaces."""
    r = rng.random()
    text = text.upper() if r < 0.15 else text.lower() if r < 0.3 else text
    return f"  {text} " if rng.random() < 0.15 else text


def generate(seed: int = 7, people: int = 1500):
    """Records (uid, columns) and the person of each uid. Common last names repeat (a Zipf-like
    draw), and 30 people are given the full name of an earlier person, with another birth date and
    e-mail but often the same ZIP (a father and son): the pairs that must not be linked."""
    rng = random.Random(seed)
    zips = [f"{rng.randrange(10000, 99999)}" for _ in range(300)]
    last_weights = [1 / (k + 1) ** 0.9 for k in range(len(LAST))]
    persons, namesakes = [], []
    for pid in range(people):
        first, last = rng.choice(FIRST), rng.choices(LAST, last_weights)[0]
        zip_code = rng.choice(zips)
        if pid >= people - 30:
            other = persons[rng.randrange(people - 30)]
            first, last = other["first_name"], other["last_name"]
            zip_code = other["zip"] if rng.random() < 0.5 else zip_code
            namesakes.append((other["pid"], pid))
        dob = date(1935, 1, 1) + timedelta(days=rng.randrange(70 * 365))
        email = f"{first}.{last}{pid}@{rng.choice(DOMAINS)}".lower()
        persons.append({"pid": pid, "first_name": first, "last_name": last, "dob": dob, "zip": zip_code,
                        "email": email})

    records, person_of = [], {}
    for p in persons:
        for k in range(rng.choices((1, 2, 3), (0.35, 0.4, 0.25))[0]):
            first, last, dob, zip_code, email = p["first_name"], p["last_name"], p["dob"], p["zip"], p["email"]
            if k:  # the first record is as the person gave it, the others have errors
                if rng.random() < 0.15:
                    first = _typo(rng, first)
                if rng.random() < 0.15:
                    last = _typo(rng, last)
                if rng.random() < 0.02:
                    first, last = last, first
                r = rng.random()
                if r < 0.08:
                    dob += timedelta(days=rng.choice((-1, 1)))
                elif r < 0.13 and dob.day <= 12 and dob.day != dob.month:
                    dob = dob.replace(month=dob.day, day=dob.month)
                if rng.random() < 0.12:
                    zip_code = rng.choice(zips)
            if rng.random() < 0.25:
                email = None
            uid = len(records) + 1
            person_of[uid] = p["pid"]
            records.append((uid, {"first_name": _styled(rng, first), "last_name": _styled(rng, last),
                                  "dob": dob.isoformat(), "zip": zip_code,
                                  "email": _styled(rng, email) if email else None}))
    return records, person_of, namesakes


def _pairs(groups) -> set[tuple[int, int]]:
    return {pair for members in groups for pair in itertools.combinations(sorted(members), 2)}


@pytest.fixture(scope="module")
def linked():
    config = parse_config(yaml.safe_load(CONFIG), origin="english test config")
    records, person_of, namesakes = generate()
    table = linkage.frame(config, [(uid, config.features(columns)) for uid, columns in records])
    model = linkage.train(config, table, max_pairs=1e6)
    pairs = linkage.predict(config, model, table)
    clusters = linkage.cluster(pairs.rows(), link_weight=config.link_weight)
    return clusters, person_of, namesakes


def test_english_source_links_with_only_a_config(linked) -> None:
    clusters, person_of, _ = linked
    found, true = defaultdict(set), defaultdict(set)
    for uid, root in clusters.items():
        found[root].add(uid)
    for uid, pid in person_of.items():
        true[pid].add(uid)
    predicted, actual = _pairs(found.values()), _pairs(true.values())
    precision = len(predicted & actual) / len(predicted)
    recall = len(predicted & actual) / len(actual)
    print(f"pairs: {len(actual)} true, {len(predicted)} linked; precision {precision:.4f}, recall {recall:.4f}")
    assert precision >= 0.97 and recall >= 0.95, (precision, recall)


def test_namesakes_born_on_other_days_are_not_linked(linked) -> None:
    clusters, person_of, namesakes = linked
    people_in = defaultdict(set)
    for uid, root in clusters.items():
        people_in[root].add(person_of[uid])
    merged = [(a, b) for a, b in namesakes if any({a, b} <= found for found in people_in.values())]
    assert len(namesakes) == 30
    assert not merged, f"people with one name but different birth dates linked: {merged}"

"""Synthetic hospitals and people for quality tests that need no database."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import date
from importlib import resources

from smartcare.platform.idcard import make
from smartcare.registry.service import credit_code
from smartcare.synth.documents import Hospital, Person


def value_sets() -> dict[str, dict[str, str]]:
    """The registry's built-in value sets, as the database would serve them."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    with resources.files("smartcare.registry.data").joinpath("concepts.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[row["value_set"]][row["code"]] = row["display"]
    return dict(out)


HOSPITALS = [
    Hospital(code, credit_code(code), name, (("03", "内科"), ("04", "外科"), ("07", "儿科")),
             (("D0001", "李建国", "主治医师"), ("D0002", "陈志强", "主任医师"), ("D0003", "王芳", "住院医师")))
    for code, name in (("500103C001", "重庆市第一人民医院"), ("500106C002", "重庆市沙坪坝区人民医院"))
]

PEOPLE = [Person(make("500103", date(1940 + i, 1 + i % 12, 1 + i % 28), 10 + i, "1" if i % 2 else "2"),
                 f"测试{i}", "1" if i % 2 else "2", date(1940 + i, 1 + i % 12, 1 + i % 28), "13800000000", "渝中区",
                 f"HC{i:06d}") for i in range(60)]

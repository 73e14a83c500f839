"""Benchmark: HL7 v2 parsing, the platform's parser against python-hl7 and hl7apy.

The messages are the 32 good samples of shared/hl7v2-samples (real messages from six open-source
projects, 2.2 to 2.7), repeated. Per message each parser parses, then reads the control id, the
message type, PID-3.1 and PID-5.1 (what the hub needs to route, dedupe and acknowledge). Each
parser runs in a child process of its own, so each peak RSS is its own; the baseline child only
loads the samples. Also printed: how many of the 32 samples each parser takes, and for how many
it reads the control id and message type the manifest says. The timed loop repeats only the
samples a parser takes.

    python bench/hl7parse.py            # 20,000 messages per parser (hl7apy: 3,200, about a minute and a half)
    python bench/hl7parse.py --quick    # 3,200 for python-hl7 and 320 for hl7apy, well under a minute
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "hl7v2-samples"
PARSERS = ("baseline", "smartcare", "smartcare+check", "python-hl7", "hl7apy")
FULL = {"baseline": 0, "smartcare": 20_000, "smartcare+check": 20_000, "python-hl7": 20_000, "hl7apy": 3_200}
QUICK = {"baseline": 0, "smartcare": 20_000, "smartcare+check": 20_000, "python-hl7": 3_200, "hl7apy": 320}

Fields = tuple[str, str, str, str]  # control id, message type, PID-3.1, PID-5.1


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_samples() -> list[tuple[str, dict[str, str]]]:
    """The good samples as text (CR-separated, as on the wire), with their manifest rows."""
    from smartcare.standards.mllp import decode_text

    if not (SAMPLES / "MANIFEST.tsv").is_file():
        sys.exit(f"HL7 v2 samples not found at {SAMPLES}")
    with (SAMPLES / "MANIFEST.tsv").open(encoding="utf-8", newline="") as fh:
        rows = [row for row in csv.DictReader(fh, delimiter="\t") if row["expect"] == "AA"]
    return [(decode_text((SAMPLES / row["file"]).read_bytes()), row) for row in rows]


# --- one function per parser: text -> the four values ---------------------------------------------


def smartcare_reader(check: bool) -> Callable[[str], Fields]:
    from smartcare.standards import hl7v2

    parse = hl7v2.parse_and_check if check else hl7v2.parse

    def read(text: str) -> Fields:
        msg = parse(text)
        return msg.control_id, msg.message_type, msg.value("PID-3.1"), msg.value("PID-5.1")

    return read


def python_hl7_reader() -> Callable[[str], Fields]:
    import hl7

    def read(text: str) -> Fields:
        msg = hl7.parse(text)
        try:
            pid3, pid5 = str(msg["PID.F3.R1.C1"]), str(msg["PID.F5.R1.C1"])
        except (KeyError, IndexError):  # no PID segment (ORU without patient group, OML)
            pid3 = pid5 = ""
        return str(msg["MSH.F10"]), str(msg["MSH.F9.R1.C1"]), pid3, pid5

    return read


def hl7apy_reader() -> Callable[[str], Fields]:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    def read(text: str) -> Fields:
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
        msh = msg.msh
        pids = msg.children.get("PID")
        if pids:
            pid = pids[0]
            pid3, pid5 = pid.pid_3.pid_3_1.value, pid.pid_5.pid_5_1.value
        else:
            pid3 = pid5 = ""
        return msh.msh_10.value, msh.msh_9.msh_9_1.value, pid3, pid5

    return read


def reader(name: str) -> Callable[[str], Fields] | None:
    return {
        "baseline": lambda: None,
        "smartcare": lambda: smartcare_reader(check=False),
        "smartcare+check": lambda: smartcare_reader(check=True),
        "python-hl7": python_hl7_reader,
        "hl7apy": hl7apy_reader,
    }[name]()


def worker(name: str, count: int) -> dict:
    """Run in the child: which samples parse, then the timed loop. Returns the figures."""
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    samples = load_samples()
    read = reader(name)
    if read is None:
        return {"name": name, "peak_rss_mib": peak_rss_mib()}
    taken, right, failures = [], 0, {}
    for text, row in samples:
        try:
            control_id, mtype, _, _ = read(text)
        except Exception as exc:  # a library's own error types differ: any exception is "not taken"
            failures[row["file"]] = f"{type(exc).__name__}: {str(exc)[:100]}"
            continue
        taken.append(text)
        right += control_id == row["control_id"] and mtype == row["message_type"].split("^")[0]
    messages = (taken * (count // max(len(taken), 1) + 1))[:count]
    start = time.perf_counter()
    for text in messages:
        read(text)
    seconds = time.perf_counter() - start
    return {"name": name, "samples": len(samples), "taken": len(taken), "right": right, "failures": failures,
            "count": len(messages), "seconds": seconds, "msgs_per_s": len(messages) / seconds if seconds else 0.0,
            "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer messages for python-hl7 and hl7apy")
    parser.add_argument("--worker", choices=PARSERS, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.count)))
        return

    results = []
    for name in PARSERS:
        count = (QUICK if args.quick else FULL)[name]
        done = subprocess.run([sys.executable, __file__, "--worker", name, "--count", str(count)],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    base = results[0]
    print(f"HL7 v2 parsing: parse + control id, message type, PID-3.1, PID-5.1 "
          f"({'quick' if args.quick else 'full'} run; each parser in its own process)")
    print(f"{'parser':<17}{'msgs/s':>10}{'messages':>10}{'samples taken':>15}{'header right':>14}{'peak RSS MiB':>14}")
    print(f"{'(baseline)':<17}{'':>10}{'':>10}{'':>15}{'':>14}{base['peak_rss_mib']:>14.1f}")
    for r in results[1:]:
        print(f"{r['name']:<17}{r['msgs_per_s']:>10,.0f}{r['count']:>10,}{r['taken']:>9}/{r['samples']:<5}"
              f"{r['right']:>9}/{r['samples']:<4}{r['peak_rss_mib']:>14.1f}")
    for r in results[1:]:
        for file, problem in r["failures"].items():
            print(f"  {r['name']} could not take {file}: {problem}")
    print("baseline = interpreter + samples only; 'header right' = control id and message type as in MANIFEST.tsv")


if __name__ == "__main__":
    main()

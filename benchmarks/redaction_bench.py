"""Redaction throughput (MB/s of text) on hostile and ordinary text, the old patterns beside the new, in one run.

    .venv/bin/python benchmarks/redaction_bench.py [--mb 4] [--old-kb 8]

Emails and card numbers together (``redact: {emails: true, card_numbers: true}``), as a gateway redacts. The
old redaction (``[A-Za-z0-9._%+-]+@…`` applied with ``re.sub``, then the card pattern) is quadratic on runs of
address characters, so it runs on ``--old-kb`` of text and, for the hostile texts, on 4x that too: the
growth column (time on 4x the text over time on the text) is ~4 for linear code and ~16 for quadratic; the
new code runs on ``--mb`` megabytes (and a quarter of it, for its growth).

Also measured: a custom pattern at the step limit (``MAX_PATTERN_STEPS``) on the text that makes it work
hardest, and what durable mode adds on the request path when redaction is on (``redacted_record`` of a
typical call before it is journaled), per call.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

import orjson

from tuneloop.capture.config import RedactConfig
from tuneloop.capture.records import CallRecord, redacted_record
from tuneloop.capture.redaction import CARD_REFERENCE, EMAIL_REFERENCE, Redactor, _redact_card, check_pattern

CHAT = (
    "Hi, I'm Jane (jane.doe@example.com). My card 4111 1111 1111 1111 was charged $1,200.00 twice on "
    "2024-06-01; order 1234567812345678 is the second one. Please refund to the same card or write to "
    "billing@acme.co.uk. Thanks! "
)
PROSE = "The payoff amount on the loan is due by the end of the month, including escrow and fees. "

TEXTS: dict[str, Callable[[int], str]] = {
    "letters, no @": lambda n: "a" * n,
    "address chars, no @": lambda n: ("ab.c_d%e+f-1" * (n // 12 + 1))[:n],
    "letters then one @": lambda n: "a" * (n - 1) + "@",
    "many @": lambda n: "@" * n,
    "many 'a@'": lambda n: "a@" * (n // 2),
    "many addresses": lambda n: ("x@a.bc " * (n // 7 + 1))[:n],
    "digit run": lambda n: "1" * n,
    "digits and spaces": lambda n: "1 " * (n // 2),
    "digits and dashes": lambda n: "1-" * (n // 2),
    "mixed hostile": lambda n: ("4111 1111 1111 1111 a@b.co 12-34 ab@ " * (n // 36 + 1))[:n],
    "ordinary chat": lambda n: (CHAT * (n // len(CHAT) + 1))[:n],
    "ordinary prose, no PII": lambda n: (PROSE * (n // len(PROSE) + 1))[:n],
}


def old_redact(text: str) -> str:
    text = EMAIL_REFERENCE.sub("[EMAIL]", text)
    return CARD_REFERENCE.sub(_redact_card, text)


def seconds(work: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def throughput(
    redact: Callable[[str], str], make: Callable[[int], str], size: int, repeat: int = 3
) -> tuple[float, float]:
    """MB/s on ``size`` characters, and growth (time on ``size`` over time on ``size // 4``)."""
    text, quarter = make(size), make(size // 4)
    full_s = seconds(lambda: redact(text), repeat)
    quarter_s = seconds(lambda: redact(quarter), repeat)
    return size / full_s / 1e6, full_s / max(quarter_s, 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=4.0, help="text size for the new code (MB)")
    parser.add_argument("--old-kb", type=float, default=8.0, help="text size for the old, quadratic code (KB)")
    args = parser.parse_args()
    new_size, old_size = int(args.mb * 1e6), int(args.old_kb * 1e3)
    redactor = Redactor(RedactConfig(emails=True, card_numbers=True))

    print(f"emails + card numbers; new on {args.mb:g} MB, old on {4 * args.old_kb:g} KB (MB/s, growth on 4x text)")
    print(f"{'text':24} {'new MB/s':>10} {'growth':>7}   {'old MB/s':>10} {'growth':>7}")
    for name, make in TEXTS.items():
        new_rate, new_growth = throughput(redactor.text, make, new_size)
        old_rate, old_growth = throughput(old_redact, make, 4 * old_size, repeat=1)
        print(f"{name:24} {new_rate:10.1f} {new_growth:7.1f}   {old_rate:10.2f} {old_growth:7.1f}")

    print("\ncustom patterns (alone), on their hardest text, 1 MB:")
    for regex, make in [
        (r"[a-z]{1,150}x", lambda n: "a" * n),  # 300 steps: the limit
        (r"[a-z]{1,70}[a-z]{0,1}x", lambda n: "a" * n),
        (r"\b\d{3}-\d{2}-\d{4}\b", lambda n: ("123-12-12345 " * (n // 13 + 1))[:n]),
        (r"\bsk-[A-Za-z0-9]{32,64}\b", lambda n: ("sk-" + "a" * 63 + "_") * (n // 67 + 1)),
        (r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", lambda n: "1.1.1." * (n // 6 + 1)),
    ]:
        steps = check_pattern(regex)
        compiled = re.compile(regex)
        rate, grew = throughput(lambda text, c=compiled: c.sub("[R]", text), make, 1_000_000)
        print(f"  {regex:42} {steps:4} steps  {rate:8.2f} MB/s  growth {grew:4.1f}")

    print("\ndurable mode, redaction on: redacted_record before journaling, per call (request path)")
    request = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": PROSE * 4},
                                                    {"role": "user", "content": CHAT * 4}]}  # fmt: skip
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": CHAT * 2}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 100, "total_tokens": 400},
    }
    body = orjson.dumps(completion)
    stream_body = b"".join(
        b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                                  "choices": [{"index": 0, "delta": {"content": word + " "}}]}) + b"\n\n"
        for word in (CHAT * 2).split()
    ) + b"data: [DONE]\n\n"  # fmt: skip
    for label, stream, raw in [("JSON answer", False, body), ("streamed answer", True, stream_body)]:
        record = CallRecord(
            model_requested="openai/gpt-4o-mini",
            request=request,
            status="ok",
            response_body=raw,
            stream=stream,
            tags=["task=support", "env=prod"],
            metadata={"task": "support", "env": "prod"},
        )
        count = 2000
        started = time.perf_counter()
        for _ in range(count):
            redacted_record(record, redactor)
        per_call = (time.perf_counter() - started) / count
        size = len(orjson.dumps(request)) + len(raw)
        print(f"  {label:16} {size / 1000:5.1f} KB of request + answer: {per_call * 1e6:7.1f} µs per call")


if __name__ == "__main__":
    main()

"""Coverage-guided fuzzing of the product's input edges with atheris (libFuzzer).

Each target (``scripts/fuzz_targets.py``, ``scripts/fuzz_http.py``) runs in a child process of
its own, one after another: the child builds what it calls once, instruments the product's
modules for coverage and lets libFuzzer mutate inputs from the target's seeds. Printed per
target, as one JSON object a line::

    {"target": "sdp", "inputs": 100000, "crashes": 0, "hangs": 0, "seconds": 812.4, ...}

``crashes`` counts inputs that raised anything other than the target's contract allows
(``InputError`` at the input edges; an HTTP 2xx/4xx/503 with ``{"error": ...}`` at the API);
``hangs`` counts calls over the target's per-input time limit; ``background_errors`` counts
failures of tasks nobody awaited (the loop would only log them), each charged to the input
that was running when it surfaced; ``unique_errors`` are the
distinct refusals the product answered with (digits and quoted values folded), with counts.
A crashing or hanging input is saved under ``out/fuzz/<target>/``; the JSON lines also go to
``out/fuzz/results.jsonl``.

Usage::

    .venv/bin/python scripts/fuzz.py --target all --runs 100000
    .venv/bin/python scripts/fuzz.py --target sdp-parse --runs 2000
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import types
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "fuzz"
NAMES = ("sdp-parse", "sdp", "signalling", "datachannel", "text", "audio")
INSTRUMENT = {
    "sdp-parse": ("deployments.media.peer", "aiortc.sdp"),
    "sdp": ("deployments", "aiortc"),
    "signalling": ("deployments", "models.audio", "models.asr.stream", "fastapi", "starlette"),
    "datachannel": ("deployments", "models.guardrails"),
    "text": ("deployments.conductor",),
    "audio": ("models.audio", "models.asr"),
}
"""The modules whose branches guide each target's fuzzer (instrumented after import)."""
REPORT_EVERY = 1000


def load_target(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    from fuzz_targets import TARGETS

    if name == "signalling":
        from fuzz_http import Signalling

        return Signalling()
    return TARGETS[name]()


def instrument(prefixes: tuple[str, ...]) -> int:
    """Add atheris' coverage hooks to every loaded function of the modules under ``prefixes``."""
    import atheris

    count = 0
    for obj in gc.get_objects():
        if not isinstance(obj, types.FunctionType):
            continue
        module = getattr(obj, "__module__", None) or ""
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            try:
                atheris.instrument_func(obj)
                count += 1
            except Exception:  # a function atheris cannot patch keeps running uninstrumented
                pass
    return count


def fold(message: str) -> str:
    """A refusal's message with its variable parts folded, so equal kinds count together."""
    status, message = (message[:8], message[8:]) if re.match(r"HTTP \d{3}:", message) \
        else ("", message)
    message = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    return status + re.sub(r"\d+(\.\d+)?", "N", message)[:200]


class Stats:
    """What one child saw, written to its report file as it goes."""

    def __init__(self, name: str, runs: int, report: Path) -> None:
        self.name, self.runs, self.report = name, runs, report
        self.inputs = self.accepted = self.hangs = 0
        self.refusals: Counter[str] = Counter()
        self.crashes: dict[str, dict[str, Any]] = {}
        self.crash_count = 0
        self.start = time.perf_counter()
        self.slowest_s = 0.0
        self.extra: dict[str, Any] = {}
        self.hang_inputs: list[dict[str, Any]] = []
        self.background: dict[str, dict[str, Any]] = {}
        self.background_count = 0

    def crash(self, exc: BaseException, data: bytes) -> None:
        self.crash_count += 1
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{tb[-1].filename.rsplit('/', 2)[-1]}:{tb[-1].lineno}" if tb else "?"
        key = f"{type(exc).__name__}@{where}"
        if key not in self.crashes:
            path = self._save(data, "crash")
            self.crashes[key] = {"type": type(exc).__name__, "message": str(exc)[:300],
                                 "where": where, "count": 0, "input": str(path)}
        self.crashes[key]["count"] += 1

    def background_error(self, message: str, data: bytes) -> None:
        """A task nobody awaited failed while (or just before) ``data`` ran."""
        self.background_count += 1
        key = fold(message)
        if key not in self.background:
            self.background[key] = {"message": message[:300], "count": 0,
                                    "input": str(self._save(data, "background"))}
        self.background[key]["count"] += 1

    def hang(self, data: bytes, seconds: float) -> None:
        self.hangs += 1
        path = self._save(data, "hang")
        if len(self.hang_inputs) < 20:
            self.hang_inputs.append({"seconds": round(seconds, 2), "input": str(path)})

    def _save(self, data: bytes, kind: str) -> Path:
        folder = OUT / self.name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
        path.write_bytes(data)
        return path

    def summary(self, done: bool) -> dict[str, Any]:
        seconds = time.perf_counter() - self.start
        return {
            "target": self.name, "inputs": self.inputs, "crashes": self.crash_count,
            "hangs": self.hangs, "seconds": round(seconds, 1),
            "rate_per_s": round(self.inputs / seconds, 1) if seconds else 0.0,
            "accepted": self.accepted, "refused": sum(self.refusals.values()),
            "slowest_input_s": round(self.slowest_s, 3), "done": done,
            "unique_errors": [{"message": m, "count": c} for m, c in self.refusals.most_common(25)],
            "unique_error_kinds": len(self.refusals),
            "crash_details": list(self.crashes.values()), "hang_details": self.hang_inputs,
            "background_errors": self.background_count,
            "background_details": list(self.background.values())[:20],
            **self.extra,
        }

    def write(self, done: bool = False) -> None:
        self.report.write_text(json.dumps(self.summary(done), ensure_ascii=False))


def child(name: str, runs: int, report: Path, seed: int) -> None:
    """Fuzz one target in this process; exits when ``runs`` inputs have been tried."""
    import atheris
    from fuzz_targets import Hang

    target = load_target(name)
    stats = Stats(name, runs, report)
    setup_start = time.perf_counter()
    target.setup()
    corpus = OUT / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed_input in enumerate(target.seeds()):
        (corpus / f"seed-{i}").write_bytes(seed_input)
    for seed_input in target.seeds()[:1]:  # warm up: lazy imports and first-call caches
        try:
            target.run(seed_input)
        except Exception:
            pass
    stats.extra["setup_s"] = round(time.perf_counter() - setup_start, 1)
    stats.extra["instrumented_functions"] = instrument(INSTRUMENT[name])
    stats.start = time.perf_counter()

    def finish() -> None:
        try:
            stats.extra.update(target.finish())
        except Exception as exc:
            stats.extra["finish_error"] = f"{type(exc).__name__}: {exc}"[:300]
        stats.write(done=True)
        tmp = getattr(getattr(target, "stack", None), "tmp", None)
        if tmp:  # the stack's knowledge base and session store
            shutil.rmtree(tmp, ignore_errors=True)
        sys.stdout.flush()
        os._exit(0)

    def one_input(data: bytes) -> None:
        if stats.inputs >= runs:
            finish()
        stats.inputs += 1
        begin = time.perf_counter()
        try:
            refusal = target.run(data)
        except Hang:
            stats.hang(data, time.perf_counter() - begin)
            refusal = None
            begin = time.perf_counter()  # counted once
        except Exception as exc:
            stats.crash(exc, data)
            refusal = None
        elapsed = time.perf_counter() - begin
        stats.slowest_s = max(stats.slowest_s, elapsed)
        if elapsed > target.timeout_s:
            stats.hang(data, elapsed)
        if refusal is None:
            stats.accepted += 1
        else:
            stats.refusals[fold(refusal)] += 1
        while target.background:
            stats.background_error(target.background.pop(0), data)
        if stats.inputs % REPORT_EVERY == 0:
            stats.write()
        if stats.inputs >= runs:
            finish()

    (OUT / name).mkdir(parents=True, exist_ok=True)
    args = [sys.argv[0], f"-runs={runs * 10}", f"-max_len={target.max_len}", f"-seed={seed}",
            "-timeout=120", "-rss_limit_mb=6144", "-len_control=0", "-print_final_stats=0",
            f"-artifact_prefix={OUT / name}/", str(corpus)]  # libFuzzer's own slow-unit files
    atheris.Setup(args, one_input)
    atheris.Fuzz()


def parent(names: list[str], runs: int, seed: int, limit_s: float | None) -> int:
    """Run each target in its own child process, one after another; print their JSON."""
    OUT.mkdir(parents=True, exist_ok=True)
    results = (OUT / "results.jsonl").open("w")
    worst = 0
    for name in names:
        report = OUT / f"{name}.json"
        report.unlink(missing_ok=True)
        log = OUT / f"{name}.log"
        cmd = [sys.executable, __file__, "--child", name, "--runs", str(runs),
               "--seed", str(seed), "--report", str(report)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "RAY_AUTH_MODE": "disabled"}
        with log.open("wb") as out:
            try:
                code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      timeout=limit_s, cwd=ROOT).returncode
            except subprocess.TimeoutExpired:
                code = -1
        result: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {
            "target": name, "inputs": 0, "crashes": 0, "hangs": 0, "seconds": 0.0}
        if not result.get("done"):
            # The child died or was stopped: a native crash, libFuzzer's hang timeout, or the
            # wall-clock limit. Its last report still counts; the stop is reported as such.
            result["stopped"] = "time limit" if code == -1 else f"exit code {code}, see {log}"
            if code != -1:
                result["crashes"] = result.get("crashes", 0) + 1
        line = json.dumps(result, ensure_ascii=False)
        print(line, flush=True)
        results.write(line + "\n")
        results.flush()
        if result.get("crashes") or result.get("hangs") or result.get("survivor_answered") is \
                False:
            worst = 1
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="all", help=f"one of {', '.join(NAMES)}, or all")
    parser.add_argument("--runs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop a target after this long (its report so far is kept)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT / "scripts"))
        child(args.child, args.runs, args.report, args.seed)
        return 0
    names = list(NAMES) if args.target == "all" else [args.target]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}; use one of {', '.join(NAMES)} or all")
    return parent(names, args.runs, args.seed, args.max_seconds)


if __name__ == "__main__":
    sys.exit(main())

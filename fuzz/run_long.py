"""The long fuzz run (issue 17: >= 10^4 cases per harness): builds the native harnesses with
ASan + UBSan (gcc: the seeded driver; clang, when installed: libFuzzer as well), runs every
native and Python harness, and prints the table fuzz/README.md records.

    python fuzz/run_long.py [--runs 10000] [--seed 1] [--out build/fuzz-long]
                            [--trt-include DIR]      # TensorRT include/: the creator harness too

Reproducers go to OUT/artifacts, the summary to OUT/summary.json.
Exit status 1 when anything new was found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pyfuzz  # noqa: E402
import seeds  # noqa: E402

NATIVE = ("npy", "layout", "plugin_creator")
SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:")


def build(compiler: str, engine: str, build_dir: Path, trt_include: Path | None) -> list[str]:
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    configure = [cmake, "-S", str(HERE), "-B", str(build_dir), f"-DCMAKE_CXX_COMPILER={compiler}",
                 f"-DBQQ_FUZZ_ENGINE={engine}"]
    if trt_include:
        configure.append(f"-DTensorRT_INCLUDE_DIR={trt_include}")
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([cmake, "--build", str(build_dir), "-j", str(os.cpu_count() or 2)], check=True,
                   stdout=subprocess.DEVNULL)
    return [h for h in NATIVE if (build_dir / f"fuzz_{h}").is_file()]


def run_native(binary: Path, harness: str, engine: str, seed_dir: Path, runs: int, seed: int,
               artifacts: Path) -> dict:
    corpus = seed_dir
    if engine == "libfuzzer":  # libFuzzer adds what it finds to its first corpus folder
        corpus = artifacts / f"corpus-{engine}-{harness}"
        shutil.rmtree(corpus, ignore_errors=True)
        shutil.copytree(seed_dir, corpus)
    command = [str(binary), f"-runs={runs}", f"-seed={seed}", "-timeout=10",
               f"-artifact_prefix={artifacts}/{engine}-{harness}-", str(corpus)]
    if harness in seeds.DICTIONARIES:
        command.insert(1, f"-dict={seeds.DICTIONARIES[harness]}")
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace")
    output = proc.stdout + proc.stderr
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    return {"harness": harness, "engine": engine, "status": proc.returncode,
            "cases": int(done[1]) if done else None, "seconds": round(time.monotonic() - started, 1),
            "sanitizer_reports": len(SANITIZER.findall(output)),
            "tail": output[-3000:] if proc.returncode else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE.parent / "build" / "fuzz-long")
    parser.add_argument("--trt-include", type=Path, help="TensorRT include/ folder (headers only)")
    parser.add_argument("--python-only", action="store_true")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    artifacts = out / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    seed_root = out / "seeds"
    subprocess.run([sys.executable, str(HERE / "seeds.py"), str(seed_root)], check=True, stdout=subprocess.DEVNULL)

    native = []
    engines = [("g++", "driver")] + ([("clang++", "libfuzzer")] if shutil.which("clang++") else [])
    for compiler, engine in ([] if args.python_only else engines):
        if not shutil.which(compiler):
            continue
        build_dir = out / engine
        for harness in build(compiler, engine, build_dir, args.trt_include):
            r = run_native(build_dir / f"fuzz_{harness}", harness, engine, seed_root / harness, args.runs,
                           args.seed, artifacts)
            native.append(r)
            print(f"{engine:9s} {harness:14s} {r['cases']} cases in {r['seconds']} s, exit {r['status']}, "
                  f"{r['sanitizer_reports']} sanitizer reports", flush=True)

    python_json = out / "python.json"
    status = subprocess.run([sys.executable, str(HERE / "pyfuzz.py"), "--runs", str(args.runs), "--seed", str(args.seed),
                             "--artifacts", str(artifacts / "python"), "--json", str(python_json)]).returncode
    python = json.loads(python_json.read_text())
    summary = {"machine": pyfuzz.machine(), "runs": args.runs, "seed": args.seed, "native": native,
               "python": python["results"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\n{summary['machine']}; --runs {args.runs} --seed {args.seed}\n")
    # A native run stops at its first failing case; a Python run counts every one.
    print("| harness | engine | cases | failing cases | sanitizer reports | findings |")
    print("|---|---|---|---|---|---|")
    for r in native:
        crashed = r["status"] != 0
        note = "-" if not crashed else "NEW: " + r["tail"].strip().splitlines()[-1][:80]
        print(f"| fuzz_{r['harness']} | {r['engine']} | {r['cases'] or '-'} | {int(crashed)} | "
              f"{r['sanitizer_reports']} | {note} |")
    for r in python["results"]:
        findings = ", ".join(sorted(r["findings"]))
        print(f"| {r['target']} | python | {r['cases']} | {sum(f['count'] for f in r['findings'].values())} | - | "
              f"{findings or '-'} |")
    new_native = [r for r in native if r["status"] != 0]
    return 1 if new_native or status != 0 else 0


if __name__ == "__main__":
    sys.exit(main())

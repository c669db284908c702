"""How long ``textloc --help`` takes to start, against a bare Python interpreter (issue #13: under 1 s).

Why a ratio: on a shared or loaded machine the absolute time moves with the load; the ratio to ``python -c pass``
(the floor no CLI can beat) and the import list say whether the CLI itself got slower. Nothing is asserted here
(tests never assert timings); ``tests/test_cli.py`` checks instead that importing the CLI imports no torch,
diffusers, transformers or numpy.

    python benchmarks/bench_cli_startup.py [--repeats 5]

Prints the median and minimum wall time of each command, the ratio ``textloc --help`` / ``python -c pass``, and the
slowest modules imported by ``import textloc.cli.app`` (``python -X importtime``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import textloc": [sys.executable, "-c", "import textloc"],
    "import textloc.cli.app": [sys.executable, "-c", "import textloc.cli.app"],
    "textloc --help": [sys.executable, "-m", "textloc", "--help"],
    "textloc --version": [sys.executable, "-m", "textloc", "--version"],
    "textloc generate --help": [sys.executable, "-m", "textloc", "generate", "--help"],
    "textloc nosuchcmd (usage error)": [sys.executable, "-m", "textloc", "nosuchcmd"],
}


def wall(command: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return times


def slowest_imports(module: str, n: int = 8) -> list[tuple[int, str]]:
    """(cumulative µs, module) of the ``n`` slowest top-level imports under ``import module``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                          text=True, check=True)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|"))
        depth = (len(name) - len(name.lstrip())) // 2
        if depth <= 1:
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    results = {name: wall(command, args.repeats) for name, command in COMMANDS.items()}
    print(f"{'command':36} {'median s':>9} {'min s':>7}")
    for name, times in results.items():
        print(f"{name:36} {statistics.median(times):9.3f} {min(times):7.3f}")
    base = statistics.median(results["python -c pass"])
    help_time = statistics.median(results["textloc --help"])
    print(f"\ntextloc --help / python -c pass: ratio {help_time / base:.2f} "
          f"({help_time:.3f} s; above the interpreter: {help_time - base:.3f} s; target: under 1 s)")
    heavy = [m for m in ("torch", "diffusers", "transformers", "numpy")
             if subprocess.run([sys.executable, "-c", f"import sys, textloc.cli.app; sys.exit({m!r} in sys.modules)"],
                               check=False).returncode]
    print(f"heavy modules imported by the CLI at start-up: {', '.join(heavy) or 'none'}")
    print("\nslowest imports under `import textloc.cli.app` (cumulative ms):")
    for micros, name in slowest_imports("textloc.cli.app"):
        print(f"  {micros / 1000:8.1f}  {name}")


if __name__ == "__main__":
    main()

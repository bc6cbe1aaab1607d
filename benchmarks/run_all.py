"""Run the benchmark suite and print ONE table of its figures; write it, with the machine description and
each benchmark's detailed tables, to docs/benchmarks.md.

Each benchmark runs as its own process (`python -m benchmarks.<name> ... --json FILE`, from the repository root); its results are
kept in `--results-dir`, so a later `--reuse` run rebuilds the report from them without measuring again
(for instance after running the long ablations alone). Text between the notes markers of an existing report
(the reading of the figures) is kept when the report is rewritten. The other benchmark scripts of this folder (lpa,
heads, metric, data, processor) run with `--with-others`; their printed output goes to the report as is.

    python -m benchmarks.run_all                              # everything at full size (hours on 2 cores)
    python -m benchmarks.run_all --quick                      # small sizes and budgets: a smoke run
    python -m benchmarks.run_all --only inference head_scaling
    python -m benchmarks.run_all --reuse        # rebuild the report from stored results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ._common import machine_description, versions_line

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> (full arguments, quick arguments)
SUITE = {
    "inference": ([], ["--batch-sizes", "1", "--image-size", "320", "--repeats", "1", "--matmul-size", "2048"]),
    "head_scaling": ([], ["--grids", "10", "20", "--phrase-counts", "1", "5", "--fixed-grid", "10", "--repeats", "1"]),
    "training_speed": (
        [],
        ["--models", "epng-tiny", "drmn-tiny", "--steps", "2", "--pipeline-sizes", "128", "--workers", "0", "1",
         "--pipeline-images", "32"],
    ),
    "convergence": ([], ["--budget", "30", "--eval-every", "15", "--num-train", "200", "--num-validation", "50"]),
    "ablations": ([], ["--quick"]),
}  # fmt: skip
OTHERS = {  # benchmarks owned elsewhere: run as they are, output quoted
    "lpa": [],
    "heads": [],
    "metric": ["--phrases", "5000"],
    "data": [],
    "processor": [],
}


def command_line(name: str, arguments: list[str]) -> str:
    return " ".join(["python", "-m", f"benchmarks.{name}", *arguments])


def run_benchmark(name: str, arguments: list[str], results_dir: Path) -> dict:
    json_path = results_dir / f"{name}.json"
    log_path = results_dir / f"{name}.log"
    command = [sys.executable, "-m", f"benchmarks.{name}", *arguments, "--json", str(json_path)]
    print(f"\n=== {command_line(name, arguments)}", flush=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        completed = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0 or not json_path.is_file():
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise RuntimeError(f"{name} failed (exit {completed.returncode}); last lines of {log_path}:\n{tail}")
    record = json.loads(json_path.read_text())
    record["command"] = command_line(name, arguments)
    record["wall_seconds"] = time.perf_counter() - start
    json_path.write_text(json.dumps(record, indent=2))
    return record


def run_other(name: str, arguments: list[str], results_dir: Path) -> dict:
    command = [sys.executable, "-m", f"benchmarks.{name}", *arguments]
    print(f"\n=== {command_line(name, arguments)}", flush=True)
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    record = {
        "command": command_line(name, arguments),
        "returncode": completed.returncode,
        "output": completed.stdout[-6000:] + (completed.stderr[-2000:] if completed.returncode else ""),
    }
    (results_dir / f"other_{name}.json").write_text(json.dumps(record, indent=2))
    return record


def record_versions(record: dict) -> dict[str, str]:
    """The library versions a stored record was measured on (records older than version tracking name only
    torch)."""
    machine = record.get("machine", {})
    return machine.get("versions") or {"torch": str(machine.get("torch", "unknown"))}


def check_same_versions(name: str, paths: list[Path], records: list[dict], allow_mixed: bool) -> None:
    """Refuse to merge partial runs measured on different library versions into one table, unless asked to;
    then every merged row keeps its own versions and the report says the table mixes them."""
    distinct = {versions_line(record_versions(record)) for record in records}
    if len(distinct) > 1 and not allow_mixed:
        listing = "; ".join(
            f"{path.name}: {versions_line(record_versions(record))}"
            for path, record in zip(paths, records, strict=True)
        )
        raise ValueError(
            f"the stored results of {name} were measured on different library versions ({listing}); re-measure "
            "them on one set of versions, or pass --allow-mixed-versions to merge them with each row labelled"
        )


def load_stored(name: str, results_dir: Path, *, allow_mixed_versions: bool = False) -> dict | None:
    """The stored results of a benchmark: `<name>.json`, or several `<name>_*.json` of partial runs (run at
    different times or in parallel) merged: inference rows are concatenated (each row keeps the matmul limit
    and the library versions of its own run), ablation groups combined. Runs on different library versions
    are merged only with `allow_mixed_versions`."""
    paths = sorted(results_dir.glob(f"{name}.json")) or sorted(results_dir.glob(f"{name}_*.json"))
    records = [json.loads(path.read_text()) for path in paths]
    if not records:
        return None
    if len(records) == 1:
        return records[0]
    check_same_versions(name, paths, records, allow_mixed_versions)
    if name == "ablations":
        from ablations import merge_records

        return merge_records(records)
    if name == "inference":
        merged = dict(records[0])
        merged["rows"] = [
            dict(row, versions=record_versions(record)) for record in records for row in record["rows"]
        ]
        merged["command"] = " ; ".join(record["command"] for record in records)
        machines = [record.get("machine", {}) for record in records]
        merged["machine"] = dict(
            machines[0],
            date_utc=" and ".join(str(machine.get("date_utc")) for machine in machines),
            versions_note=" and ".join(
                sorted({versions_line(record_versions(record)) for record in records})
            ),
            load_average=" and ".join(str(machine.get("load_average")) for machine in machines),
        )
        return merged
    raise ValueError(f"several stored results for {name} ({[str(p) for p in paths]}); keep one")


# ------------------------------------------------------------------------------------------------ summary
def summary_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(benchmark, what, figure, command) for the one table."""
    rows = []
    if "inference" in results:
        record = results["inference"]
        command = record["command"]
        rows.append(
            (
                "inference",
                "dense float32 matmul (the limit)",
                f"{record['matmul_gflops']:.1f} GFLOP/s",
                command,
            )
        )
        for row in record["rows"]:
            what = f"{row['head']} paper config, batch {row['batch']}, {row['path']}"
            figure = (
                f"{row['latency_s']:.2f} s/batch, {row['images_per_s']:.2f} img/s (backbone {row['backbone_s']:.2f} / "
                f"text {row['text_s']:.2f} / head {row['head_s']:.2f} / post {row['post_s']:.2f} s), "
                f"peak RSS {row['peak_rss_mb']:.0f} MiB"
            )
            rows.append(("inference", what, figure, command))
        for row in record["rows"]:
            target_met = row["head_matmul_fraction"] >= 0.5
            rows.append(
                (
                    "target: head >= 50% of matmul",
                    f"{row['head']} head, batch {row['batch']}, {row['path']}",
                    f"{row['head_gflops']:.1f} GFLOP/s = {100 * row['head_matmul_fraction']:.0f}% of matmul: "
                    f"{'MET' if target_met else 'NOT MET'}",
                    command,
                )
            )
        for row in record["rows"]:
            if "speedup_vs_plain" not in row:
                continue
            equal = row.get("within_tolerance")
            tolerance = record["tolerance"]
            equality = (
                f"outputs {'equal' if equal else 'NOT equal'} within atol {tolerance['atol']:g} + rtol "
                f"{tolerance['rtol']:g} (max |diff| {row['max_abs_diff']:.1e}, masks agree on "
                f"{100 * row['mask_agreement']:.3f}% of pixels)"
                if equal is not None
                else "outputs not compared at this batch"
            )
            met = row["speedup_vs_plain"] >= 1.3 and equal is not False
            versus_eager = (
                f"; {row['speedup_vs_eager']:.2f}x the default eager model (head {row['head_speedup_vs_eager']:.2f}x)"
                if "speedup_vs_eager" in row
                else ""
            )
            rows.append(
                (
                    "target: fast path >= 1.3x plain eager",
                    f"{row['head']}, batch {row['batch']}, {record['image_size']}x{record['image_size']}",
                    f"{row['speedup_vs_plain']:.2f}x end to end (head {row['head_speedup_vs_plain']:.2f}x){versus_eager}; "
                    f"compile {row['first_call_s']:.0f} s once; {equality}: {'MET' if met else 'NOT MET'}",
                    command,
                )
            )
    if "head_scaling" in results:
        record = results["head_scaling"]
        for sweep in record["sweeps"]:
            rows.append(
                (
                    "head scaling",
                    f"{sweep['head']} head vs {sweep['axis']}",
                    f"time ~ size^{sweep['time_exponent']:.2f} (implied {sweep['implied_time_exponent']:.2f}), memory "
                    f"~ size^{sweep['memory_exponent']:.2f} (implied <= 1): "
                    f"{'ok' if sweep['time_flag'] == sweep['memory_flag'] == 'ok' else 'WORSE than implied'}",
                    record["command"],
                )
            )
    if "training_speed" in results:
        record = results["training_speed"]
        for row in record["steps"]:
            rows.append(
                (
                    "training",
                    f"{row['variant']}, batch {row['batch']}, {row['image_size']} px",
                    f"{row['seconds_per_step']:.2f} s/step, {row['samples_per_s']:.2f} samples/s, peak RSS "
                    f"{row['peak_rss_mb']:.0f} MiB",
                    record["command"],
                )
            )
        for row in record["pipeline"]:
            rows.append(
                (
                    "data pipeline",
                    f"{row['input_size']} px inputs, {row['workers']} DataLoader workers",
                    f"{row['samples_per_s']:.1f} samples/s = {100 * row['gpu_budget_fraction']:.0f}% of a GPU at 11 ms/img",
                    record["command"],
                )
            )
    if "convergence" in results:
        record = results["convergence"]
        history = record["history"]
        if history:
            last = history[-1]
            best = max(history, key=lambda entry: entry.get("average_recall", 0.0))
            rows.append(
                (
                    "convergence",
                    f"{record['model']}, hard level, {record['budget']:.0f} s budget",
                    f"AR {100 * last['average_recall']:.1f} after {last['train_seconds']:.0f} s ({last['step']} steps); "
                    f"best {100 * best['average_recall']:.1f} at {best['train_seconds']:.0f} s",
                    record["command"],
                )
            )
    if "ablations" in results:
        record = results["ablations"]
        for group, result in record["groups"].items():
            for row in result["rows"]:
                ar = row["ar"]
                rows.append(
                    (
                        f"ablation {group}",
                        row["label"],
                        f"AR {100 * ar['mean']:.1f} ± {100 * ar['std']:.1f} ({len(row['runs'])} seeds)",
                        record["command"],
                    )
                )
            rows.append((f"ablation {group}", "verdict", result["verdict"], record["command"]))
    return rows


NOTES_BEGIN, NOTES_END = "<!-- notes: kept when the report is rewritten -->", "<!-- end notes -->"


def existing_notes(path: Path) -> str:
    """The hand-written reading of the figures in the current report, between the notes markers."""
    if not path.is_file():
        return ""
    text = path.read_text()
    if NOTES_BEGIN not in text or NOTES_END not in text:
        return ""
    return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]


def markdown(results: dict, others: dict, machine: dict, notes: str = "") -> str:
    import inference
    import training_speed
    from ablations import format_table as ablations_table
    from convergence import format_table as convergence_table
    from head_scaling import format_table as scaling_table

    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m benchmarks.run_all` (see its `--help`); every figure names the command that "
        "measured it. Timings on a shared machine are only comparable within one run: the targets below are "
        "ratios measured in the same run.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch threads), "
        f"{machine['memory_gib']} GiB memory",
        f"- {versions_line(machine['versions'])}, Python {machine['python']} (the report's writer; each table "
        "below names the versions it was measured on)",
        f"- report written {machine['date_utc']}; load average at the end {machine['load_average']}",
    ]
    for name, record in results.items():
        measured = record.get("machine", {})
        if measured:
            versions = measured.get("versions_note") or versions_line(record_versions(record))
            lines.append(
                f"- {name}: measured {measured.get('date_utc')} on {versions}, "
                f"{measured.get('torch_threads')} torch threads, load average at its start "
                f"{measured.get('load_average')}"
            )
    if notes:
        lines += ["", NOTES_BEGIN, notes.strip("\n"), NOTES_END]
    lines += ["", "## Summary", "", "| benchmark | configuration | figure | command |", "|---|---|---|---|"]
    for benchmark, what, figure, command in summary_rows(results):
        lines.append(f"| {benchmark} | {what} | {figure} | `{command}` |")
    details = {
        "inference": inference.format_table,
        "head_scaling": scaling_table,
        "training_speed": training_speed.format_table,
        "convergence": convergence_table,
        "ablations": ablations_table,
    }
    for name, record in results.items():
        measured = record.get("machine", {})
        versions = measured.get("versions_note") or versions_line(record_versions(record))
        mixed = " (MIXED: rows measured on different versions)" if " and " in versions else ""
        lines += [
            "",
            f"## {name}",
            "",
            f"`{record['command']}`",
            "",
            f"Measured on {versions}{mixed}, {measured.get('torch_threads')} torch threads.",
            "",
            details[name](record),
        ]
    for name, record in others.items():
        lines += [
            "",
            f"## {name} (`python -m benchmarks.{name}`)",
            "",
            f"`{record['command']}` (exit {record['returncode']})",
        ]
        lines += ["", "```", record["output"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def print_summary(results: dict) -> None:
    rows = summary_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(2)] if rows else [0, 0]
    for benchmark, what, figure, _ in rows:
        print(f"{benchmark:<{widths[0]}}  {what:<{widths[1]}}  {figure}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(SUITE), default=None)
    parser.add_argument("--skip", nargs="+", choices=list(SUITE), default=[])
    parser.add_argument("--quick", action="store_true", help="small sizes and budgets (a smoke run)")
    parser.add_argument(
        "--with-others", action="store_true", help="also run lpa, heads, metric, data, processor"
    )
    parser.add_argument(
        "--results-dir", default="runs/benchmarks", help="JSON results and logs (runs/ is git-ignored)"
    )
    parser.add_argument("--reuse", action="store_true", help="use stored results instead of measuring")
    parser.add_argument(
        "--allow-mixed-versions",
        action="store_true",
        help="with --reuse: merge partial runs measured on different library versions (each row labelled)",
    )
    parser.add_argument("--output", default="docs/benchmarks.md")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help='extra arguments for one benchmark, e.g. --extra "ablations=--budget-steps 200"',
    )
    args = parser.parse_args(argv)
    results_dir = (ROOT / args.results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    extra = {}
    for item in args.extra:
        name, _, value = item.partition("=")
        if name not in SUITE:
            parser.error(f"--extra {item!r}: unknown benchmark {name!r}; choose from {sorted(SUITE)}")
        extra[name] = value.split()

    names = [name for name in (args.only or list(SUITE)) if name not in args.skip]
    results, others = {}, {}
    for name in names:
        if args.reuse:
            stored = load_stored(name, results_dir, allow_mixed_versions=args.allow_mixed_versions)
            if stored is not None:
                results[name] = stored
            continue
        full, quick = SUITE[name]
        results[name] = run_benchmark(
            name, (quick if args.quick else full) + extra.get(name, []), results_dir
        )
    if args.reuse:
        for path in sorted(results_dir.glob("other_*.json")):
            others[path.stem[len("other_") :]] = json.loads(path.read_text())
    elif args.with_others:
        for name, arguments in OTHERS.items():
            if (HERE / f"{name}.py").is_file():
                others[name] = run_other(name, arguments, results_dir)
    machine = machine_description()
    print()
    print_summary(results)
    output = ROOT / args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown(results, others, machine, existing_notes(output)))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()

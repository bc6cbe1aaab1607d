"""Where the time goes, op by op: torch.profiler over the tiny training steps and the LPA attention core.

Cases (`--cases`):
- `epng-tiny`, `drmn-tiny`: the optimizer step of benchmarks/training_speed.py (batch 8 at 128 px, 230
  tokens, 15 phrases; forward with labels, backward, clipping, the training script's optimizer).
- `drmn-head`: the DRMN head of `drmn-r101-bert-base` on the default eager inference path (no_grad), batch 1
  at 640 x 640 with 15 phrases, on visual and phrase features computed once beforehand: where the head's
  time goes when it is not compiled.
- `lpa-direct`, `lpa-flex`: the LPA attention core at `--side` x `--side` (eqs. 3-6 on given q, k, v;
  d 768, 8 heads, batch 2), the two paths of benchmarks/lpa.py.

For each case, in a fresh child process: warm-up calls (compilation for flex), then `--calls` profiled
calls. Printed: the process CPU time per call (on a loaded machine less inflated than wall time; with
several threads it includes their spin-waiting), the number of aten ops and of distinct op kinds per call
(independent of load), and the ops with the most self time (the profiler's wall time inside each op, not
counting ops it calls), with their share and calls per step. A compiled flex-attention kernel is one
inductor call, not an aten op: its time is what the listed ops leave of the total.

    python -m benchmarks.profile_ops                                   # all cases, torch's thread count
    OMP_NUM_THREADS=1 python -m benchmarks.profile_ops --cases drmn-tiny --top 25
"""

from __future__ import annotations

import argparse
import time

import torch

from ._common import (
    machine_description,
    print_machine,
    random_model_inputs,
    run_in_child,
    training_optimizer,
    write_json,
)

CASES = ("epng-tiny", "drmn-tiny", "drmn-head", "lpa-direct", "lpa-flex")


def _training_step(variant: str):
    from narrative_grounding import create_model, load_variant

    torch.manual_seed(0)
    model = create_model(variant).train()
    size, batch, phrases = load_variant(variant).image_size, 8, 15
    inputs = random_model_inputs(
        batch, size, tokens=230, phrases=phrases, vocab_size=model.config.text_config.vocab_size
    )
    labels = (
        torch.rand(batch, phrases, size, size, generator=torch.Generator().manual_seed(1)) > 0.7
    ).float()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = training_optimizer(model)

    def step() -> None:
        model(**inputs, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _drmn_head_inference():
    from narrative_grounding import create_model

    torch.manual_seed(0)
    model = create_model("drmn-r101-bert-base").eval()
    inputs = random_model_inputs(
        1, 640, tokens=230, phrases=15, vocab_size=model.config.text_config.vocab_size
    )
    with torch.no_grad():
        features = model.visual_encoder(inputs["pixel_values"])
        tokens = model.text_encoder(inputs["input_ids"], inputs["attention_mask"], None)
        phrases = model.phrase_pooling(tokens, inputs["phrase_token_mask"])
    phrase_mask = inputs["phrase_mask"].bool()

    def step() -> None:
        with torch.no_grad():
            model.head(features, phrases, phrase_mask)

    return step


def _lpa_core(implementation: str, side: int):
    from narrative_grounding.modeling.attention import LocalityPerceptiveAttention

    torch.manual_seed(0)
    module = LocalityPerceptiveAttention(
        d_model=768, num_heads=8, distance_clamp=2.0, distance_form="squared", implementation=implementation
    )
    with torch.no_grad():
        query, key, value = module.project_heads(torch.randn(2, side * side, 768))
    attend = module._flex if implementation == "flex" else module._direct

    def step() -> None:
        with torch.no_grad():
            attend(query, key, value, side, side)

    return step


def _profile(case: str, calls: int, side: int, top: int) -> dict:
    """Runs in a child process."""
    from torch.profiler import ProfilerActivity, profile

    if case.endswith("-tiny"):
        step = _training_step(case)
    elif case == "drmn-head":
        step = _drmn_head_inference()
    else:
        step = _lpa_core(case.removeprefix("lpa-"), side)
    for _ in range(2):
        step()
    cpu_start = time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(calls):
            step()
    cpu_per_call = (time.process_time() - cpu_start) / calls
    events = [event for event in profiler.key_averages() if event.key.startswith("aten::")]
    total_us = sum(event.self_cpu_time_total for event in profiler.key_averages())
    rows = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:top]
    return {
        "case": case,
        "threads": torch.get_num_threads(),
        "cpu_s_per_call": cpu_per_call,
        "profiled_s_per_call": total_us / 1e6 / calls,
        "aten_ops_per_call": sum(event.count for event in events) / calls,
        "aten_op_kinds": len(events),
        "top": [
            {
                "op": event.key,
                "self_ms_per_call": event.self_cpu_time_total / 1e3 / calls,
                "share": event.self_cpu_time_total / total_us,
                "calls_per_call": event.count / calls,
            }
            for event in rows
        ],
    }


def format_case(record: dict) -> str:
    lines = [
        f"{record['case']}: {record['cpu_s_per_call']:.3f} s CPU per call ({record['threads']} threads), "
        f"{record['profiled_s_per_call']:.3f} s profiled, {record['aten_ops_per_call']:.0f} aten ops per call "
        f"({record['aten_op_kinds']} kinds)",
        "",
        "| op | self ms per call | share | calls per call |",
        "|---|---|---|---|",
    ]
    for row in record["top"]:
        lines.append(
            f"| {row['op']} | {row['self_ms_per_call']:.1f} | {100 * row['share']:.1f}% | "
            f"{row['calls_per_call']:g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--calls", type=int, default=3, help="profiled calls per case")
    parser.add_argument("--side", type=int, default=40, help="LPA grid side")
    parser.add_argument("--top", type=int, default=12, help="ops listed per case")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    machine = machine_description()
    print_machine(machine)
    cases = []
    for case in args.cases:
        record, _ = run_in_child(_profile, case, args.calls, args.side, args.top)
        cases.append(record)
        print()
        print(format_case(record), flush=True)
    result = {"machine": machine, "cases": cases}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

"""Training speed on CPU: optimizer steps, and the data pipeline against EPNG's GPU budget.

Model steps (`--models`): forward with labels + backward + gradient clipping + the training script's
optimizer step (its default for the variant: Muon + AdamW for the tiny ones, Adam for the paper ones; glibc's
malloc keeping freed memory, as training does), on random inputs of
the variant's size (tiny: 128x128, batch 8, the training script's default batch; paper: 640x640, batch 2),
230 tokens and 15 phrases; seconds per step =
the median of `--steps` steps after 1 warm-up step, in a fresh child process each (peak RSS per
configuration). Training takes the LPA's direct path on CPU
(flex attention has no CPU backward in this torch).

Data pipeline (`--pipeline`): the real input path of `training/train.py` on the hard synthetic level:
Arrow dataset rows (image + panoptic PNG decoding) -> `PngCollator` (phrase masks from the PNG) ->
`PngProcessor` (resize/pad, normalise, tokenize, labels) -> batches from a `torch.utils.data.DataLoader`
with 0, 1 and 2 workers, at 128 px (tiny models: 128 px synthetic images) and at 640 px (the paper input
size: 640 px synthetic images). Samples/s is measured from the second batch on (worker start-up excluded, reported apart) and
compared with the 91 samples/s that EPNG's reported 11 ms/img on a GPU would consume.

    python -m benchmarks.training_speed
    python -m benchmarks.training_speed --models epng-tiny --steps 2 --pipeline-images 16 --workers 0   # smoke
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

BATCH = {"epng-tiny": 8, "drmn-tiny": 8, "epng-r101-bert-base": 2, "drmn-r101-bert-base": 2}
EPNG_GPU_MS_PER_IMAGE = 11.0  # EPNG (AAAI 2023), inference on one GPU


def _train_steps(variant: str, batch: int, steps: int, tokens: int, phrases: int) -> dict:
    """Runs in a child process: warm-up step + `steps` timed optimizer steps."""
    from narrative_grounding import create_model, load_variant
    from narrative_grounding.training.allocator import keep_freed_memory

    keep_freed_memory()  # as training/train.py and the demo's processes
    torch.manual_seed(0)
    model = create_model(variant).train()
    size = load_variant(variant).image_size
    inputs = random_model_inputs(
        batch, size, tokens=tokens, phrases=phrases, vocab_size=model.config.text_config.vocab_size
    )
    generator = torch.Generator().manual_seed(1)
    labels = torch.zeros(batch, phrases, size, size)
    for sample in range(batch):  # one random rectangle per phrase
        for phrase in range(phrases):
            top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
            labels[sample, phrase, top : top + size // 3, left : left + size // 3] = 1
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = training_optimizer(model)  # as training does

    def step() -> float:
        start = time.perf_counter()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step()
    times = sorted(step() for _ in range(steps))
    return {
        "variant": variant,
        "batch": batch,
        "image_size": size,
        "seconds_per_step": times[len(times) // 2],
        "trainable_parameters": sum(p.numel() for p in parameters),
    }


def _pipeline(data_dir: str, input_size: int, workers: int, batch: int, limit: int) -> dict:
    """Runs in a child process: one pass of the DataLoader over `limit` training rows."""
    from torch.utils.data import DataLoader

    from narrative_grounding import load_processor
    from narrative_grounding.data import load_png_dataset
    from narrative_grounding.modeling.image_processing_png import PngImageProcessor
    from narrative_grounding.training import PngCollator

    processor = load_processor("epng-tiny")
    processor.image_processor = PngImageProcessor(size={"height": input_size, "width": input_size})
    dataset = load_png_dataset(data_dir)["train"]
    dataset = dataset.select(range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch, collate_fn=PngCollator(processor), num_workers=workers)
    start = time.perf_counter()
    iterator = iter(loader)
    first = next(iterator)
    first_batch_s = time.perf_counter() - start
    steady_start, samples = time.perf_counter(), 0
    for batch_inputs in iterator:
        samples += batch_inputs["pixel_values"].shape[0]
    steady = time.perf_counter() - steady_start
    return {
        "input_size": input_size,
        "workers": workers,
        "batch": batch,
        "first_batch_s": first_batch_s,
        "samples": samples,
        "samples_per_s": samples / steady if steady > 0 else float("nan"),
        "pixel_values_shape": list(first["pixel_values"].shape),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", default=list(BATCH), choices=list(BATCH))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 tiny, 2 paper)")
    parser.add_argument("--tokens", type=int, default=230)
    parser.add_argument("--phrases", type=int, default=15)
    parser.add_argument("--pipeline-sizes", type=int, nargs="*", default=[128, 640])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pipeline-images", type=int, default=96, help="training rows per DataLoader pass")
    parser.add_argument("--pipeline-batch", type=int, default=8)
    parser.add_argument("--data-root", default=None, help="cache folder of the synthetic data")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    machine = machine_description()
    print_machine(machine)
    steps_rows = []
    for variant in args.models:
        steps = args.steps or (10 if "tiny" in variant else 2)
        result, peak = run_in_child(_train_steps, variant, BATCH[variant], steps, args.tokens, args.phrases)
        result.update(
            steps=steps, peak_rss_mb=peak, samples_per_s=result["batch"] / result["seconds_per_step"]
        )
        steps_rows.append(result)
        print(
            f"{variant}: batch {result['batch']} at {result['image_size']} px: {result['seconds_per_step']:.3f} "
            f"s/step, {result['samples_per_s']:.2f} samples/s, peak RSS {peak:.0f} MiB",
            flush=True,
        )

    pipeline_rows = []
    if args.pipeline_sizes:
        from narrative_grounding.data.synthetic import ensure_synthetic_data

        for input_size in args.pipeline_sizes:
            # 128 px inputs read the 128 px synthetic images the tiny models train on, 640 px inputs 640 px ones.
            image_size = 128 if input_size <= 128 else 640
            data_dir = ensure_synthetic_data(
                "hard",
                num_train=args.pipeline_images,
                num_validation=8,
                image_size=image_size,
                seed=0,
                root=args.data_root,
            )
            for workers in args.workers:
                result, peak = run_in_child(
                    _pipeline, str(data_dir), input_size, workers, args.pipeline_batch, args.pipeline_images
                )
                result.update(peak_rss_mb=peak, source_image_size=image_size)
                result["gpu_budget_fraction"] = result["samples_per_s"] / (1000 / EPNG_GPU_MS_PER_IMAGE)
                pipeline_rows.append(result)
                print(
                    f"pipeline {input_size} px, {workers} workers: {result['samples_per_s']:.1f} samples/s "
                    f"({100 * result['gpu_budget_fraction']:.0f}% of the {1000 / EPNG_GPU_MS_PER_IMAGE:.0f}/s a GPU "
                    f"at 11 ms/img needs), first batch {result['first_batch_s']:.2f} s",
                    flush=True,
                )
    record = {"machine": machine, "steps": steps_rows, "pipeline": pipeline_rows}
    print()
    print(format_table(record))
    write_json(args.json, record)
    return record


def format_table(record: dict) -> str:
    lines = [
        "| model | batch | input px | s/step | samples/s | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["steps"]:
        lines.append(
            f"| {row['variant']} | {row['batch']} | {row['image_size']} | {row['seconds_per_step']:.3f} | "
            f"{row['samples_per_s']:.2f} | {row['peak_rss_mb']:.0f} |"
        )
    if record["pipeline"]:
        needed = 1000 / EPNG_GPU_MS_PER_IMAGE
        lines += [
            "",
            f"Data pipeline (hard synthetic level; a GPU at EPNG's 11 ms/img consumes {needed:.0f} samples/s):",
            "",
            "| input px | workers | samples/s | % of GPU need | first batch s | peak RSS MiB (main) |",
            "|---|---|---|---|---|---|",
        ]
        for row in record["pipeline"]:
            lines.append(
                f"| {row['input_size']} | {row['workers']} | {row['samples_per_s']:.1f} | "
                f"{100 * row['gpu_budget_fraction']:.0f}% | {row['first_batch_s']:.2f} | {row['peak_rss_mb']:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""`narrative-grounding predict`: run a trained model over images and narratives, write masks and overlays.

Inputs (one of):
  --image PATH --narrative TEXT --phrases P [P ...]     one record
  --input FILE.jsonl                                    one JSON record a line: {"image": path (relative to
                                                        the file's folder), "narrative": str, "phrases":
                                                        [str or [start, end], ...], "id": optional}
  --input FOLDER                                        every image in it that has a sidecar <stem>.json with
                                                        {"narrative", "phrases"}

Outputs in --output:
  predictions.jsonl        one line a record: id, image, narrative, phrases, spans, scores, masks (PNG file
                           names with --format png, COCO RLE dicts with --format rle)
  masks/<id>/<k>.png       phrase k's mask, 0/255 (with --format png)
  overlays/<id>.png        masks over the image with the coloured narrative (unless --no_overlay)
  skipped.jsonl            the records whose input could not be used (unreadable image, bad sidecar, a
                           phrase not in its narrative), with the reason; they are reported as they come,
                           every other record is still predicted, and the command then fails
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from ..argument_types import max_length, torch_device, unit_interval
from ..modeling.image_processing_png import MASK_DECISIONS

SKIPPED_FILE = "skipped.jsonl"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="ground the phrases of narratives in images with a trained model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True, help="folder of a saved model (with its processor beside it)"
    )
    parser.add_argument("--processor", help="folder of a saved PngProcessor (default: the model folder)")
    source = parser.add_argument_group("input")
    source.add_argument("--image", help="one image file")
    source.add_argument("--narrative", help="the narrative of --image")
    source.add_argument("--phrases", nargs="+", help="the phrases of --narrative, in order")
    source.add_argument(
        "--input", help="a JSON-lines file of records, or a folder of images with <stem>.json"
    )
    parser.add_argument("--output", required=True, help="folder for predictions.jsonl, masks and overlays")
    parser.add_argument("--format", choices=("png", "rle"), default="png", help="mask format (default png)")
    parser.add_argument(
        "--threshold", type=unit_interval, default=0.5, help="mask probability threshold in [0, 1] (0.5)"
    )
    parser.add_argument(
        "--mask_decision",
        choices=MASK_DECISIONS,
        default=None,
        help="how masks are decided from probabilities: the threshold, or the mask of highest expected IoU "
        "(default: the model's processor's post_process_mask_decision)",
    )
    parser.add_argument("--no_overlay", action="store_true", help="do not write overlay pictures")
    parser.add_argument(
        "--overlapping_windows", action="store_true", help="encode long narratives in windows"
    )
    parser.add_argument(
        "--max_length", type=max_length, help="WordPiece tokens per sequence (processor default)"
    )
    parser.add_argument(
        "--device", type=torch_device, default="cpu", help="torch device (cpu, cuda, cuda:1, ...)"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="optimize_for_inference (torch.compile + channels-last): same masks, faster once compiled; "
        "compiling costs up to a minute or two per new input shape, so it pays off on many records",
    )
    parser.set_defaults(func=run)


def iter_records(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The records to predict, each with id, image (path), narrative, phrases; clear errors for bad input."""
    if args.image is not None:
        if args.input is not None:
            raise ValueError("give either --image (with --narrative, --phrases) or --input, not both")
        if not args.narrative or not args.phrases:
            raise ValueError("--image needs --narrative and --phrases")
        path = Path(args.image)
        return [{"id": path.stem, "image": path, "narrative": args.narrative, "phrases": list(args.phrases)}]
    if args.input is None:
        raise ValueError("give --image (with --narrative and --phrases) or --input")
    source = Path(args.input)
    if source.is_dir():
        return list(_folder_records(source))
    if source.is_file():
        records = list(_jsonl_records(source))
        if not records:  # like an image folder without images: nothing to do is not a success
            raise ValueError(f"no records in {source} (one JSON object per line)")
        return records
    raise FileNotFoundError(f"--input {source} is neither a file nor a folder")


def _folder_records(folder: Path) -> Iterator[dict[str, Any]]:
    # One unreadable or malformed sidecar must not cost the rest of the folder: such a record carries its
    # "error" and `run` reports it and goes on with the next image.
    images = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no image files in {folder}")
    for path in images:
        sidecar = path.with_suffix(".json")
        try:
            if not sidecar.is_file():
                raise ValueError(f"{path.name} has no {sidecar.name} with its narrative and phrases")
            record = _parse_json(sidecar.read_text(encoding="utf-8"), str(sidecar))
            yield _record(record, str(sidecar), default_id=path.stem, image=path)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            yield {"id": path.stem, "image": path, "error": str(error)}


def _jsonl_records(file: Path) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        record = _parse_json(line, where)
        if "image" not in record:
            raise ValueError(f"{where}: record has no 'image'")
        image = Path(record["image"])
        image = image if image.is_absolute() else file.parent / image
        result = _record(record, where, default_id=image.stem, image=image)
        if result["id"] in seen:
            raise ValueError(f"{where}: duplicate id {result['id']!r} (give each record an 'id')")
        seen.add(result["id"])
        yield result


def _parse_json(text: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object")
    return record


def _record(record: dict[str, Any], where: str, *, default_id: str, image: Path) -> dict[str, Any]:
    narrative = record.get("narrative", record.get("caption"))
    if not isinstance(narrative, str):
        raise ValueError(f"{where}: 'narrative' must be a string")
    phrases = record.get("phrases")
    if not isinstance(phrases, list):
        raise ValueError(f"{where}: 'phrases' must be a list of strings or [start, end] spans")
    phrases = [tuple(phrase) if isinstance(phrase, list) else phrase for phrase in phrases]
    if not image.is_file():
        raise FileNotFoundError(f"{where}: image {image} does not exist")
    record_id = str(record.get("id", default_id))
    if not re.fullmatch(r"[\w.\-]+", record_id):
        raise ValueError(
            f"{where}: id {record_id!r} must be letters, digits, '_', '-' or '.' (it names files)"
        )
    return {"id": record_id, "image": image, "narrative": narrative, "phrases": phrases}


def run(args: argparse.Namespace) -> int:
    import torch  # heavy imports only when the command runs

    from ..modeling.modeling_png import PngForPanopticNarrativeGrounding
    from ..modeling.processing_png import PngProcessor

    records = iter_records(args)
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model {model_dir} is not a saved model folder (no config.json)")
    model = PngForPanopticNarrativeGrounding.from_pretrained(str(model_dir)).to(args.device).eval()
    # inference_mode for the compiled graphs (inductor's weight freezing needs it); no_grad keeps eager
    # tensors usable by anything that might still want them.
    no_gradients = torch.no_grad
    if args.fast:
        from ..inference_optimization import optimize_for_inference

        optimize_for_inference(model)
        no_gradients = torch.inference_mode
    processor = PngProcessor.from_pretrained(args.processor or str(model_dir))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    text_options: dict[str, Any] = {"overlapping_windows": args.overlapping_windows}
    if args.max_length is not None:
        text_options["max_length"] = args.max_length

    written: list[str] = []
    skipped: list[dict[str, str]] = []
    record: dict[str, Any] = {}
    try:
        with (output / "predictions.jsonl").open("w", encoding="utf-8") as lines:
            for record in tqdm(records, desc="predict", unit="image"):
                line = _predict_record(record, model, processor, no_gradients, text_options, output, args)
                if isinstance(line, str):  # this record's own input is bad: report it and go on
                    skipped.append({"id": record["id"], "image": str(record["image"]), "error": line})
                    tqdm.write(f"predict: skipped {line}", file=sys.stderr)
                    continue
                lines.write(json.dumps(line) + "\n")
                written.append(record["id"])
    except BaseException:
        # Not a bad input (a model or device failure, an interrupt): say what is kept, then let it propagate.
        print(
            f"predict stopped at record {record.get('id')!r} ({record.get('image')}); "
            f"{output / 'predictions.jsonl'} holds the {len(written)} prediction(s) written before it",
            file=sys.stderr,
        )
        raise
    skipped_file = output / SKIPPED_FILE
    skipped_file.unlink(missing_ok=True)  # a previous run's list would describe another run
    if skipped:
        skipped_file.write_text("".join(json.dumps(item) + "\n" for item in skipped), encoding="utf-8")
        raise RecordsSkippedError(written, skipped, output)
    print(f"wrote {len(written)} prediction(s) to {output}")
    return 0


class RecordsSkippedError(ValueError):
    """Some records could not be read; every other record was predicted and written.

    Attributes:
        written: ids of the records in predictions.jsonl.
        skipped: ``{"id", "image", "error"}`` of each record left out (also in ``skipped.jsonl``).
    """

    def __init__(self, written: list[str], skipped: list[dict[str, str]], output: Path, shown: int = 20):
        self.written, self.skipped = written, skipped
        listed = "\n".join(f"  - {item['error']}" for item in skipped[:shown])
        more = f"\n  ... and {len(skipped) - shown} more" if len(skipped) > shown else ""
        super().__init__(
            f"{len(skipped)} of {len(written) + len(skipped)} record(s) could not be read and were skipped; "
            f"the other {len(written)} prediction(s) are in {output / 'predictions.jsonl'} and the skipped "
            f"records are listed in {output / SKIPPED_FILE}:\n{listed}{more}"
        )


def _predict_record(
    record: dict[str, Any],
    model: Any,
    processor: Any,
    no_gradients: Any,
    text_options: dict[str, Any],
    output: Path,
    args: argparse.Namespace,
) -> dict[str, Any] | str:
    """The predictions.jsonl line of one record (masks and overlay written), or why its input is unusable."""
    where = f"record {record['id']} ({record['image']})"
    if "error" in record:
        return f"{where}: {record['error']}"
    image = record["image"]  # a path: the processor and the overlay both apply EXIF orientation
    try:
        inputs = processor(images=image, text=record["narrative"], phrases=record["phrases"], **text_options)
    except (OSError, ValueError) as error:  # an unreadable image, a phrase not in the narrative...
        return f"{where}: {error}"
    with no_gradients():
        outputs = model(**inputs.to(args.device))
    result = processor.post_process_panoptic_narrative_grounding(
        outputs,
        threshold=args.threshold,
        inputs=inputs,
        return_rle=args.format == "rle",
        mask_decision=args.mask_decision,
    )[0]
    masks: list[Any]
    if args.format == "png":
        folder = output / "masks" / record["id"]
        folder.mkdir(parents=True, exist_ok=True)
        masks = []
        for index, plane in enumerate(result["masks"]):
            name = f"{index}.png"
            PIL.Image.fromarray(plane.numpy().astype(np.uint8) * 255).save(folder / name)
            masks.append(f"masks/{record['id']}/{name}")
    else:
        masks = result["masks"]
    if not args.no_overlay:
        from ..visualization import draw_grounding

        (output / "overlays").mkdir(exist_ok=True)
        draw_grounding(image, result, record["narrative"]).save(output / "overlays" / f"{record['id']}.png")
    return {
        "id": record["id"],
        "image": str(record["image"]),
        "narrative": record["narrative"],
        "phrases": result["phrases"],
        "spans": [list(span) for span in result["spans"]],
        # NaN (a phrase lost to truncation) is not JSON: null
        "scores": [None if math.isnan(score) else round(score, 6) for score in result["scores"].tolist()],
        "masks": masks,
    }


__all__ = ["RecordsSkippedError", "iter_records", "register", "run"]

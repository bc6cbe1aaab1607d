"""Convert model variants of the former single-file format into Hub repository folders under hub_configs/.

The former format is one JSON file per variant: {"config": PngConfig keyword arguments, "tokenizer": a Hub
id (e.g. "bert-base-uncased") or a tokenizer folder next to the file, "image_size": the square input size,
"_description": one paragraph for the model card}, optionally "_expected_results" and "_training"
(Markdown for the card; by default the head paper's published results and the training command for the
official data). Each file becomes hub_configs/<file stem>/ with config.json, the processor's configuration,
the tokenizer files when the tokenizer is a local folder, and a README.md model card, all written with
`save_pretrained` (see `narrative_grounding.hub_folders.convert_legacy_variant`). Review the card, then
delete the JSON file.

    python scripts/convert_legacy_variant.py path/to/epng-r101-bert-base-released.json [...] [--overwrite]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from narrative_grounding.hub_folders import convert_legacy_variant

HUB_CONFIGS_DIR = Path(__file__).resolve().parents[1] / "hub_configs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant_files", nargs="+", type=Path, help="variant JSON files of the former format")
    parser.add_argument("--output-dir", type=Path, default=HUB_CONFIGS_DIR, help="default: %(default)s")
    parser.add_argument("--overwrite", action="store_true", help="replace existing variant folders")
    args = parser.parse_args(argv)
    for path in args.variant_files:
        folder = convert_legacy_variant(path, args.output_dir, overwrite=args.overwrite)
        print(f"{path} -> {folder}: {', '.join(sorted(item.name for item in folder.iterdir()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

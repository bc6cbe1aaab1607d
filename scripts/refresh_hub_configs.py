"""Re-write every variant folder of hub_configs/ with the installed package's `save_pretrained`.

Run it after adding a configuration or processor field: the folders must be exactly what `save_pretrained`
writes (tests/test_hub_configs.py checks it). Model cards and the shipped tokenizer files are kept as they
are.

    python scripts/refresh_hub_configs.py [NAME ...]
"""

from __future__ import annotations

import argparse

from narrative_grounding.factory import available_variants, variant_path
from narrative_grounding.hub_folders import refresh_variant_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="variants to refresh (default: all)")
    args = parser.parse_args(argv)
    for name in args.names or available_variants():
        print(f"refreshed {refresh_variant_folder(variant_path(name))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`narrative-grounding variants` (list the named variants) and `narrative-grounding publish` (push one as a
Hub model repository: config, processor, model card and the modules for `trust_remote_code`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `variants` and `publish` to the `narrative-grounding` parser."""
    listing = subparsers.add_parser(
        "variants", help="list the named model variants and where their folders are"
    )
    listing.set_defaults(func=list_variants)

    publish = subparsers.add_parser(
        "publish",
        help="publish a variant as a Hub model repository (config, processor, card, remote code; no weights)",
    )
    publish.add_argument(
        "variant", help="a variant name (see `narrative-grounding variants`) or a variant folder"
    )
    publish.add_argument("--repo_id", required=True, help="namespace/name (or name) of the repository")
    publish.add_argument("--private", action="store_true", help="create the repository private")
    publish.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN)")
    publish.add_argument("--commit_message", default=None)
    publish.set_defaults(func=publish_command)


def list_variants(args: argparse.Namespace) -> int:
    from ..factory import HUB_CONFIGS_DIR, available_variants, load_config

    names = available_variants()
    if not names:
        print(f"no variants found in {HUB_CONFIGS_DIR}")
        return 1
    width = max(len(name) for name in names)
    for name in names:
        print(f"{name:<{width}}  head={load_config(name).grounding_head}  {HUB_CONFIGS_DIR / name}")
    return 0


def publish_command(args: argparse.Namespace) -> int:
    from ..hub_folders import publish_variant

    url = publish_variant(
        args.variant, args.repo_id, token=args.token, private=args.private, commit_message=args.commit_message
    )
    print(f"published {args.variant} to {args.repo_id}: {url}")
    return 0

"""`mgie-batch convert`: the official MGIE release layout -> one mgie-batch checkpoint directory."""

from __future__ import annotations

import argparse

from jobs.arguments import add_reach_flag, reach_from_args

DESCRIPTION = "Convert the official MGIE weights (LLaVA-7B-v1 + mgie_7b/*.pt + CLIP + InstructPix2Pix) to our format."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--llava", required=True, help="merged LLaVA-7B-v1 HF directory (pytorch_model-*.bin + tokenizer)"
    )
    parser.add_argument("--mgie", required=True, help="directory holding mllm.pt and unet.pt (the release's mgie_7b/)")
    parser.add_argument(
        "--clip", required=True, help="CLIP ViT-L/14 HF directory (openai/clip-vit-large-patch14 layout)"
    )
    parser.add_argument("--ip2p", required=True, help="InstructPix2Pix diffusers directory (vae/, scheduler/)")
    parser.add_argument("--output", required=True, help="target directory: local path, file://, s3://... (fsspec)")
    parser.add_argument("--preset", default="mgie-7b", help="model sizes the weights must fit (default: mgie-7b)")
    parser.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "bfloat16", "float32"],
        help="precision of the saved weights (default: float16, as released)",
    )
    parser.add_argument(
        "--licence",
        default="CC-BY-NC-4.0",
        help="the weights' licence as an SPDX id, recorded in the checkpoint and in every run's "
        "run record; an -NC licence is announced when a job starts (default: CC-BY-NC-4.0, "
        "the official MGIE release's)",
    )
    add_reach_flag(parser)


def run(args: argparse.Namespace) -> int:
    from mgie.checkpoint import licence_record
    from mgie.convert import OfficialLayout, convert_official
    from mgie.devices import resolve_dtype

    options = reach_from_args(args).at(args.output).options
    layout = OfficialLayout(args.llava, args.mgie, args.clip, args.ip2p)
    fingerprint = convert_official(
        layout,
        args.output,
        preset_name=args.preset,
        dtype=resolve_dtype(args.dtype),
        storage_options=options,
        licence=licence_record(args.licence),
    )
    print(f"wrote {args.output} (fingerprint {fingerprint[:16]}, licence {args.licence})")
    return 0

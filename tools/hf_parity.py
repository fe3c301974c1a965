#!/usr/bin/env python3
"""Check edgevla's exported backbone against HuggingFace transformers' LlamaModel.

Usage: python3 tools/hf_parity.py DIR [DIR ...]

Each DIR is written by `edgevla export ... --parity-tokens N --out DIR` and holds
model.safetensors + config.json (HuggingFace Llama names) and parity.safetensors
(inputs_embeds, position_ids and edgevla's hidden states for them). This script loads the
weights into `transformers.LlamaModel` (strict: every tensor must match a parameter), runs the
same inputs_embeds/position_ids in float32 with the eager and the sdpa attention, and prints
the max relative error max|hf - edgevla| / max|hf| per folder. Exits 1 if any exceeds --tol.
"""
import argparse
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaModel


def check(folder: str, tol: float) -> bool:
    config = LlamaConfig.from_pretrained(folder)
    weights = load_file(f"{folder}/model.safetensors")
    state = {k.removeprefix("model."): v for k, v in weights.items()}
    sample = load_file(f"{folder}/parity.safetensors")
    ok = True
    for attn in ("eager", "sdpa"):
        config._attn_implementation = attn
        model = LlamaModel(config).float().eval()
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if "rotary_emb" not in m]
        if missing or unexpected:
            print(f"{folder}: missing {missing}, unexpected {unexpected}")
            return False
        with torch.no_grad():
            out = model(
                inputs_embeds=sample["inputs_embeds"],
                position_ids=sample["position_ids"],
            ).last_hidden_state
        ref = sample["hidden_states"]
        rel = ((out - ref).abs().max() / out.abs().max()).item()
        rope = json.load(open(f"{folder}/config.json")).get("rope_parameters", {})
        print(
            f"{folder}: rope_type {rope.get('rope_type')}, attn {attn}, tokens {ref.shape[1]}: "
            f"max relative error {rel:.3e}"
        )
        ok &= rel <= tol
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    results = [check(f, args.tol) for f in args.folders]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

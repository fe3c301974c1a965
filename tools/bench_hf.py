#!/usr/bin/env python3
"""Time edgevla's control step in HuggingFace transformers (the tool users would otherwise pick).

Usage:
  edgevla export --model edge --rope yarn-16x --out out/hf-bench --parity-tokens 512
  python3 tools/bench_hf.py out/hf-bench --threads 2 --csv out/step-hf-cpu.csv \\
      --edgevla-csv out/step-cpu.csv

DIR is written by `edgevla export ... --parity-tokens N` (model.safetensors + config.json with
HuggingFace Llama names, and parity.safetensors: inputs_embeds, position_ids and edgevla's
backbone output for them). The weights load into `transformers.LlamaModel`
(attn_implementation="sdpa", strict). Before timing, the step is checked against edgevla: the
cache is pre-filled with the first N - S parity tokens, the last S tokens (S = one step) are
appended through the cache, and their hidden states must equal edgevla's within --tol
(max |hf - edgevla| / max |hf|).

The step: S = n_cameras * patches_per_camera + 1 (proprio) + n_readout = 3 * 16 + 1 + 4 = 53
tokens (edge config) appended to a DynamicCache holding sinks + F * 49 tokens (the same counts as
`edgevla bench step`: 38 sinks for its instruction), then the cache is cropped back, so every
timed step sees the same length. Median and p99 over --iters after --warmup, per F. With
--edgevla-csv (edgevla bench step --csv) the token counts are taken from it and a table of
edgevla / transformers per dtype and F is printed, measured in the same run when both CSVs come
from back-to-back runs.
"""
import argparse
import csv
import statistics
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import DynamicCache, LlamaConfig, LlamaModel

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load(folder: str, dtype: torch.dtype, device: str) -> LlamaModel:
    config = LlamaConfig.from_pretrained(folder)
    config._attn_implementation = "sdpa"
    model = LlamaModel(config)
    weights = load_file(f"{folder}/model.safetensors")
    state = {k.removeprefix("model."): v for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m]
    if missing or unexpected:
        sys.exit(f"{folder}: missing {missing}, unexpected {unexpected}")
    return model.to(device=device, dtype=dtype).eval()


def step(model, embeds, cache, start):
    """Appends embeds [1, S, d] at positions start.. through the cache; returns hidden states."""
    n = embeds.shape[1]
    positions = torch.arange(start, start + n, device=embeds.device)
    return model(
        inputs_embeds=embeds,
        past_key_values=cache,
        position_ids=positions.unsqueeze(0),
        cache_position=positions,
        use_cache=True,
    ).last_hidden_state


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check(model, folder: str, step_tokens: int, tol: float, device: str, dtype) -> float:
    sample = load_file(f"{folder}/parity.safetensors")
    x = sample["inputs_embeds"].to(device=device, dtype=dtype)
    ref = sample["hidden_states"].to(device=device, dtype=torch.float32)
    n = x.shape[1]
    if n <= step_tokens:
        sys.exit(f"{folder}: parity sample has {n} tokens; export with --parity-tokens > {step_tokens}")
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        step(model, x[:, : n - step_tokens], cache, 0)
        out = step(model, x[:, n - step_tokens :], cache, n - step_tokens).float()
    want = ref[:, n - step_tokens :]
    rel = ((out - want).abs().max() / out.abs().max()).item()
    print(
        f"check: prefill {n - step_tokens} tokens + step {step_tokens} through the cache vs "
        f"edgevla's backbone: max relative error {rel:.2e} (tol {tol:.0e})"
    )
    if not rel <= tol:
        sys.exit("outputs differ from edgevla's: not timing")
    return rel


def percentile(samples, q):
    s = sorted(samples)
    rank = max(1, min(len(s), int(-(-q * len(s) // 1))))
    return s[rank - 1]


def time_step(model, cached: int, step_tokens: int, iters: int, warmup: int, device, dtype):
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        # Pre-fill in chunks (full attention over 25k tokens at once would need ~20 GB).
        chunk = 2048
        for start in range(0, cached, chunk):
            n = min(chunk, cached - start)
            x = torch.randn(1, n, d, generator=gen).to(device=device, dtype=dtype)
            step(model, x, cache, start)
        x = torch.randn(1, step_tokens, d, generator=gen).to(device=device, dtype=dtype)
        samples = []
        for i in range(warmup + iters):
            sync(device)
            t0 = time.perf_counter()
            out = step(model, x, cache, cached)
            sync(device)
            elapsed = (time.perf_counter() - t0) * 1e3
            # transformers 5.x crops by a negative count of tokens to remove (4.x: to a length).
            extra = cache.get_seq_length() - cached
            try:
                cache.crop(-extra)
            except ValueError:
                cache.crop(cached)
            del out
            if i >= warmup:
                samples.append(elapsed)
    return statistics.median(samples), percentile(samples, 0.99), statistics.fmean(samples)


def read_edgevla(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--frames", default="16,64,128,256,512")
    parser.add_argument("--sinks", type=int, default=38, help="instruction tokens (edgevla bench: 38)")
    parser.add_argument("--tokens-per-step", type=int, default=49, help="cached tokens per frame-step")
    parser.add_argument("--step-tokens", type=int, default=53, help="tokens appended per step")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--csv")
    parser.add_argument("--edgevla-csv", help="edgevla bench step --csv output: same token counts, ratio table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    import transformers

    print(
        f"transformers {transformers.__version__}, torch {torch.__version__}, device {args.device}, "
        f"dtype {args.dtype}, threads {torch.get_num_threads()}, attn sdpa"
    )
    model = load(args.folder, dtype, args.device)
    tol = args.tol if dtype == torch.float32 else max(args.tol, 2e-2)
    check(model, args.folder, args.step_tokens, tol, args.device, dtype)

    edgevla = read_edgevla(args.edgevla_csv) if args.edgevla_csv else []
    if edgevla:
        counts = sorted({(int(r["frames"]), int(r["cached_tokens"]), int(r["step_tokens"])) for r in edgevla})
    else:
        counts = [
            (f, args.sinks + f * args.tokens_per_step, args.step_tokens)
            for f in (int(v) for v in args.frames.split(","))
        ]
    rows = []
    print(f"{'frames':>6} {'cached':>7} {'median_ms':>10} {'p99_ms':>10}")
    for frames, cached, step_tokens in counts:
        median, p99, mean = time_step(model, cached, step_tokens, args.iters, args.warmup, args.device, dtype)
        rows.append(dict(frames=frames, cached=cached, step_tokens=step_tokens, median=median, p99=p99, mean=mean))
        print(f"{frames:>6} {cached:>7} {median:>10.3f} {p99:>10.3f}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["impl", "device", "threads", "dtype", "frames", "cached_tokens", "step_tokens",
                        "median_ms", "p99_ms", "mean_ms"])
            for r in rows:
                w.writerow(["transformers", args.device, torch.get_num_threads(), args.dtype, r["frames"],
                            r["cached"], r["step_tokens"], f"{r['median']:.4f}", f"{r['p99']:.4f}",
                            f"{r['mean']:.4f}"])
        print(f"wrote {args.csv}")
    if edgevla:
        hf = {r["frames"]: r for r in rows}
        dtypes = sorted({r["dtype"] for r in edgevla}, key=["f32", "f16", "bf16", "int8", "fp8"].index)
        print("\nedgevla / transformers step latency (median; p99 in brackets); < 1 = edgevla faster")
        print(f"{'frames':>6} {'hf_ms':>9} " + " ".join(f"{'edgevla ' + d:>22}" for d in dtypes))
        for frames in sorted(hf):
            h = hf[frames]
            cells = []
            for d in dtypes:
                r = next((r for r in edgevla if int(r["frames"]) == frames and r["dtype"] == d), None)
                if r is None:
                    cells.append(f"{'-':>22}")
                    continue
                m, p = float(r["median_ms"]), float(r["p99_ms"])
                cells.append(f"{m:>8.2f} ms {m / h['median']:.2f}x [{p / h['p99']:.2f}x]")
            print(f"{frames:>6} {h['median']:>9.2f} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality benchmark: FP vs RTN vs AWQ perplexity of a real model, plus quantization time and peak memory.

    python tools/bench_quality.py --model smollm2-135m --group-size 64 --out out/bench-smollm2
    python tools/bench_quality.py --model qwen2.5-coder-1.5b --group-size 128 --max-blocks 32 --out out/bench-qwen
    python tools/bench_quality.py ... --awq-args "--duo-scaling --clip attention"   # search options
    python tools/bench_quality.py ... --device cuda --variant duo-gptq="--duo-scaling --rounding gptq" \\
        --variant default="" --report-windows 8                                      # several AWQ runs

Each step runs as its own ``edge-awq`` process so peak memory is per step. Every model is evaluated
once over ``--max-windows`` windows (all when unset); ``--report-windows N`` also reports the first
N windows of the same pass. Results go to OUT/results.json and one markdown row per AWQ variant and
window count is printed last. Resumable: a step whose output exists is reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def prefix_ppl(row: dict, windows: int) -> float:
    """Perplexity over the first ``windows`` windows of an eval row (its per-window NLL sums)."""
    from edge_awq.eval import window_perplexity
    return window_perplexity(row["window_nll"][:windows], row["seqlen"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="bundled model name or HF folder")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--calib", default="bbc-news")
    ap.add_argument("--max-blocks", type=int, default=None)
    ap.add_argument("--text", default="bbc-tech")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--report-windows", type=int, action="append", default=[],
                    help="also report perplexity over the first N windows (repeatable)")
    ap.add_argument("--device", default="cpu", help="for quantize and eval: cpu or cuda")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--awq-args", default="", help="extra edge-awq quantize options for the AWQ run, one string")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="an AWQ run named NAME with quantize options ARGS (repeatable; replaces --awq-args)")
    a = ap.parse_args()
    exe = [sys.executable, "-m", "edge_awq"]
    model = Path(a.model)
    if not model.is_dir():
        from edge_awq.assets import ensure_model
        model = ensure_model(a.model)
    a.out.mkdir(parents=True, exist_ok=True)
    q = ["--group-size", str(a.group_size), "--device", a.device]
    # (name, folder, options); the unnamed run keeps the folder name of earlier results
    variants = [(name, a.out / f"awq-{name}-g{a.group_size}", args)
                for name, _, args in (v.partition("=") for v in a.variant)]
    if not variants:
        variants = [("awq", a.out / f"awq-g{a.group_size}", a.awq_args)]
    rtn = a.out / f"rtn-g{a.group_size}"
    run(exe + ["quantize", str(model), str(rtn), "--method", "rtn"] + q)
    for _, folder, args in variants:
        run(exe + ["quantize", str(model), str(folder), "--calib", a.calib] + q
            + ([] if a.max_blocks is None else ["--max-blocks", str(a.max_blocks)]) + args.split())
    evals = {}
    for label, folder in [("fp", model), ("rtn", rtn)] + [(name, folder) for name, folder, _ in variants]:
        path = a.out / f"eval-{label}.json"
        if not path.exists():
            cmd = exe + ["eval", str(folder), "--text", a.text, "--seqlen", str(a.seqlen), "--device", a.device,
                         "--json"]
            if a.max_windows:
                cmd += ["--max-windows", str(a.max_windows)]
            print("$", " ".join(cmd), flush=True)
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            path.write_text(out)
        evals[label] = json.loads(path.read_text())[0]
    fp, r = evals["fp"], evals["rtn"]
    rrep = json.loads((rtn / "quant_report.json").read_text())
    windows = sorted({*a.report_windows, fp["windows"]})
    results, rows = [], []
    for name, folder, args in variants:
        rep = json.loads((folder / "quant_report.json").read_text())
        w = evals[name]
        for n in windows:
            ppl = [prefix_ppl(e, n) for e in (fp, r, w)]
            closed = (ppl[1] - ppl[2]) / (ppl[1] - ppl[0])
            results.append({
                "model": a.model, "variant": name, "awq_args": args, "group_size": a.group_size, "calib": a.calib,
                "calib_blocks": rep["calibration_blocks"], "awq_options": rep["options"], "device": a.device,
                "text": a.text, "windows": n, "seqlen": a.seqlen,
                "ppl_fp": ppl[0], "ppl_rtn": ppl[1], "ppl_awq": ppl[2], "gap_closed": closed,
                "awq_seconds": rep["seconds"], "awq_peak_rss_bytes": rep["peak_rss_bytes"],
                "awq_peak_device_bytes": rep.get("peak_device_bytes"),
                "rtn_seconds": rrep["seconds"], "rtn_peak_rss_bytes": rrep["peak_rss_bytes"],
                "eval_peak_rss_bytes": [e["peak_rss_bytes"] for e in (fp, r, w)]})
            rows.append(f"| {a.model} {name} `{args}` | g{a.group_size} | {rep['calibration_blocks'][0]}×"
                        f"{rep['calibration_blocks'][1]} {a.calib} | {n}×{a.seqlen} {a.text} | {ppl[0]:.3f} "
                        f"| {ppl[1]:.3f} | {ppl[2]:.3f} | {100 * closed:.0f} % | {rep['seconds']:.0f} s ({a.device}) "
                        f"| {rep['peak_rss_bytes'] / 2**30:.2f} GiB |")
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n".join(rows))


if __name__ == "__main__":
    main()

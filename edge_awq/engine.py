"""The runtime: a loaded model, its preallocated KV cache, prefill and decode, sampling on the device.

Prefill runs the shared model definition (``model.py``) over the new tokens. Decode on a CUDA GPU
with Triton is one token through fused kernels — per layer: add+RMSNorm, the fused q/k/v linear,
RoPE + KV write, flash-decoding attention, o, add+RMSNorm, gate/up, down (silu·mul fused into
its input) — launched as programmatic dependents of each other on sm_90, captured
once in a CUDA graph and replayed at every position: the token, position and length live in
device buffers, and every quantized linear adds its K-splits into its own slot of one fp32 arena
that the graph zeroes first. Elsewhere (CPU, or CUDA without Triton) decode runs the same model
code eagerly. The residual stream stays in fp32 on the fast path.

The engine keeps the token ids its cache holds (``ids``), so a chat can keep the cache of earlier
turns and prefill only what is new (``truncate`` + ``prefill``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edge_awq.kernels.dispatch import select_backend
from edge_awq.kernels.quant_linear import QuantLinear

from .errors import EdgeAwqError
from .generate import SamplingParams, next_token
from .loader import LoadedModel
from .model import KVCache
from .stream import StreamedBlock

log = logging.getLogger(__name__)

ATTENTION_SPLITS = 16  # flash-decoding splits of the sequence (a power of two)
SHORT_CONTEXT = 512  # up to this many cached tokens, 32-key attention steps; beyond, 64 (a second graph)


@dataclass(frozen=True)
class StepTimes:
    """What the last ``generate`` call did."""

    prefill_tokens: int
    prefill_seconds: float
    decode_tokens: int
    decode_seconds: float


class Engine:
    def __init__(self, loaded: LoadedModel, max_context: int, dtype: torch.dtype, cuda_graphs: bool = True):
        self.loaded, self.model, self.cfg = loaded, loaded.model, loaded.cfg
        self.device = loaded.model.inv_freq.device
        self.dtype = dtype
        limit = self.cfg.max_position_embeddings
        if max_context > limit:
            log.warning("context %d is more than the model's %d positions; using %d", max_context, limit, limit)
            max_context = limit
        self.cache = KVCache.allocate(self.cfg, max_context, dtype, self.device)
        self.ids: list[int] = []  # the tokens whose keys and values the cache holds, in order
        self.last = StepTimes(0, 0.0, 0, 0.0)
        backend, _ = select_backend(self.device, loaded.settings)
        self.fast = self.device.type == "cuda" and (backend == "triton" or loaded.qcfg is None) and _has_triton()
        # A streamed decode step is a graph only when its copies are stream-ordered (pinned host
        # memory); a reader thread feeding the slots cannot be captured.
        self.use_graph = self.fast and cuda_graphs and (loaded.ring is None or loaded.ring.streamer.capturable)
        self.pdl = loaded.settings.pdl
        self._graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}  # by (attention keys per step, greedy advance)
        if self.fast:
            self._allocate_step_buffers()

    @property
    def max_context(self) -> int:
        return self.cache.max_len

    @property
    def length(self) -> int:
        return self.cache.length

    def kv_bytes(self) -> int:
        return self.cache.nbytes()

    def reset(self) -> None:
        self.truncate(0)

    def truncate(self, n: int) -> None:
        """Forget every cached token from position ``n`` on (their keys and values are overwritten later)."""
        n = min(n, self.cache.length)
        self.cache.length = n
        del self.ids[n:]

    # ------------------------------------------------------------------ forward passes

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Append ``ids`` to the cache; the logits (vocab,) fp32 after the last of them."""
        if not ids:
            raise EdgeAwqError("nothing to prefill")
        self._check_ids(ids)
        if self.cache.length + len(ids) > self.cache.max_len:
            raise EdgeAwqError(f"context full: {self.cache.length} + {len(ids)} tokens exceed the KV cache of "
                               f"{self.cache.max_len}")
        if len(ids) == 1 and self.fast:
            return self.decode(ids[0])
        return self._eager(ids)

    def decode(self, token: int) -> torch.Tensor:
        """Feed one token; the logits (vocab,) fp32 for the next."""
        if self.cache.length + 1 > self.cache.max_len:
            raise EdgeAwqError(f"context full: the KV cache holds {self.cache.max_len} tokens")
        self._check_ids([token])
        if not self.fast:
            return self._eager([token])
        pos = self.cache.length
        self._set_state(token, pos)
        if self.use_graph:
            self._graph(pos, advance=False).replay()
        else:
            with torch.inference_mode():
                self._step(_attention_block(pos))
        self.cache.length = pos + 1
        self.ids.append(token)
        return self._logits[0]

    def _check_ids(self, ids: list[int]) -> None:
        bad = next((t for t in ids if not 0 <= t < self.cfg.vocab_size), None)
        if bad is not None:  # on the GPU an out-of-range id is a device-side assert that ends the process
            raise EdgeAwqError(f"token id {bad} is outside the model's vocabulary of {self.cfg.vocab_size} "
                               f"(does the tokenizer belong to this model?)")

    def _set_state(self, token: int, pos: int) -> None:
        """The token the next step feeds and its position, into the device state the graphs read."""
        self._host_state.copy_(torch.tensor([token, pos], dtype=torch.int64))
        self._state.copy_(self._host_state, non_blocking=True)

    def _eager(self, ids: list[int]) -> torch.Tensor:
        """The shared model code over ``ids`` (prefill, or decode where there is no fast path)."""
        tokens = torch.tensor([ids], dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            logits = self.model(tokens, self.dtype, cache=self.cache, last_only=True)[0, -1]
        self.ids.extend(ids)
        return logits

    def generate(self, new_ids: list[int], params: SamplingParams, eos: set[int],
                 generator: torch.Generator | None = None) -> Iterator[int]:
        """Prefill ``new_ids`` after what the cache holds, then yield sampled tokens until EOS (not
        yielded), ``params.max_new_tokens`` or a full context. The last yielded token is not yet in
        the cache (the next prefill feeds it)."""
        t0 = time.perf_counter()
        logits = self.prefill(new_ids)
        history = torch.tensor(self.ids, dtype=torch.int64, device=self.device)
        tok = next_token(logits, history, params, generator)
        t1 = time.perf_counter()
        self.last = StepTimes(len(new_ids), t1 - t0, 0, 0.0)
        if self.use_graph and params.temperature == 0 and params.repetition_penalty == 1.0:
            yield from self._greedy_pipelined(tok, len(new_ids), t0, t1, params, eos)
            return
        n = 0
        while True:
            if tok in eos:
                break
            yield tok
            n += 1
            if n >= params.max_new_tokens or self.cache.length >= self.cache.max_len:
                break
            logits = self.decode(tok)
            if params.repetition_penalty != 1.0:
                history = torch.cat([history, torch.tensor([tok], device=self.device)])
            tok = next_token(logits, history, params, generator)
            self.last = StepTimes(len(new_ids), t1 - t0, n, time.perf_counter() - t1)

    def _greedy_pipelined(self, tok: int, n_prompt: int, t0: float, t1: float, params: SamplingParams,
                          eos: set[int]) -> Iterator[int]:
        """Greedy decoding with the argmax inside the captured step, which also feeds the chosen
        token and advances the position on the device: the host launches step n + 1 before it
        reads step n's token, so the GPU never waits for the Python loop. Stopping (EOS, the
        limit, a full cache) leaves at most one extra step computed past the cache's length,
        which counts for nothing (as with ``truncate``). Same tokens as ``next_token``'s argmax."""
        n = 0
        pos = self.cache.length  # where ``tok`` is fed
        if tok in eos:
            return
        yield tok
        n += 1
        if n >= params.max_new_tokens or pos >= self.cache.max_len:
            return
        self._set_state(tok, pos)
        fed = tok  # what the step at ``pos`` feeds

        def launch(p: int) -> None:
            self._graph(p, advance=True).replay()
            slot = p % 2
            self._host_tokens[slot].copy_(self._state[0], non_blocking=True)
            self._token_ready[slot].record()

        launch(pos)
        while True:
            # the step after this one, on the guess that this one's token is neither EOS nor the last
            ahead = n + 1 < params.max_new_tokens and pos + 1 < self.cache.max_len
            if ahead:
                launch(pos + 1)
            self._token_ready[pos % 2].synchronize()
            tok = int(self._host_tokens[pos % 2])
            self.cache.length = pos + 1
            self.ids.append(fed)
            fed = tok
            self.last = StepTimes(n_prompt, t1 - t0, n, time.perf_counter() - t1)
            if tok in eos:
                return
            yield tok
            n += 1
            if not ahead:
                return
            pos += 1

    # ------------------------------------------------------------------ the fused decode step

    def _allocate_step_buffers(self) -> None:
        cfg, dev, dt = self.cfg, self.device, self.dtype
        h, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self._host_state = torch.zeros(2, dtype=torch.int64, pin_memory=True)
        # greedy tokens read back from the device, by the parity of their step
        self._host_tokens = torch.zeros(2, dtype=torch.int64, pin_memory=True)
        self._token_ready = [torch.cuda.Event(), torch.cuda.Event()] if self.use_graph else []
        self._state = torch.zeros(2, dtype=torch.int64, device=dev)  # token, position
        self._residual = torch.zeros(1, h, dtype=torch.float32, device=dev)
        self._normed = torch.zeros(1, h, dtype=dt, device=dev)
        self._attn = torch.zeros(1, q, dtype=dt, device=dev)
        self._act = torch.zeros(1, cfg.intermediate_size, dtype=dt, device=dev)
        self._logits = torch.zeros(1, cfg.vocab_size, dtype=torch.float32, device=dev)
        self._partial = torch.zeros(cfg.num_heads, ATTENTION_SPLITS, cfg.head_dim, dtype=torch.float32, device=dev)
        self._ml = torch.zeros(cfg.num_heads, ATTENTION_SPLITS, 2, dtype=torch.float32, device=dev)
        self._arrivals = torch.zeros(cfg.num_kv_heads, dtype=torch.int32, device=dev)
        # one fp32 slot per quantized linear of every layer: the decode kernels add into it
        widths = [q + 2 * kv, h, 2 * cfg.intermediate_size, h]
        self._arena = torch.zeros(cfg.num_layers * sum(widths), dtype=torch.float32, device=dev)
        self._slots, off = [], 0
        for _ in range(cfg.num_layers):
            row = []
            for w in widths:
                row.append(self._arena[off:off + w].view(1, w))
                off += w
            self._slots.append(row)

    def _linear(self, mod, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        if isinstance(mod, QuantLinear):
            return mod(x, accumulate_into=slot)
        return mod(x)

    def _step(self, block_t: int, advance: bool = False) -> None:
        """One token through the model (state: token and position, on the device); ``advance``:
        then the greedy next token and position replace them, for the next step to read."""
        from edge_awq.kernels import triton_ops as ops

        cfg, m = self.cfg, self.model
        eps, scale = cfg.rms_norm_eps, cfg.head_dim ** -0.5
        tok, pos = self._state[0:1], self._state[1:2]
        self._arena.zero_()
        self._residual.copy_(F.embedding(tok, m.model.embed_tokens.weight))
        prev = None
        for i, layer in enumerate(m.model.layers):
            streamed = isinstance(layer, StreamedBlock)
            blk = layer.acquire() if streamed else layer  # waits (on the GPU) for its weights to land
            slots = self._slots[i]
            ops.add_rms_norm(self._residual if prev is None else prev, blk.input_layernorm.weight, eps, self._normed,
                             None if prev is None else self._residual, pdl=self.pdl)
            a = blk.self_attn
            qkv = self._linear(a.qkv_proj, self._normed, slots[0])
            ops.decode_attention(qkv, m.inv_freq, pos, self.cache.k[i], self.cache.v[i], self._attn.view(-1),
                                 self._partial, self._ml, self._arrivals, scale, block_t, pdl=self.pdl)
            o = self._linear(a.o_proj, self._attn, slots[1])
            ops.add_rms_norm(o, blk.post_attention_layernorm.weight, eps, self._normed, self._residual, pdl=self.pdl)
            gu = self._linear(blk.mlp.gate_up_proj, self._normed, slots[2])
            if isinstance(blk.mlp.down_proj, QuantLinear):  # silu(gate)·up as the down kernel loads it
                prev = blk.mlp.down_proj(gu, accumulate_into=slots[3], gated=True)
            else:
                prev = blk.mlp.down_proj(ops.silu_mul(gu, self._act, pdl=self.pdl))
            if streamed:
                layer.release()
        ops.add_rms_norm(prev, m.model.norm.weight, eps, self._normed, self._residual, pdl=self.pdl)
        self._logits.copy_(m.lm_head(self._normed))
        if advance:
            self._state[0:1].copy_(torch.argmax(self._logits, dim=-1))
            self._state[1:].add_(1)

    def _graph(self, pos: int, advance: bool) -> torch.cuda.CUDAGraph:
        """The captured step for a token at ``pos`` (its attention's keys per step, ``_attention_block``)."""
        key = (_attention_block(pos), advance)
        if key not in self._graphs:
            self._graphs[key] = self._capture(*key)
        return self._graphs[key]

    def _capture(self, block_t: int, advance: bool) -> torch.cuda.CUDAGraph:
        """Run the step once (compiling its kernels), then capture it in a CUDA graph. Capturing
        runs nothing; the replay that follows computes this position again (the warm-up run does
        not advance the state, so the replay reads the same one)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            self._step(block_t)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g), torch.inference_mode():
            self._step(block_t, advance)
        log.info("decode step captured in a CUDA graph (%d attention splits of %d-key steps%s)", ATTENTION_SPLITS,
                 block_t, ", greedy token fed back on the device" if advance else "")
        return g


def _attention_block(pos: int) -> int:
    """Keys per step of each of the ATTENTION_SPLITS splits for a token at ``pos``: short steps
    while the context is short, so that every split has work; longer ones beyond, so that each
    split loops less."""
    return 32 if pos + 1 <= SHORT_CONTEXT else 64


def _has_triton() -> bool:
    try:
        import edge_awq.kernels.triton_ops  # noqa: F401
    except Exception:  # Triton missing, or unable to find its compiler
        return False
    return True

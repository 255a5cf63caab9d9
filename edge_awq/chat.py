"""A chat over the engine: the tokenizer's chat template, streamed tokens, and a KV cache that
carries earlier turns, so a new turn prefills only what is new.

Each turn renders the whole conversation with the template and compares its token ids with the
ids the cache already holds: the common prefix is kept, the rest is prefilled. When the
conversation no longer fits the context, the oldest turns are dropped (the system prompt stays)
and the rest is prefilled again; the turn reports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .engine import Engine
from .errors import EdgeAwqError
from .generate import SamplingParams, TextStream


@dataclass(frozen=True)
class TurnStats:
    prompt_tokens: int  # the whole rendered conversation up to this answer
    prefill_tokens: int  # of which prefilled now (the rest was in the cache)
    new_tokens: int
    ttft_seconds: float  # turn start to first streamed token
    decode_tokens_per_s: float
    dropped_turns: int  # oldest turns dropped to fit the context
    stopped: str  # "eos", "length", "context", "stop string", "interrupted"


@dataclass
class ChatSession:
    engine: Engine
    tokenizer: object
    eos: set[int]
    params: SamplingParams
    system: str | None = None
    stop: tuple[str, ...] = ()
    turns: list[tuple[str, str]] = field(default_factory=list)  # (user, assistant)
    history: list[TurnStats] = field(default_factory=list)

    def __post_init__(self):
        if not getattr(self.tokenizer, "chat_template", None):
            raise EdgeAwqError("the tokenizer has no chat template: this model is not a chat model")
        self._generator = None
        if self.params.temperature > 0:
            self._generator = torch.Generator(device=self.engine.device)
            self._generator.manual_seed(self.params.seed if self.params.seed is not None else int(torch.seed()))

    def messages(self, user: str | None = None) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        for u, a in self.turns:
            out += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        if user is not None:
            out.append({"role": "user", "content": user})
        return out

    def render(self, user: str) -> list[int]:
        return list(self.tokenizer.apply_chat_template(self.messages(user), add_generation_prompt=True,
                                                       tokenize=True, return_dict=False))

    def reset(self, system: str | None = None) -> None:
        self.turns.clear()
        self.system = system if system is not None else self.system
        self.engine.reset()

    def ask(self, text: str, emit: Callable[[str], None], interrupted: Callable[[], bool] = lambda: False
            ) -> tuple[str, TurnStats]:
        """One user turn: the answer, streamed to ``emit`` as text, and its statistics. Ctrl-C
        (KeyboardInterrupt) while answering ends the answer where it is; the session goes on."""
        t0 = time.perf_counter()
        ids, dropped = self.render(text), 0
        room = self.engine.max_context - min(self.params.max_new_tokens, self.engine.max_context // 2)
        while len(ids) > room and self.turns:
            self.turns.pop(0)
            dropped += 1
            ids = self.render(text)
        if len(ids) >= self.engine.max_context:
            raise EdgeAwqError(f"the message is {len(ids)} tokens; the context holds {self.engine.max_context}")
        keep = _common_prefix(self.engine.ids, ids)
        keep = min(keep, len(ids) - 1)  # at least one token to prefill: its logits start the answer
        self.engine.truncate(keep)
        stream, pieces, n, t_first, stopped = TextStream(self.tokenizer), [], 0, None, "eos"
        gen = self.engine.generate(ids[keep:], self.params, self.eos, self._generator)
        try:
            for tok in gen:
                if t_first is None:
                    t_first = time.perf_counter()
                n += 1
                piece = stream.push(tok)
                pieces.append(piece)
                answer = "".join(pieces)
                hit = next((s for s in self.stop if s in answer), None)
                if hit is not None:
                    cut = answer.index(hit)
                    emit(piece[: max(0, len(piece) - (len(answer) - cut))])
                    pieces, stopped = [answer[:cut]], "stop string"
                    break
                emit(piece)
                if interrupted():
                    stopped = "interrupted"
                    break
            else:
                if n >= self.params.max_new_tokens:
                    stopped = "length"
                elif self.engine.length >= self.engine.max_context:
                    stopped = "context"
        except KeyboardInterrupt:
            stopped = "interrupted"
        finally:
            gen.close()
        t_end = time.perf_counter()
        answer = "".join(pieces)
        self.turns.append((text, answer))
        last = self.engine.last
        rate = last.decode_tokens / last.decode_seconds if last.decode_seconds > 0 else 0.0
        stats = TurnStats(len(ids), len(ids) - keep, n, (t_first or t_end) - t0, rate, dropped, stopped)
        self.history.append(stats)
        return answer, stats


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n

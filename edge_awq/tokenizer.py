"""The runtime's tokenizer: ``tokenizer.json`` through the ``tokenizers`` library and the chat
template through Jinja, without importing transformers (which takes seconds, a large share of a
Jetson's cold start). It renders templates as transformers does (a sandboxed environment with
trimmed blocks, loop controls, ``raise_exception`` and ``strftime_now``), and a test holds it to
transformers' output. Folders without a ``tokenizer.json`` go through transformers.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import EdgeAwqError


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class FastTokenizer:
    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg_path = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        self.special = {name: _token_text(cfg.get(name)) for name in ("bos_token", "eos_token", "unk_token",
                                                                       "pad_token")}
        eos = self.special["eos_token"]
        self.eos_token_id = self._tok.token_to_id(eos) if eos else None
        jinja = folder / "chat_template.jinja"
        template = jinja.read_text(encoding="utf-8") if jinja.exists() else cfg.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template = template
        self._compiled = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _template(self):
        if self._compiled is None:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise EdgeAwqError(f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._compiled = env.from_string(self.chat_template)
        return self._compiled

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = False,
                            tokenize: bool = True, return_dict: bool = False):
        if not self.chat_template:
            raise EdgeAwqError("the tokenizer has no chat template")
        text = self._template().render(messages=messages, add_generation_prompt=add_generation_prompt,
                                       **{k: v for k, v in self.special.items() if v is not None})
        return self.encode(text, add_special_tokens=False) if tokenize else text


def load_runtime_tokenizer(folder: Path):
    """``FastTokenizer`` where the folder has a ``tokenizer.json``, else transformers'."""
    if (Path(folder) / "tokenizer.json").exists():
        try:
            return FastTokenizer(folder)
        except Exception as e:  # a tokenizer.json the tokenizers library cannot read
            raise EdgeAwqError(f"{folder}/tokenizer.json: cannot load ({str(e).splitlines()[0]})") from None
    from .generate import load_tokenizer
    return load_tokenizer(folder)

"""The memory plan: what a model needs on a device, against the budget, before a byte is loaded.

Needs are counted from the manifest (weights as stored), the KV cache at the context asked for,
and the profile's runtime overhead (activations, scratch, CUDA graphs, allocator slack) plus the
loader's staging. The budget is ``--memory-budget`` when given, else the profile's (its memory
less what it reserves for the OS), else what the device reports (a desktop GPU's own memory, the
host's RAM for the CPU). When the model does not fit, the plan says so with what would.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EdgeAwqError
from .footprint import Footprint
from .memory import fmt_bytes
from .profiles import Profile


@dataclass(frozen=True)
class MemoryPlan:
    budget_bytes: int
    budget_source: str
    context: int
    weight_bytes: int
    kv_bytes: int
    overhead_bytes: int  # runtime overhead + loader staging

    @property
    def need_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.overhead_bytes

    def summary(self) -> str:
        return (f"memory plan: weights {fmt_bytes(self.weight_bytes)} + KV cache {fmt_bytes(self.kv_bytes)} "
                f"({self.context} tokens) + runtime {fmt_bytes(self.overhead_bytes)} = {fmt_bytes(self.need_bytes)} "
                f"of {fmt_bytes(self.budget_bytes)} ({self.budget_source})")


def parse_bytes(text: str) -> int:
    """'2GB', '1.5 GiB', '800MB', '123456789' → bytes (binary units, as the reports count)."""
    t = text.strip().upper().replace(" ", "").removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise EdgeAwqError(f"--memory-budget {text!r}: not a size (e.g. 2GB, 800MB)") from None
    if value <= 0:
        raise EdgeAwqError(f"--memory-budget {text!r}: must be more than zero")
    return int(value * scale)


def plan_memory(fp: Footprint, profile: Profile, context: int, device_bytes: int, device_source: str,
                budget_override: int | None = None, staging_bytes: int = 0) -> MemoryPlan:
    """Check that the whole model and a ``context``-token KV cache fit; raise with what would fit
    otherwise. ``device_bytes``: the memory the device reports (used when the profile gives none)."""
    if budget_override is not None:
        budget, source = budget_override, "--memory-budget"
    elif profile.budget_bytes is not None:
        budget, source = profile.budget_bytes, f"profile {profile.name}"
    else:
        budget = device_bytes - int(profile.reserved_gb * 2**30)
        source = f"{device_source}, less {profile.reserved_gb:g} GB reserved"
    per_token = fp.kv_bytes(1, profile.kv_bytes_per_value)
    plan = MemoryPlan(budget, source, context, fp.weight_bytes, per_token * context,
                      (profile.runtime_overhead_mb << 20) + staging_bytes)
    if plan.need_bytes <= budget:
        return plan
    room = budget - plan.weight_bytes - plan.overhead_bytes
    hint = (f"a context of at most {room // per_token} tokens fits (--context)" if room >= 64 * per_token
            else "the weights alone do not fit: a smaller model, or a device with more memory")
    raise EdgeAwqError(f"{fp.path} does not fit: needs {fmt_bytes(plan.need_bytes)} (weights "
                       f"{fmt_bytes(plan.weight_bytes)}, KV cache {fmt_bytes(plan.kv_bytes)} for {context} tokens, "
                       f"runtime {fmt_bytes(plan.overhead_bytes)}), budget {fmt_bytes(budget)} ({source}); {hint}")

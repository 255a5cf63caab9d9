"""Layer streaming: run a model whose weights do not fit the memory budget.

Decoder layers that do not fit stay in a *source* and pass, on every forward pass, through a
ring of a few buffers ("slots") on the device that computes:

- pinned host memory where host and device memory are separate (a desktop GPU): copies on a
  second CUDA stream, ordered by events, so the decode step with its copies is still one CUDA
  graph;
- a spill file in the runtime layout (the CPU, a Jetson, or ``--stream-from file``): a reader
  thread fills the slots, through pinned staging on a GPU, dropping the page cache behind it
  where host and device share DRAM.

Each streamed *unit* — a layer, or a chunk of the head's rows when even the head does not fit —
is one contiguous byte range in its source and in its slot (``FlatLayout``), so bringing it in is
one copy into buffers allocated once. Prefetch keeps the next units arriving while the current
one computes; without it each unit is read when it is needed.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ALIGN = 256  # bytes: every tensor of a flattened unit starts on this boundary


def align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


# ---------------------------------------------------------------- one module as one byte range


@dataclass(frozen=True)
class FlatTensor:
    name: str  # path in the module, e.g. "self_attn.qkv_proj.qweight_k"
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    is_param: bool

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class FlatLayout:
    tensors: tuple[FlatTensor, ...]
    nbytes: int


def _tensors(module: nn.Module):
    for name, p in module.named_parameters():
        yield name, p, True
    for name, b in module.named_buffers():
        yield name, b, False


def flat_layout(module: nn.Module) -> FlatLayout:
    """Where each of the module's tensors sits in one byte buffer, in registration order."""
    off, out = 0, []
    for name, t, is_param in _tensors(module):
        ft = FlatTensor(name, t.dtype, tuple(t.shape), off, is_param)
        out.append(ft)
        off = align(off + ft.nbytes)
    return FlatLayout(tuple(out), off)


def flat_view(flat: torch.Tensor, ft: FlatTensor) -> torch.Tensor:
    return flat[ft.offset:ft.offset + ft.nbytes].view(ft.dtype).view(ft.shape)


def flatten_into(module: nn.Module, layout: FlatLayout, flat: torch.Tensor) -> None:
    """Copy the module's tensors into ``flat`` (uint8, at least ``layout.nbytes``), any device."""
    named = {n: t for n, t, _ in _tensors(module)}
    for ft in layout.tensors:
        t = named[ft.name]
        if t.dtype != ft.dtype or tuple(t.shape) != ft.shape:
            raise ValueError(f"tensor '{ft.name}' is {t.dtype} {tuple(t.shape)}, the layout says {ft.dtype} {ft.shape}")
        flat_view(flat, ft).copy_(t)


def bind(module: nn.Module, layout: FlatLayout, flat: torch.Tensor) -> None:
    """Point every tensor of ``module`` at its place in ``flat``: no copy; whatever is written
    into ``flat`` is what the module computes with."""
    for ft in layout.tensors:
        owner_path, _, attr = ft.name.rpartition(".")
        owner = module.get_submodule(owner_path)
        view = flat_view(flat, ft)
        if ft.is_param:
            owner._parameters[attr] = nn.Parameter(view, requires_grad=False)
        else:
            owner._buffers[attr] = view


# ---------------------------------------------------------------- sources


class PinnedSource:
    """Units held in page-locked host memory (GPU with its own memory)."""

    kind = "pinned host memory"

    def __init__(self):
        self.units: list[torch.Tensor] = []

    def add(self, flat: torch.Tensor) -> int:
        buf = torch.empty(flat.numel(), dtype=torch.uint8, pin_memory=True)
        buf.copy_(flat)
        self.units.append(buf)
        return len(self.units) - 1

    def unit_bytes(self, u: int) -> int:
        return self.units[u].numel()

    def finish(self) -> None:
        pass

    def close(self) -> None:
        self.units = []


class FileSource:
    """Units in files: appended to one spill file in a fresh folder under ``parent`` (removed when
    the source is closed or collected) in the runtime layout, or byte ranges of files already on
    disk (a shard's head rows). A unit is read back with ``preadv`` straight into its slot (or
    pinned staging)."""

    kind = "file"

    def __init__(self, parent: Path | str | None = None, drop_cache: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="edge-awq-stream-", dir=parent))
        self.path = self.dir / "units.bin"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.fds = [self.fd]
        self.units: list[tuple[int, int, int]] = []  # (fd, offset, bytes)
        self.end = 0
        self.drop_cache = drop_cache
        self._finalizer = weakref.finalize(self, _remove_spill, self.fds, str(self.dir))

    def add(self, flat: torch.Tensor) -> int:
        data = memoryview(flat.detach().cpu().contiguous().view(torch.uint8).numpy())
        off = self.end
        written = 0
        while written < len(data):
            written += os.pwrite(self.fd, data[written:], off + written)
        self.units.append((self.fd, off, len(data)))
        self.end = align(off + len(data))
        return len(self.units) - 1

    def add_range(self, path: Path, offset: int, nbytes: int) -> int:
        """A unit that is bytes [offset, offset + nbytes) of an existing (verified) file."""
        fd = os.open(path, os.O_RDONLY)
        self.fds.append(fd)
        self.units.append((fd, offset, nbytes))
        return len(self.units) - 1

    def unit_bytes(self, u: int) -> int:
        return self.units[u][2]

    def finish(self) -> None:
        os.fsync(self.fd)
        if self.drop_cache:
            _drop(self.fd, 0, self.end)

    def read_into(self, u: int, view: memoryview, start: int = 0) -> None:
        """Bytes [start, start + len(view)) of unit u into ``view``."""
        fd, off, _ = self.units[u]
        off += start
        n, got = len(view), 0
        while got < n:
            k = os.preadv(fd, [view[got:]], off + got)
            if k <= 0:
                raise OSError(f"{self.path}: short read")
            got += k
        if self.drop_cache:
            _drop(fd, off, n)

    def close(self) -> None:
        self._finalizer()


def _remove_spill(fds: list[int], folder: str) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    shutil.rmtree(folder, ignore_errors=True)


def _drop(fd: int, off: int, n: int) -> None:
    """Drop the page cache of a read range: on unified memory it takes the DRAM the budget counts."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, off, n, os.POSIX_FADV_DONTNEED)


# ---------------------------------------------------------------- the ring


class CopyStreamer:
    """Units from pinned host memory into a ring of GPU slots. Unit u uses slot u % R; with
    prefetch, its copy runs on a copy stream as soon as the unit R before it has been released, so
    copies overlap compute; everything is stream-ordered (events, no host waits), so a decode step
    that streams is captured in a CUDA graph like one that does not."""

    capturable = True

    def __init__(self, source: PinnedSource, slots: int, slot_bytes: int, device: torch.device, prefetch: bool):
        self.source, self.device, self.prefetch = source, device, prefetch
        self.n = len(source.units)
        self.slots = [torch.empty(slot_bytes, dtype=torch.uint8, device=device) for _ in range(slots)]
        self.copy_stream = torch.cuda.Stream(device) if prefetch else None
        self.ready = [torch.cuda.Event() for _ in range(slots)]
        self.free = [torch.cuda.Event() for _ in range(slots)]
        self.holding: list[int | None] = [None] * slots  # the unit each slot holds once issued copies land
        self.waited = [False] * slots  # the compute stream is ordered after the slot's last copy
        self.this_pass: set[int] = set()  # slots copied into in this pass
        self.released: set[int] = set()  # slots released in this pass
        self.forked = False
        self.expect = 0

    def _issue(self, u: int) -> None:
        s = u % len(self.slots)
        src = self.source.units[u]
        dst = self.slots[s][:src.numel()]
        if self.copy_stream is None:
            dst.copy_(src, non_blocking=True)  # in line on the compute stream: no overlap
        else:
            if not self.forked:  # the copy stream joins the pass where the compute stream is now
                self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
                self.forked = True
            if s in self.released:
                self.copy_stream.wait_event(self.free[s])
            with torch.cuda.stream(self.copy_stream):
                dst.copy_(src, non_blocking=True)
            self.ready[s].record(self.copy_stream)
        self.holding[s] = u
        self.this_pass.add(s)
        self.waited[s] = self.copy_stream is None

    def _landed(self, u: int) -> bool:
        """Unit u is in its slot and the compute stream is ordered after its copy."""
        s = u % len(self.slots)
        return self.holding[s] == u and (self.waited[s] or s in self.this_pass)

    def acquire(self, u: int) -> torch.Tensor:
        """The slot holding unit u, the compute stream waiting (on the GPU, not the host) for its copy.
        Only events recorded in this pass are waited on, so a pass captured in a CUDA graph depends
        on nothing outside it; a unit alone in its slot stays there from pass to pass, uncopied."""
        r = len(self.slots)
        s = u % r
        if u == 0 or u != self.expect:  # a new pass
            self.released.clear()
            self.this_pass = set()
            self.forked = False
            if self.prefetch:
                for v in range(u, min(u + r, self.n)):
                    if not self._landed(v):
                        self._issue(v)
        if not self._landed(u):
            self._issue(u)
        if self.copy_stream is not None and not self.waited[s]:
            torch.cuda.current_stream(self.device).wait_event(self.ready[s])
            self.waited[s] = True
        self.expect = u + 1
        return self.slots[s]

    def release(self, u: int) -> None:
        r = len(self.slots)
        s = u % r
        if self.copy_stream is not None:
            self.free[s].record(torch.cuda.current_stream(self.device))
        self.released.add(s)
        if self.prefetch and u + r < self.n:
            self._issue(u + r)

    def close(self) -> None:
        pass


class ReaderStreamer:
    """Units from a spill file into a ring of slots (CPU memory, or a GPU through pinned staging).

    With prefetch a reader thread runs ahead through the units in pass order, wrapping round to
    the next pass, each into its slot as soon as the compute has released it; ``acquire`` waits
    for its unit. A pass that stops part-way (an error, Ctrl-C) is noticed at the next ``acquire``
    and the reader restarts from there."""

    capturable = False

    def __init__(self, source: FileSource, slots: int, slot_bytes: int, device: torch.device, prefetch: bool):
        if device.type == "cuda" and device.index is None:  # the reader thread sets it by index
            device = torch.device("cuda", torch.cuda.current_device())
        self.source, self.device, self.prefetch = source, device, prefetch
        self.n = len(source.units)
        self.slots = [torch.empty(slot_bytes, dtype=torch.uint8, device=device) for _ in range(slots)]
        self.gpu = device.type == "cuda"
        if self.gpu:
            self.staging = [torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(slots)]
            self.copy_stream = torch.cuda.Stream(device)
            self.ready = [torch.cuda.Event() for _ in range(slots)]
            self.free = [torch.cuda.Event() for _ in range(slots)]
            self.views = [memoryview(b.numpy()) for b in self.staging]
        else:
            self.views = [memoryview(b.numpy()) for b in self.slots]
        self.cv = threading.Condition()
        self.state: list[int | None] = [None] * slots  # unit ready in the slot
        self.busy = [False] * slots  # being filled, or acquired and not yet released
        self.thread: threading.Thread | None = None
        self.stop = False
        self.expect = 0
        self.error: BaseException | None = None

    def _load(self, u: int, s: int) -> None:
        n = self.source.unit_bytes(u)
        if self.gpu:
            self.ready[s].synchronize()  # the staging's last copy out has finished
            self.source.read_into(u, self.views[s][:n])
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(self.free[s])
                self.slots[s][:n].copy_(self.staging[s][:n], non_blocking=True)
            self.ready[s].record(self.copy_stream)
        else:
            self.source.read_into(u, self.views[s][:n])

    def _run(self, start: int) -> None:
        if self.gpu:
            torch.cuda.set_device(self.device)
        r = len(self.slots)
        u = start
        for _ in range(self.n if self.n <= r else 1 << 62):  # with R ≥ units, each is read once
            s = u % r
            with self.cv:
                while not self.stop and (self.busy[s] or self.state[s] is not None):
                    self.cv.wait()
                if self.stop:
                    return
                self.busy[s] = True
            try:
                self._load(u, s)
            except BaseException as e:  # handed to the waiting acquire
                with self.cv:
                    self.error, self.busy[s] = e, False
                    self.cv.notify_all()
                return
            with self.cv:
                self.busy[s], self.state[s] = False, u
                self.cv.notify_all()
            u = (u + 1) % self.n

    def _restart(self, u: int) -> None:
        self._halt()
        if self.gpu:  # a stopped pass may not have released its slot: let its kernels finish first
            torch.cuda.current_stream(self.device).synchronize()
        self.error = None
        self.busy = [False] * len(self.slots)
        self.state = [None] * len(self.slots)  # what a stopped pass left unconsumed is read again
        self.stop = False
        self.thread = threading.Thread(target=self._run, args=(u,), name="edge-awq-stream", daemon=True)
        self.thread.start()

    def _halt(self) -> None:
        if self.thread is not None:
            with self.cv:
                self.stop = True
                self.cv.notify_all()
            self.thread.join()
            self.thread = None

    def acquire(self, u: int) -> torch.Tensor:
        r = len(self.slots)
        s = u % r
        if not self.prefetch:
            if self.state[s] != u:
                self._load(u, s)
                self.state[s] = u
            if self.gpu:
                torch.cuda.current_stream(self.device).wait_event(self.ready[s])
            return self.slots[s]
        if self.thread is None or u != self.expect:
            self._restart(u)
        with self.cv:
            while not (self.state[s] == u and not self.busy[s]):
                if self.error is not None:
                    raise self.error
                self.cv.wait()
            self.busy[s] = True
        if self.gpu:
            torch.cuda.current_stream(self.device).wait_event(self.ready[s])
        self.expect = (u + 1) % self.n
        return self.slots[s]

    def release(self, u: int) -> None:
        s = u % len(self.slots)
        if self.gpu:
            self.free[s].record(torch.cuda.current_stream(self.device))
        if self.prefetch:
            with self.cv:
                self.busy[s] = False
                self.state[s] = None if self.n > len(self.slots) else u
                self.cv.notify_all()

    def close(self) -> None:
        self._halt()


# ---------------------------------------------------------------- the streamed parts of one model


class Ring:
    """The streamed units of one model, their source, and (once ``start``ed) the ring of slots and
    the Blocks bound to them. Units are numbered in pass order: streamed layers, then head chunks."""

    def __init__(self, source, device: torch.device, slots: int, prefetch: bool):
        self.source, self.device, self.n_slots, self.prefetch = source, torch.device(device), slots, prefetch
        self.layout: FlatLayout | None = None
        self.template: nn.Module | None = None  # a streamed layer's structure, its tensors on "meta"
        self.streamer = None
        self.slot_blocks: list[nn.Module] = []

    def add_block(self, block: nn.Module) -> StreamedBlock:
        """Lay a loaded, prepared layer out as one unit in the source; its own tensors can go."""
        layout = flat_layout(block)
        if self.layout is None:
            self.layout = layout
        elif layout != self.layout:
            raise ValueError("streamed layers must share one layout")
        flat = torch.empty(layout.nbytes, dtype=torch.uint8, device=next(t for _, t, _ in _tensors(block)).device)
        flatten_into(block, layout, flat)
        unit = self.source.add(flat)
        if self.template is None:
            self.template = block.to("meta")
        return StreamedBlock(self, unit)

    def start(self) -> None:
        """Allocate the ring (once, for the whole run) and bind a Block to each slot."""
        self.source.finish()
        slot_bytes = max(self.source.unit_bytes(u) for u in range(len(self.source.units)))
        self.streamer = make_streamer(self.source, self.n_slots, slot_bytes, self.device, self.prefetch)
        shared = {id(m.scratch): m.scratch for m in self.template.modules() if getattr(m, "scratch", None) is not None}
        for flat in self.streamer.slots:
            block = copy.deepcopy(self.template, memo=dict(shared))  # meta tensors: nothing is copied
            bind(block, self.layout, flat)
            self.slot_blocks.append(block)

    @property
    def slot_bytes(self) -> int:
        return sum(t.numel() for t in self.streamer.slots)

    def close(self) -> None:
        if self.streamer is not None:
            self.streamer.close()
        self.source.close()


class StreamedBlock(nn.Module):
    """Stands in for a decoder layer whose weights arrive in a ring slot for every pass: once the
    unit has landed, the slot's Block runs it with the same kernels as a resident layer."""

    def __init__(self, ring: Ring, unit: int):
        super().__init__()
        self.unit = unit
        self.__dict__["ring"] = ring  # not a submodule: the ring's tensors are not this layer's

    def acquire(self) -> nn.Module:
        self.ring.streamer.acquire(self.unit)
        return self.ring.slot_blocks[self.unit % len(self.ring.slot_blocks)]

    def release(self) -> None:
        self.ring.streamer.release(self.unit)

    def forward(self, *args, **kwargs):
        block = self.acquire()
        try:
            return block(*args, **kwargs)
        finally:
            self.release()


class StreamedHead(nn.Module):
    """The output head (vocab, hidden) when it does not fit: row chunks stream through the ring,
    read from the (verified) shard holding the embedding or head."""

    def __init__(self, ring: Ring, first_unit: int, rows_per_unit: int, vocab: int, hidden: int, dtype: torch.dtype):
        super().__init__()
        self.__dict__["ring"] = ring
        self.first, self.rows, self.vocab, self.hidden, self.wdtype = first_unit, rows_per_unit, vocab, hidden, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(*x.shape[:-1], self.vocab, dtype=x.dtype, device=x.device)
        row = self.hidden * self.wdtype.itemsize
        for c in range(-(-self.vocab // self.rows)):
            r0, r1 = c * self.rows, min(self.vocab, (c + 1) * self.rows)
            buf = self.ring.streamer.acquire(self.first + c)
            w = buf[:(r1 - r0) * row].view(self.wdtype).view(r1 - r0, self.hidden)
            out[..., r0:r1] = F.linear(x, w.to(x.dtype))
            self.ring.streamer.release(self.first + c)
        return out


class StreamedEmbedding(nn.Module):
    """Embedding rows read from the (verified) shard file as tokens need them."""

    def __init__(self, path: Path, offset: int, vocab: int, hidden: int, dtype: torch.dtype):
        super().__init__()
        self.path, self.offset, self.vocab, self.hidden, self.wdtype = Path(path), offset, vocab, hidden, dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        row = self.hidden * self.wdtype.itemsize
        ids = tokens.reshape(-1).tolist()
        out = torch.empty(len(ids), self.hidden, dtype=self.wdtype)
        view = memoryview(out.view(-1).view(torch.uint8).numpy())
        with open(self.path, "rb", buffering=0) as f:
            for i, t in enumerate(ids):
                if not 0 <= t < self.vocab:
                    raise IndexError(f"token id {t} is outside the vocabulary ({self.vocab})")
                f.seek(self.offset + t * row)
                f.readinto(view[i * row:(i + 1) * row])
        return out.reshape(*tokens.shape, self.hidden).to(tokens.device)


def make_streamer(source, slots: int, slot_bytes: int, device: torch.device, prefetch: bool):
    if isinstance(source, PinnedSource):
        return CopyStreamer(source, slots, slot_bytes, device, prefetch)
    return ReaderStreamer(source, slots, slot_bytes, device, prefetch)


def measure_source_bandwidth(source, device: torch.device, nbytes: int = 256 << 20) -> float:
    """Bytes per second from the source into device memory: pinned → GPU copies timed with events,
    or file reads (through pinned staging to a GPU) timed on the clock. Reads whole units, about
    ``nbytes`` in all, the way streaming reads them."""
    units = list(range(len(source.units)))
    if not units:
        return 0.0
    pick, total = [], 0
    while total < nbytes:
        u = units[len(pick) % len(units)]
        pick.append(u)
        total += source.unit_bytes(u)
    biggest = max(source.unit_bytes(u) for u in units)
    dst = torch.empty(biggest, dtype=torch.uint8, device=device)
    if isinstance(source, PinnedSource):
        for u in pick[:2]:  # warm-up
            dst[:source.unit_bytes(u)].copy_(source.units[u], non_blocking=True)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for u in pick:
            dst[:source.unit_bytes(u)].copy_(source.units[u], non_blocking=True)
        end.record()
        end.synchronize()
        return total / (start.elapsed_time(end) / 1e3)
    staging = torch.empty(biggest, dtype=torch.uint8, pin_memory=True) if device.type == "cuda" else dst
    view = memoryview(staging.numpy())
    t0 = time.perf_counter()
    for u in pick:
        n = source.unit_bytes(u)
        source.read_into(u, view[:n])
        if device.type == "cuda":
            dst[:n].copy_(staging[:n], non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return total / (time.perf_counter() - t0)

"""Diffill-Coder's adapter: LoRA on every linear layer plus a learned mask embedding, applied
only to the rows of the masked block.

Why our own LoRA rather than ``peft``: peft adds its delta to every row a layer sees, while this
design needs it on the block rows only, inside the same forward that runs the untouched base on
the context rows (``model.Adapted.rows_from``); the weights are also laid out for the model's
fused q/k/v and gate/up projections. The maths is plain LoRA (``W x + (alpha / r) B A x``, B
zero at init), so the adapter starts as the identity and round-trips through safetensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..model import ModelConfig

__all__ = ["TARGETS", "Adapter", "AdapterConfig", "load_adapter", "save_adapter"]

TARGETS = ("qkv", "o_proj", "gate_up", "down_proj")
WEIGHTS = "adapter.safetensors"
INDEX = "adapter.safetensors.index.json"


@dataclass(frozen=True)
class AdapterConfig:
    rank: int = 16
    alpha: float = 32.0
    mask_id: int = 151665  # an unused (never trained) row of Qwen2.5's padded vocabulary
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(TARGETS)
        if unknown or self.rank < 1:
            raise ValueError(f"invalid adapter config: rank {self.rank}, targets {self.targets}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterConfig:
        return cls(
            rank=int(d["rank"]),
            alpha=float(d["alpha"]),
            mask_id=int(d["mask_id"]),
            targets=tuple(d.get("targets", TARGETS)),
        )


def _dims(mc: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of each adaptable linear."""
    q, kv = mc.num_heads * mc.head_dim, mc.num_kv_heads * mc.head_dim
    return {
        "qkv": (mc.hidden_size, q + 2 * kv),
        "o_proj": (q, mc.hidden_size),
        "gate_up": (mc.hidden_size, 2 * mc.intermediate_size),
        "down_proj": (mc.intermediate_size, mc.hidden_size),
    }


class _LayerLoRA(nn.Module):
    def __init__(self, dims: dict[str, tuple[int, int]], targets: tuple[str, ...], rank: int) -> None:
        super().__init__()
        self.a = nn.ParameterDict({n: nn.Parameter(torch.zeros(rank, dims[n][0])) for n in targets})
        self.b = nn.ParameterDict({n: nn.Parameter(torch.zeros(dims[n][1], rank)) for n in targets})


class Adapter(nn.Module):
    """Per-layer LoRA factors and the mask embedding (implements ``model.RowAdapter``)."""

    def __init__(self, mc: ModelConfig, cfg: AdapterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mask_id = cfg.mask_id
        self.scale = cfg.alpha / cfg.rank
        dims = _dims(mc)
        self.layers = nn.ModuleList(_LayerLoRA(dims, cfg.targets, cfg.rank) for _ in range(mc.num_layers))
        self.mask_embed = nn.Parameter(torch.zeros(mc.hidden_size))

    def reset(self, embed: torch.Tensor, seed: int = 0) -> None:
        """Fresh training init: A Kaiming-uniform (as LoRA does), B zero, the mask embedding at
        the mean of the trained embedding rows (a neutral input the base has seen the scale of)."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.layers:
                for p in layer.a.values():
                    bound = 1.0 / math.sqrt(p.shape[1])
                    p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
                for p in layer.b.values():
                    p.zero_()
            rows = embed[: min(self.mask_id, embed.shape[0])].float()
            self.mask_embed.copy_(rows.mean(0))

    def delta(self, layer: int, name: str, x: torch.Tensor) -> torch.Tensor:
        lora = self.layers[layer]
        if name not in lora.a:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        a, b = lora.a[name], lora.b[name]
        # in the factors' own dtype: on the CPU, fp32 is ~3x faster than bf16 for these thin matmuls
        return F.linear(F.linear(x.to(a.dtype), a), b) * self.scale

    def embed_masks(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.where((ids == self.mask_id)[..., None], self.mask_embed.to(x.dtype), x)


def save_adapter(
    adapter: Adapter,
    out_dir: str | Path,
    config: dict[str, Any],
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = 15_000_000,
) -> list[Path]:
    """config.json (``config`` plus the adapter's own keys) and the weights as safetensors shards
    of at most ``max_shard_bytes`` with an index (git hosts and the package limit file sizes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in adapter.state_dict().items()}
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        n = tensors[name].numel() * tensors[name].element_size()
        if groups[-1] and size + n > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = tensors[name]
        size += n
    for old in [*out.glob("adapter*.safetensors"), out / INDEX]:
        old.unlink(missing_ok=True)
    paths, weight_map = [], {}
    for i, g in enumerate(groups, 1):
        name = f"adapter-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(g, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in g})
        paths.append(out / name)
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
    index["weight_map"] = weight_map
    (out / INDEX).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    cfg = dict(config)
    cfg["adapter"] = adapter.cfg.to_dict()
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return paths


class AdapterError(ValueError):
    """An adapter directory is missing something or does not fit the base model."""


def load_adapter(
    root: str | Path, mc: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Adapter:
    """The adapter stored in ``root`` (config.json's ``adapter`` key + shards), checked against
    the base model's shapes before any tensor data is read."""
    root = Path(root)
    try:
        cfg = json.loads((root / "config.json").read_text(encoding="utf-8"))
        acfg = AdapterConfig.from_dict(cfg["adapter"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AdapterError(f"invalid adapter config in {root / 'config.json'}: {e}") from None
    if not 0 <= acfg.mask_id < mc.vocab_size:
        raise AdapterError(f"adapter mask id {acfg.mask_id} is outside the base vocabulary ({mc.vocab_size})")
    adapter = Adapter(mc, acfg)
    expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    try:
        index = json.loads((root / INDEX).read_text(encoding="utf-8"))
        weight_map: dict[str, str] = dict(index["weight_map"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AdapterError(f"invalid or missing {INDEX} in {root}: {e}") from None
    missing = set(expected) - set(weight_map)
    if missing:
        raise AdapterError(f"adapter in {root} lacks {len(missing)} tensors (e.g. {sorted(missing)[0]!r})")
    loaded: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or not (root / shard).is_file():
            raise AdapterError(f"missing adapter shard {shard!r} in {root}")
        try:
            with safe_open(str(root / shard), "pt") as fh:
                for name in fh.keys():
                    if name not in expected:
                        continue
                    shape = tuple(fh.get_slice(name).get_shape())
                    if shape != expected[name]:
                        raise AdapterError(
                            f"adapter tensor {name!r} in {shard} has shape {list(shape)}, "
                            f"expected {list(expected[name])} for this base model"
                        )
                    loaded[name] = fh.get_tensor(name)
        except AdapterError:
            raise
        except Exception as e:
            raise AdapterError(f"cannot read adapter shard {root / shard}: {e}") from None
    adapter.load_state_dict(loaded)
    adapter.to(device=device, dtype=dtype)
    adapter.eval()
    adapter.requires_grad_(False)
    return adapter

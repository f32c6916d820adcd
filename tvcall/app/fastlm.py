"""A lean inference path for Llama-family models (SmolLM2) on CPU: the same weights and maths as
transformers, without its per-call overhead.

- a static KV cache, preallocated once, with the chat-template prefix every prompt shares computed once
  and copied in (prefix caching);
- fused QKV and gate/up projections (fewer, larger matmuls);
- the output projection only for the tokens the constraint allows (a handful of rows of the 49k-row
  embedding instead of all of them);
- optional bf16 weights (this CPU has AVX512-BF16): half the bytes to stream per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class _Layer:
    ln1: torch.Tensor
    wqkv: torch.Tensor  # (q + 2·kv) × hidden
    wo: torch.Tensor
    ln2: torch.Tensor
    wgu: torch.Tensor  # 2·intermediate × hidden
    wdown: torch.Tensor


@dataclass
class KVCache:
    keys: torch.Tensor  # layers × kv_heads × max_len × head_dim
    values: torch.Tensor
    length: int = 0


class FastLlama:
    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32, max_len: int = 512) -> None:
        config = model.config
        if config.model_type not in ("llama", "qwen2"):
            raise ValueError(f"FastLlama runs llama/qwen2 models, not {config.model_type}")
        state = {k: v.detach() for k, v in model.state_dict().items()}
        self.dtype = dtype
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.max_len = max_len
        self.has_bias = "model.layers.0.self_attn.q_proj.bias" in state
        if self.has_bias:
            raise ValueError("attention biases are not supported by FastLlama")
        self.embed = state["model.embed_tokens.weight"].to(dtype)
        self.lm_head = state.get("lm_head.weight", state["model.embed_tokens.weight"]).to(dtype)
        self.norm = state["model.norm.weight"].to(dtype)
        self.layers: list[_Layer] = []
        for i in range(config.num_hidden_layers):
            p = f"model.layers.{i}."
            self.layers.append(_Layer(
                ln1=state[p + "input_layernorm.weight"].to(dtype),
                wqkv=torch.cat([state[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]).to(dtype).contiguous(),
                wo=state[p + "self_attn.o_proj.weight"].to(dtype).contiguous(),
                ln2=state[p + "post_attention_layernorm.weight"].to(dtype),
                wgu=torch.cat([state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"]]).to(dtype).contiguous(),
                wdown=state[p + "mlp.down_proj.weight"].to(dtype).contiguous(),
            ))
        rope = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope type {rope.get('rope_type')} is not supported by FastLlama")
        inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.cos, self.sin = angles.cos().to(dtype), angles.sin().to(dtype)
        self._prefix: tuple[list[int], KVCache] | None = None

    # --- cache ----------------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        shape = (len(self.layers), self.kv_heads, self.max_len, self.head_dim)
        return KVCache(torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype))

    def set_prefix(self, tokens: list[int]) -> None:
        """Compute the KV of a prefix every prompt shares (the chat template's system turn) once."""
        cache = self.new_cache()
        self.forward(tokens, cache)
        self._prefix = (list(tokens), cache)

    def start(self, prompt: list[int], cache: KVCache | None = None) -> tuple[KVCache, list[int]]:
        """A cache holding the shared prefix (when `prompt` starts with it) and the tokens still to run."""
        cache = cache or self.new_cache()
        cache.length = 0
        if self._prefix is not None:
            prefix, source = self._prefix
            if prompt[: len(prefix)] == prefix:
                n = len(prefix)
                cache.keys[:, :, :n] = source.keys[:, :, :n]
                cache.values[:, :, :n] = source.values[:, :, :n]
                cache.length = n
                return cache, prompt[n:]
        return cache, list(prompt)

    # --- maths ----------------------------------------------------------------------------------
    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(self.dtype) * weight

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    @torch.inference_mode()
    def forward(self, tokens: list[int], cache: KVCache) -> torch.Tensor:
        """Run `tokens` after what `cache` holds; returns the final hidden state of the last token."""
        start, count = cache.length, len(tokens)
        end = start + count
        if end > self.max_len:
            raise ValueError(f"sequence of {end} tokens exceeds the cache of {self.max_len}")
        x = self.embed[torch.tensor(tokens)]  # T × hidden
        cos, sin = self.cos[start:end], self.sin[start:end]
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        mask = None
        if count > 1:
            positions = torch.arange(end)
            mask = positions[None, :] <= torch.arange(start, end)[:, None]  # T × S, causal after the cache
        for index, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            qkv = h @ layer.wqkv.T
            q = qkv[:, :q_size].view(count, self.heads, self.head_dim).transpose(0, 1)
            k = qkv[:, q_size:q_size + kv_size].view(count, self.kv_heads, self.head_dim).transpose(0, 1)
            v = qkv[:, q_size + kv_size:].view(count, self.kv_heads, self.head_dim).transpose(0, 1)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            cache.keys[index, :, start:end] = k
            cache.values[index, :, start:end] = v
            attn = F.scaled_dot_product_attention(
                q.unsqueeze(0), cache.keys[index, :, :end].unsqueeze(0), cache.values[index, :, :end].unsqueeze(0),
                attn_mask=mask, enable_gqa=True,
            )[0]
            x = x + attn.transpose(0, 1).reshape(count, q_size) @ layer.wo.T
            h = self._rms(x, layer.ln2)
            gate, up = (h @ layer.wgu.T).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ layer.wdown.T
        cache.length = end
        return self._rms(x[-1], self.norm)

    def scores(self, hidden: torch.Tensor, allowed: list[int]) -> torch.Tensor:
        """Logits of the `allowed` tokens only."""
        return (self.lm_head[allowed] @ hidden).float()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return (self.lm_head @ hidden).float()

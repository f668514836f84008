"""A random Grok-architecture model in the keyfan/grok-1-hf safetensors layout
with d = 256 and 8 heads of 32 (query width = d, which llama.cpp's `grok`
loader requires) and the real 131072-token vocabulary, for loading files that
`grok1 convert` writes into llama.cpp itself (bench/RESULTS.md).

    python3 tests/convert/make_wide_hf.py OUT_DIR   (needs numpy, safetensors)
"""
import json, os, sys
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(5)
d, heads, kv, hd, ff, E, L, V = 256, 8, 4, 32, 512, 8, 2, 131072
t = {}
def w(*shape, s=0.05): return (rng.standard_normal(shape) * s).astype(np.float32)
t["transformer.in_out_embed.weight"] = w(V, d, s=0.02)
t["transformer.rms_norm.weight"] = (1 + w(d, s=0.1))
for i in range(L):
    l = f"transformer.decoder_layer.{i}."
    for n in ["rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"]:
        t[l + n + ".weight"] = 1 + w(d, s=0.1)
    t[l + "multi_head_attention.query.weight"] = w(heads * hd, d)
    t[l + "multi_head_attention.key.weight"] = w(kv * hd, d)
    t[l + "multi_head_attention.value.weight"] = w(kv * hd, d)
    t[l + "multi_head_attention.linear.weight"] = w(d, heads * hd)
    t[l + "router.weight"] = w(E, d, s=0.5)
    for e in range(E):
        t[l + f"moe.{e}.linear.weight"] = w(ff, d)
        t[l + f"moe.{e}.linear_v.weight"] = w(ff, d)
        t[l + f"moe.{e}.linear_1.weight"] = w(d, ff)
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
save_file(t, os.path.join(out, "model.safetensors"))
json.dump({"architectures": ["GrokForCausalLM"], "model_type": "grok", "vocab_size": V, "hidden_size": d,
  "intermediate_size": ff, "num_hidden_layers": L, "num_attention_heads": heads, "num_key_value_heads": kv,
  "head_dim": hd, "num_local_experts": E, "num_experts_per_tok": 2, "attn_output_multiplier": hd ** -0.5,
  "embedding_multiplier_scale": 16.0, "output_multiplier_scale": 0.5773502691896257, "max_attn_value": 30.0,
  "max_position_embeddings": 512, "rope_theta": 10000.0, "rms_norm_eps": 1e-5}, open(os.path.join(out, "config.json"), "w"))

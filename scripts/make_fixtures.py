#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Small random DeepSeek-V3-family checkpoints and float64 reference logits, made with `transformers`.

For each case this writes tests/fixtures/model/<case>/ with
  config.json                      in the layout of the released checkpoints (rope_theta and
                                   rope_scaling at top level, scoring_func, topk_method, ...)
  model.safetensors                or model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json
                                   (cases with an MTP layer: the MTP tensors are in the second shard)
  reference.json                   sequences, versions, patches applied to transformers, margins
  reference.safetensors            logits_<i> F32 [T_i, vocab] (every position) and, with MTP,
                                   mtp_logits_<i> F32 [T_i, vocab]
and, for case v3 only, a training-gradient fixture:
  gradients.safetensors            d loss / d parameter, F64, for every trainable tensor of the main
                                   model under its on-disk name and shape (routed experts split back
                                   to experts.<e>.{gate,up,down}_proj; not the MTP layer, not
                                   e_score_correction_bias, a buffer), and loss F64 [1]
  gradients.json                   the two sequences (input_ids, labels), loss, definition, versions,
                                   checks (finite differences)
  The loss: two sequences (7 and 5 tokens, each alone at positions 0..T-1, labels = the next token
  of a random window), mean over all 12 positions of -log softmax(logits[t])[labels[t]], by
  autograd through the same float64 reference model; routing margins >= 1e-2.

If tests/fixtures/model/deepmoe_trained/ holds a checkpoint written by deepmoe's trainer
(config.json + model.safetensors; the command is in TRAINED_SOURCE and docs/testing.md), the
script also writes its reference.json + reference.safetensors, in the same format and with the
same patches and sequence conventions, and never rewrites the checkpoint itself. The main model
there is transformers' own DeepseekV3ForCausalLM.from_pretrained(<dir>) of the files as they
are; the MTP reference uses the module's own stored embedding and head (deepmoe trains them
separately). reference.json adds "source" (the command, sha256 of both files) and "load"
(missing/unexpected keys and the warnings from_pretrained logged).

The reference runs the Hugging Face modules in float64 on the weights exactly as stored (BF16
upcast, FP8 dequantized as float(q) * scale_inv). Where the installed transformers differs from
the semantics deepmoe implements, the reference model is patched; each patch is listed in
reference.json ("patches"). Inputs are redrawn until every logit row and every routing decision
has a clear margin, so that a float32 implementation can be compared at a relative error of
1e-4 with equal argmax and equal expert choices.

Deterministic: rerunning with the versions in scripts/requirements-fixtures.txt rewrites
identical files.

Usage: scripts/make_fixtures.py [--out tests/fixtures/model]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy
import safetensors
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM
from transformers.masking_utils import create_causal_mask
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as hf_v2
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_v3

# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

COMMON = {
    "vocab_size": 256,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "kv_lora_rank": 32,
    "moe_intermediate_size": 16,
    "intermediate_size": 160,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "num_hidden_layers": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "ep_size": 1,
    "use_cache": True,
}

V3 = {
    **COMMON,
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "n_group": 4,
    "topk_group": 2,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "q_lora_rank": 48,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
    "rope_scaling": {
        "type": "yarn",
        "rope_type": "yarn",
        "factor": 40,
        "original_max_position_embeddings": 128,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
    "num_nextn_predict_layers": 1,
    "torch_dtype": "float32",
}

V2_LITE = {
    **COMMON,
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "scoring_func": "softmax",
    "topk_method": "greedy",
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": False,
    "routed_scaling_factor": 1.0,
    "q_lora_rank": None,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
    "rope_scaling": {
        "type": "yarn",
        "rope_type": "yarn",
        "factor": 40,
        "original_max_position_embeddings": 128,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 0.707,
        "mscale_all_dim": 0.707,
    },
    "n_shared_experts": 2,
    "num_nextn_predict_layers": 0,
    "torch_dtype": "float32",
}

MOONLIGHT = {
    **V3,
    "q_lora_rank": None,
    "rope_scaling": None,
    "rms_norm_eps": 1e-5,
    "rope_theta": 50000,
    "n_group": 1,
    "topk_group": 1,
    "num_nextn_predict_layers": 0,
}

KIMI_K2 = {
    **V3,
    "rope_scaling": {
        "type": "yarn",
        "rope_type": "yarn",
        "factor": 32,
        "original_max_position_embeddings": 128,
        "beta_fast": 1,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
    "n_group": 1,
    "topk_group": 1,
    "routed_scaling_factor": 2.827,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "num_nextn_predict_layers": 0,
    "torch_dtype": "bfloat16",
}

FP8_QUANTIZATION_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}
V3_FP8 = {**V3, "torch_dtype": "bfloat16", "quantization_config": FP8_QUANTIZATION_CONFIG}

# name, config, weight seed, storage. v3_fp8 stores v3's weights (same seed) and shares v3's inputs.
CASES = [
    ("v3", V3, 1001, "f32"),
    ("v2_lite", V2_LITE, 1002, "f32"),
    ("moonlight", MOONLIGHT, 1003, "f32"),
    ("kimi_k2", KIMI_K2, 1004, "bf16"),
    ("v3_fp8", V3_FP8, 1001, "fp8"),
]
INPUTS_SHARED_WITH = {"v3_fp8": "v3"}

# (length, first position) of the three sequences of every case
SEQUENCE_SHAPES = [(7, 0), (4, 0), (5, 3)]

LOGIT_GAP_REL = 1e-3  # top-1 minus top-2 logit >= this times max|logit|, at every position
ROUTE_GAP = 1e-4  # k-th minus (k+1)-th selection score, and topk_group-th minus next group score

FP8_MAX = 448.0
FP8_BLOCK = 128


# --------------------------------------------------------------------------------------------
# Random weights (on-disk names, float32)
# --------------------------------------------------------------------------------------------


def _attention_shapes(c):
    H, nh = c["hidden_size"], c["num_attention_heads"]
    dn, dr, dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    rq, rkv = c["q_lora_rank"], c["kv_lora_rank"]
    s = {}
    if rq:
        s["self_attn.q_a_proj.weight"] = ("linear", [rq, H])
        s["self_attn.q_a_layernorm.weight"] = ("norm", [rq])
        s["self_attn.q_b_proj.weight"] = ("linear", [nh * (dn + dr), rq])
    else:
        s["self_attn.q_proj.weight"] = ("linear", [nh * (dn + dr), H])
    s["self_attn.kv_a_proj_with_mqa.weight"] = ("linear", [rkv + dr, H])
    s["self_attn.kv_a_layernorm.weight"] = ("norm", [rkv])
    s["self_attn.kv_b_proj.weight"] = ("linear", [nh * (dn + dv), rkv])
    s["self_attn.o_proj.weight"] = ("linear", [H, nh * dv])
    return s


def _layer_shapes(c, moe):
    H = c["hidden_size"]
    s = {"input_layernorm.weight": ("norm", [H])}
    s.update(_attention_shapes(c))
    s["post_attention_layernorm.weight"] = ("norm", [H])
    if not moe:
        inter = c["intermediate_size"]
        s["mlp.gate_proj.weight"] = ("linear", [inter, H])
        s["mlp.up_proj.weight"] = ("linear", [inter, H])
        s["mlp.down_proj.weight"] = ("linear", [H, inter])
        return s
    E, M, S = c["n_routed_experts"], c["moe_intermediate_size"], c["n_shared_experts"]
    s["mlp.gate.weight"] = ("router", [E, H])
    if c["topk_method"] == "noaux_tc":
        s["mlp.gate.e_score_correction_bias"] = ("bias", [E])
    for e in range(E):
        s[f"mlp.experts.{e}.gate_proj.weight"] = ("linear", [M, H])
        s[f"mlp.experts.{e}.up_proj.weight"] = ("linear", [M, H])
        s[f"mlp.experts.{e}.down_proj.weight"] = ("linear", [H, M])
    s["mlp.shared_experts.gate_proj.weight"] = ("linear", [S * M, H])
    s["mlp.shared_experts.up_proj.weight"] = ("linear", [S * M, H])
    s["mlp.shared_experts.down_proj.weight"] = ("linear", [H, S * M])
    return s


def _is_moe_layer(c, layer):
    return layer >= c["first_k_dense_replace"] and layer % c["moe_layer_freq"] == 0


def _draw(kind, shape, gen, H):
    if kind == "linear":  # N(0, 1/fan_in): activations stay O(1)
        return torch.randn(shape, generator=gen) / math.sqrt(shape[1])
    if kind == "norm":
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if kind == "embed":
        return torch.randn(shape, generator=gen)
    if kind == "head":
        return torch.randn(shape, generator=gen) / math.sqrt(H)
    if kind == "router":  # logits of std ~3: distinct scores
        return 3.0 * torch.randn(shape, generator=gen) / math.sqrt(H)
    if kind == "bias":  # nonzero, std 0.1
        return 0.1 * torch.randn(shape, generator=gen)
    raise ValueError(kind)


def make_weights(c, seed):
    """All tensors of the checkpoint (MTP included) under their on-disk names, float32."""
    gen = torch.Generator().manual_seed(seed)
    H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    w = {"model.embed_tokens.weight": _draw("embed", [V, H], gen, H)}
    for layer in range(L):
        for name, (kind, shape) in _layer_shapes(c, _is_moe_layer(c, layer)).items():
            w[f"model.layers.{layer}.{name}"] = _draw(kind, shape, gen, H)
    w["model.norm.weight"] = _draw("norm", [H], gen, H)
    w["lm_head.weight"] = _draw("head", [V, H], gen, H)
    for m in range(c.get("num_nextn_predict_layers") or 0):
        p = f"model.layers.{L + m}."
        w[p + "embed_tokens.weight"] = w["model.embed_tokens.weight"].clone()  # copies, as released
        w[p + "enorm.weight"] = _draw("norm", [H], gen, H)
        w[p + "hnorm.weight"] = _draw("norm", [H], gen, H)
        w[p + "eh_proj.weight"] = _draw("linear", [H, 2 * H], gen, H)
        for name, (kind, shape) in _layer_shapes(c, True).items():
            w[p + name] = _draw(kind, shape, gen, H)
        w[p + "shared_head.norm.weight"] = _draw("norm", [H], gen, H)
        w[p + "shared_head.head.weight"] = w["lm_head.weight"].clone()
    return w


def is_mtp_name(c, name):
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return m is not None and int(m.group(1)) >= c["num_hidden_layers"]


def to_memory_layout(ondisk, prefix_in, prefix_out, E):
    """On-disk names -> the in-memory names of transformers' modules, for tensors under prefix_in.

    transformers keeps the routed experts fused: experts.gate_up_proj [E, 2M, H] holding gate_proj
    rows then up_proj rows of each expert, and experts.down_proj [E, H, M]. (Checked against
    transformers' own save conversion in check_save_roundtrip.)"""
    out, experts = {}, {}
    for name, t in ondisk.items():
        if not name.startswith(prefix_in):
            continue
        rest = name[len(prefix_in):]
        m = re.match(r"(.*mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", rest)
        if m:
            experts.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = t
        else:
            out[prefix_out + rest] = t
    for base, d in experts.items():
        out[prefix_out + base + ".gate_up_proj"] = torch.stack(
            [torch.cat([d[(e, "gate_proj")], d[(e, "up_proj")]], dim=0) for e in range(E)])
        out[prefix_out + base + ".down_proj"] = torch.stack([d[(e, "down_proj")] for e in range(E)])
    return out


# --------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------

FP8_NAME = re.compile(
    r"\.(self_attn\.(q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(experts\.\d+\.|shared_experts\.)?(gate_proj|up_proj|down_proj))\.weight$")


def quantize_fp8_block(w):
    """DeepSeek-V3 block FP8: scale_inv[b] = max|W_b| / 448 per 128x128 block (edge blocks as
    if zero-padded), q = e4m3(W / scale_inv) rounded to nearest even and saturated to +-448."""
    R, C = w.shape
    br, bc = -(-R // FP8_BLOCK), -(-C // FP8_BLOCK)
    padded = torch.zeros(br * FP8_BLOCK, bc * FP8_BLOCK, dtype=torch.float32)
    padded[:R, :C] = w
    blocks = padded.view(br, FP8_BLOCK, bc, FP8_BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))
    if (amax == 0).any():
        raise ValueError("all-zero fp8 block")
    scale_inv = (amax / FP8_MAX).to(torch.float32)
    x = (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
    q = x.to(torch.float8_e4m3fn)
    check_fp8_rounding(x, q)
    q = q.view(br * FP8_BLOCK, bc * FP8_BLOCK)[:R, :C].contiguous()
    return q, scale_inv.contiguous()


def check_fp8_rounding(x, q):
    """q (float8_e4m3fn) is x rounded to the nearest e4m3 value, ties to the even code."""
    codes = torch.arange(0, 0x7F, dtype=torch.uint8)  # +0 .. +448 (0x7F is NaN)
    table = codes.view(torch.float8_e4m3fn).to(torch.float64)
    a = x.abs().to(torch.float64).flatten()
    hi = torch.searchsorted(table, a).clamp(1, len(table) - 1)
    lo = hi - 1
    d_lo, d_hi = a - table[lo], table[hi] - a
    pick = torch.where(d_lo < d_hi, lo, torch.where(d_hi < d_lo, hi, torch.where(lo % 2 == 0, lo, hi)))
    want = table[pick] * torch.sign(x.to(torch.float64).flatten())
    got = q.to(torch.float64).flatten()
    if not torch.equal(got[want != 0], want[want != 0]) or (got[want == 0] != 0).any():
        raise RuntimeError("torch's float8_e4m3fn conversion is not round-to-nearest-even")


def dequantize_fp8_block(q, scale_inv):
    R, C = q.shape
    s = scale_inv.to(torch.float64).repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)
    return q.to(torch.float64) * s[:R, :C]


def write_safetensors(path, tensors):
    save_file({k: tensors[k].contiguous() for k in sorted(tensors)}, str(path), metadata={"format": "pt"})


def write_index(case_dir, shards):
    """shards: {file name: {tensor name: tensor}}"""
    weight_map, total = {}, 0
    for fname, tensors in shards.items():
        for name, t in tensors.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (case_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def read_checkpoint(case_dir):
    """Every tensor of the checkpoint (all shards), as stored."""
    index = case_dir / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
             else ["model.safetensors"])
    out = {}
    for fname in files:
        with safe_open(str(case_dir / fname), framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def dequantized_float64(stored):
    """The weights a float64 reference uses: FP8 values times their scale, others upcast."""
    out = {}
    for name, t in stored.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            out[name] = dequantize_fp8_block(t, stored[name + "_scale_inv"])
        else:
            out[name] = t.to(torch.float64)
    return out


def write_config(case_dir, c):
    cfg = dict(c)
    cfg["transformers_version"] = transformers.__version__
    (case_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def model_class(c):
    return {"deepseek_v3": DeepseekV3ForCausalLM, "deepseek_v2": DeepseekV2ForCausalLM}[c["model_type"]]


def load_hf_config(case_dir):
    cfg = AutoConfig.from_pretrained(str(case_dir))
    # the quantization_config of the fp8 case describes the files, which this script reads and
    # dequantizes itself; the reference model is a plain float64 one
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    return cfg


def new_model(hf_cfg):
    with torch.device("cpu"):
        model = model_class({"model_type": hf_cfg.model_type})(hf_cfg)
    model.set_attn_implementation("sdpa")  # float64 softmax (eager's runs in float32)
    model.set_experts_implementation("eager")  # the plain per-expert loop
    return model.eval()


def check_save_roundtrip(case_dir, ondisk_main):
    """transformers' save conversion of the in-memory model gives back our on-disk tensors."""
    saved = read_checkpoint(case_dir)
    if set(saved) != set(ondisk_main):
        raise RuntimeError(f"save_pretrained names differ: {sorted(set(saved) ^ set(ondisk_main))[:8]}")
    for k, t in saved.items():
        if t.dtype != ondisk_main[k].dtype or not torch.equal(t, ondisk_main[k]):
            raise RuntimeError(f"save_pretrained changed {k}")


def write_case_checkpoint(case, c, case_dir, weights_f32):
    """Write config.json and the weights of one case; return the stored tensors."""
    name, _, _, storage = case
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    write_config(case_dir, c)
    main = {k: v for k, v in weights_f32.items() if not is_mtp_name(c, k)}
    mtp = {k: v for k, v in weights_f32.items() if is_mtp_name(c, k)}

    if storage in ("f32", "bf16"):
        hf_cfg = load_hf_config(case_dir)
        model = new_model(hf_cfg)
        model.load_state_dict(to_memory_layout(main, "", "", c["n_routed_experts"]), strict=True)
        if storage == "bf16":
            model = model.to(torch.bfloat16)
        model.save_pretrained(str(case_dir), safe_serialization=True)
        for extra in ("generation_config.json",):
            (case_dir / extra).unlink(missing_ok=True)
        write_config(case_dir, c)  # save_pretrained rewrote it in transformers' own layout
        stored_main = dict(main)
        if storage == "bf16":
            # model.to(bfloat16) also converted the correction bias; the released checkpoints keep
            # it in float32 (spec section 5.2), so rewrite the file with it restored
            stored_main = {k: (v if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16))
                           for k, v in main.items()}
        check_save_roundtrip(case_dir, {k: (v.to(torch.bfloat16) if storage == "bf16" else v)
                                        for k, v in main.items()})
        if storage == "bf16":
            write_safetensors(case_dir / "model.safetensors", stored_main)
        if mtp:
            stored_mtp = dict(mtp)
            (case_dir / "model.safetensors").rename(case_dir / "model-00001-of-00002.safetensors")
            write_safetensors(case_dir / "model-00002-of-00002.safetensors", stored_mtp)
            write_index(case_dir, {"model-00001-of-00002.safetensors": stored_main,
                                   "model-00002-of-00002.safetensors": stored_mtp})
    elif storage == "fp8":
        def convert(tensors):
            out = {}
            for k, v in tensors.items():
                if FP8_NAME.search(k):
                    q, s = quantize_fp8_block(v)
                    out[k] = q
                    out[k[: -len(".weight")] + ".weight_scale_inv"] = s
                elif k.endswith("e_score_correction_bias"):
                    out[k] = v
                else:
                    out[k] = v.to(torch.bfloat16)
            return out
        stored_main, stored_mtp = convert(main), convert(mtp)
        # a weight and its scale in different shards (spec section 5.1)
        moved = "model.layers.1.self_attn.kv_b_proj.weight_scale_inv"
        stored_mtp[moved] = stored_main.pop(moved)
        write_safetensors(case_dir / "model-00001-of-00002.safetensors", stored_main)
        write_safetensors(case_dir / "model-00002-of-00002.safetensors", stored_mtp)
        write_index(case_dir, {"model-00001-of-00002.safetensors": stored_main,
                               "model-00002-of-00002.safetensors": stored_mtp})
    else:
        raise ValueError(storage)
    stored = read_checkpoint(case_dir)
    return stored


# --------------------------------------------------------------------------------------------
# Patches of the reference model
# --------------------------------------------------------------------------------------------


def _float64_variant(fn, replacements):
    """fn recompiled from its source with the float32 casts replaced by float64 ones. The logic
    is transformers' own; only the precision changes."""
    src = textwrap.dedent(inspect.getsource(fn))
    for old, new in replacements:
        if old not in src:
            raise RuntimeError(f"{fn.__qualname__}: '{old}' not found; the float64 patch needs review")
        src = src.replace(old, new)
    ns = {}
    exec(compile(src, f"<float64 variant of {fn.__module__}.{fn.__qualname__}>", "exec"), fn.__globals__, ns)
    return ns[fn.__name__]


# (arch, owner, attribute, replacements, description)
_F32_TO_F64 = [("hidden_states.to(torch.float32)", "hidden_states.to(torch.float64)")]
_ROTARY = [(".float()", ".double()"), ("dtype=torch.float)", "dtype=torch.float64)")]
FLOAT64_PATCHES = [
    ("deepseek_v3", hf_v3.DeepseekV3RMSNorm, "forward", _F32_TO_F64,
     "DeepseekV3RMSNorm.forward normalizes in float32; made float64"),
    ("deepseek_v3", hf_v3.DeepseekV3TopkRouter, "forward", [("torch.float32", "torch.float64")],
     "DeepseekV3TopkRouter.forward computes logits, sigmoid and weights in float32; made float64"),
    ("deepseek_v3", hf_v3.DeepseekV3RotaryEmbedding, "forward", _ROTARY,
     "DeepseekV3RotaryEmbedding.forward forms theta = pos * inv_freq and cos/sin in float32; made float64 "
     "(inv_freq keeps transformers' float32 values)"),
    ("deepseek_v2", hf_v2.DeepseekV2RMSNorm, "forward", _F32_TO_F64,
     "DeepseekV2RMSNorm.forward normalizes in float32; made float64"),
    ("deepseek_v2", hf_v2.DeepseekV2TopkRouter, "forward", [("torch.float32", "torch.float64")],
     "DeepseekV2TopkRouter.forward computes logits, softmax and weights in float32; made float64"),
    ("deepseek_v2", hf_v2.DeepseekV2RotaryEmbedding, "forward", _ROTARY,
     "DeepseekV2RotaryEmbedding.forward forms theta and the complex rotation in float32/complex64; made "
     "float64/complex128 (inv_freq keeps transformers' float32 values)"),
    ("deepseek_v2", hf_v2, "apply_rotary_emb", [(".float()", ".double()")],
     "modeling_deepseek_v2.apply_rotary_emb casts q_pe/k_pe to float32 (complex64) to rotate; made complex128"),
]


@contextlib.contextmanager
def float64_internals():
    """Within the block, transformers' float32 internals run in float64 (see FLOAT64_PATCHES)."""
    saved = []
    try:
        for _, owner, attr, repl, _ in FLOAT64_PATCHES:
            saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, _float64_variant(getattr(owner, attr), repl))
        yield
    finally:
        for owner, attr, fn in reversed(saved):
            setattr(owner, attr, fn)


def float64_patch_notes(arch):
    return [f"precision: {d}" for a, _, _, _, d in FLOAT64_PATCHES if a == arch]


def yarn_get_mscale(s, m):
    return 0.1 * m * math.log(s) + 1.0 if s > 1 else 1.0


def expected_rope(c):
    """(inv_freq float64 [dr/2], attention_factor, softmax scale) per deepmoe's semantics."""
    d, b = c["qk_rope_head_dim"], float(c["rope_theta"])
    i = torch.arange(0, d // 2, dtype=torch.float64)
    extra = b ** (-2.0 * i / d)
    scale = (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]) ** -0.5
    rs = c.get("rope_scaling")
    if not rs:
        return extra, 1.0, scale
    s, L0 = float(rs["factor"]), float(rs["original_max_position_embeddings"])

    def corr(r):
        return d * math.log(L0 / (2 * math.pi * r)) / (2 * math.log(b))

    low, high = max(math.floor(corr(rs["beta_fast"])), 0), min(math.ceil(corr(rs["beta_slow"])), d - 1)
    if low == high:
        high += 0.001
    ramp = ((i - low) / (high - low)).clamp(0, 1)
    inv_freq = extra / s * ramp + extra * (1 - ramp)
    af = yarn_get_mscale(s, rs["mscale"]) / yarn_get_mscale(s, rs["mscale_all_dim"])
    return inv_freq, af, scale * yarn_get_mscale(s, rs["mscale_all_dim"]) ** 2


def attention_modules(module):
    return [m for m in module.modules() if isinstance(m, (hf_v3.DeepseekV3Attention, hf_v2.DeepseekV2Attention))]


def apply_semantic_patches(c, model, extra_modules, patches, checks):
    """Bring the reference model to deepmoe's semantics; record what was changed."""
    eps = c["rms_norm_eps"]
    mods = attention_modules(model) + [a for m in extra_modules for a in attention_modules(m)]
    # (c) transformers builds q_a_layernorm / kv_a_layernorm with the default eps 1e-6
    # (DeepseekV{2,3}Attention.__init__: DeepseekV3RMSNorm(self.q_lora_rank), no eps argument);
    # deepmoe uses config.rms_norm_eps for every norm.
    changed = False
    for a in mods:
        for norm in (a.q_a_layernorm, a.kv_a_layernorm):
            if norm is not None and norm.variance_epsilon != eps:
                norm.variance_epsilon = eps
                changed = True
    if changed:
        patches.append(f"semantics: q_a_layernorm/kv_a_layernorm eps set to config.rms_norm_eps={eps} "
                       "(DeepseekV3Attention.__init__/DeepseekV2Attention.__init__ build them with the "
                       "RMSNorm default 1e-6)")
    else:
        checks.append("q_a_layernorm/kv_a_layernorm eps: transformers' default 1e-6 equals rms_norm_eps here "
                      "(the eps patch would be a no-op)")
    # (a) softmax scale (dn+dr)^-0.5 * mscale(factor, mscale_all_dim)^2
    inv_freq, af, scale = expected_rope(c)
    bad = [a for a in mods if not math.isclose(a.scaling, scale, rel_tol=1e-15)]
    if bad:
        got = bad[0].scaling
        for a in mods:
            a.scaling = scale
        patches.append(f"semantics: attention softmax scale {got!r} -> {scale!r} "
                       "((qk_nope+qk_rope)^-0.5 * yarn_get_mscale(factor, mscale_all_dim)^2)")
    else:
        checks.append(f"softmax scale = {scale!r} as expected (yarn_apply_mscale in DeepseekV*Attention.__init__)")
    # YaRN attention_factor on cos/sin and the inverse frequencies
    rot = model.model.rotary_emb
    if not math.isclose(rot.attention_scaling, af, rel_tol=1e-15):
        patches.append(f"semantics: rotary attention_scaling {rot.attention_scaling!r} -> {af!r}")
        rot.attention_scaling = af
    else:
        checks.append(f"rotary attention_factor = {af!r} as expected (_compute_yarn_parameters)"
                      if c.get("rope_scaling") else "rotary: no scaling, attention_factor 1")
    hf_inv = rot.inv_freq.to(torch.float64)
    rel = ((hf_inv - inv_freq).abs() / inv_freq).max().item()
    if rel > 1e-6:
        raise RuntimeError(f"inv_freq differs from the spec formula by {rel:.3g} (relative)")
    checks.append(f"inv_freq (float32 in transformers) within {rel:.2g} relative of the float64 formula")


def check_rope_layout(c, model):
    """(b) The rotation transformers applies pairs x[2i] with x[2i+1] (the checkpoint's interleaved
    layout): q.k of rotated vectors equals the explicit interleaved formula."""
    gen = torch.Generator().manual_seed(7)
    T, d = 6, c["qk_rope_head_dim"]
    pos = torch.tensor([[0, 1, 2, 5, 9, 130]])
    q = torch.randn(1, 1, T, d, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 1, T, d, generator=gen, dtype=torch.float64)
    inv_freq, af, _ = expected_rope(c)
    inv_freq = model.model.rotary_emb.inv_freq.to(torch.float64)  # compare layout, not rounding

    def explicit(x):
        th = pos[0, :, None].to(torch.float64) * inv_freq
        cos, sin = th.cos() * af, th.sin() * af
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y = torch.empty_like(x)
        y[..., 0::2] = x0 * cos - x1 * sin
        y[..., 1::2] = x0 * sin + x1 * cos
        return y

    if c["model_type"] == "deepseek_v3":
        if not model.config.rope_interleave:
            raise RuntimeError("rope_interleave is off")
        cos, sin = model.model.rotary_emb(q, pos)
        qr, kr = hf_v3.apply_rotary_pos_emb_interleave(q, k, cos, sin)
    else:
        qr, kr = hf_v2.apply_rotary_emb(q, k, model.model.rotary_emb(q, pos))
    got = qr[0, 0] @ kr[0, 0].T
    want = explicit(q)[0, 0] @ explicit(k)[0, 0].T
    err = (got - want).abs().max().item()
    if err > 1e-10:
        raise RuntimeError(f"rope layout: q.k differs from the interleaved formula by {err}")
    return err


def check_router_mask_fill():
    """(d) Experts of dropped groups are excluded (-inf), even with negative biased scores
    (docs/routing_cases.md B02 (b)): E=8, G=4, TG=1, k=2, bias -0.5 everywhere -> {0, 1}."""
    cfg = hf_v3.DeepseekV3Config(hidden_size=8, n_routed_experts=8, n_group=4, topk_group=1,
                                 num_experts_per_tok=2, norm_topk_prob=True, routed_scaling_factor=1.0)
    r = hf_v3.DeepseekV3TopkRouter(cfg).double()
    s = torch.tensor([0.4, 0.3, 0.3, 0.2, 0.1, 0.05, 0.2, 0.15], dtype=torch.float64)
    with torch.no_grad():
        r.weight.zero_()
        r.weight[:, 0] = torch.log(s / (1 - s))  # logits so that sigmoid = s for input e_0
        r.e_score_correction_bias.fill_(-0.5)
    x = torch.zeros(1, 8, dtype=torch.float64)
    x[0, 0] = 1.0
    with float64_internals():
        _, w, idx = r(x)
    if sorted(idx[0].tolist()) != [0, 1]:
        raise RuntimeError(f"DeepseekV3TopkRouter masked-group fill is not -inf: picked {idx.tolist()}")
    return w


# --------------------------------------------------------------------------------------------
# MTP (DeepSeek-V3 paper section 2.2; embedding first in the concat, as the released weights)
# --------------------------------------------------------------------------------------------


class MtpReference(nn.Module):
    """One MTP module built from transformers' modules. State-dict names: the DeepSeek-V3
    on-disk names under model.layers.<L>., with the decoder-layer tensors under block."""

    def __init__(self, config):
        super().__init__()
        H, V, eps = config.hidden_size, config.vocab_size, config.rms_norm_eps
        self.config = config
        self.embed_tokens = nn.Embedding(V, H)
        self.enorm = hf_v3.DeepseekV3RMSNorm(H, eps=eps)
        self.hnorm = hf_v3.DeepseekV3RMSNorm(H, eps=eps)
        self.eh_proj = nn.Linear(2 * H, H, bias=False)
        self.block = hf_v3.DeepseekV3DecoderLayer(config, layer_idx=config.num_hidden_layers)  # an MoE layer
        self.shared_head = nn.Module()
        self.shared_head.norm = hf_v3.DeepseekV3RMSNorm(H, eps=eps)
        self.shared_head.head = nn.Linear(H, V, bias=False)

    OWN = ("embed_tokens.", "enorm.", "hnorm.", "eh_proj.", "shared_head.")

    @classmethod
    def state_dict_from_disk(cls, ondisk, layer, E):
        p = f"model.layers.{layer}."
        own = {k[len(p):]: v for k, v in ondisk.items() if k.startswith(p) and k[len(p):].startswith(cls.OWN)}
        rest = {k: v for k, v in ondisk.items() if k.startswith(p) and not k[len(p):].startswith(cls.OWN)}
        own.update(to_memory_layout(rest, p, "block.", E))
        return own

    def forward(self, main_hidden, next_tokens, position_ids, rotary_emb):
        """main_hidden: the main model's last_hidden_state (after model.norm) [1, T, H];
        next_tokens: t_{i+1} for i < T-1 and the extra token at T-1 [1, T]."""
        x = self.eh_proj(torch.cat([self.enorm(self.embed_tokens(next_tokens)), self.hnorm(main_hidden)], dim=-1))
        mask = create_causal_mask(config=self.config, inputs_embeds=x, attention_mask=None, cache=None,
                                  position_ids=position_ids)
        y = self.block(x, attention_mask=mask, position_ids=position_ids,
                       position_embeddings=rotary_emb(x, position_ids))
        return self.shared_head.head(self.shared_head.norm(y))


def mtp_cross_check(model, mtp, main_hidden, next_tokens, position_ids, want):
    """The same MTP logits from transformers' generic MtpModel (modeling_layers.py), if present."""
    try:
        from transformers.modeling_layers import MtpModel
    except ImportError:
        return None
    hf = MtpModel(model, 1).to(torch.float64).eval()
    sd = {"layers.0.enorm.weight": mtp.enorm.weight, "layers.0.hnorm.weight": mtp.hnorm.weight,
          "layers.0.eh_proj.weight": mtp.eh_proj.weight, "layers.0.post_norm.weight": mtp.shared_head.norm.weight}
    sd.update({"layers.0.mtp_block." + k: v for k, v in mtp.block.state_dict().items()})
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(("embed_tokens.", "shared_head.", "rotary_emb."))]
    if missing or unexpected:
        raise RuntimeError(f"MtpModel load: missing {missing}, unexpected {unexpected}")
    for a in attention_modules(hf):
        a.q_a_layernorm.variance_epsilon = a.kv_a_layernorm.variance_epsilon = model.config.rms_norm_eps
    h = hf.forward_layer(0, main_hidden, position_ids, None, input_ids=next_tokens)
    got = hf._project_to_logits(h)[0]
    return ((got - want).abs().max() / want.abs().max()).item()


# --------------------------------------------------------------------------------------------
# Reference forward and margins
# --------------------------------------------------------------------------------------------


def route_margins(c, x, weight, bias):
    """Recompute the routing of router inputs x [T, H] in float64: (selected sets, min expert
    gap, min group gap)."""
    x, weight = x.to(torch.float64), weight.to(torch.float64)
    logits = x @ weight.T
    s = logits.sigmoid() if c["scoring_func"] == "sigmoid" else logits.softmax(-1)
    sc = s + bias.to(torch.float64) if bias is not None else s.clone()
    T, E = sc.shape
    G, TG, k = c["n_group"], c["topk_group"], c["num_experts_per_tok"]
    group_gap = math.inf
    if G > 1:
        gs = sc.view(T, G, E // G).topk(2, dim=-1).values.sum(-1)
        ordered = gs.sort(dim=-1, descending=True, stable=True)
        group_gap = (ordered.values[:, TG - 1] - ordered.values[:, TG]).min().item()
        keep = torch.zeros(T, G, dtype=torch.bool)
        keep.scatter_(1, ordered.indices[:, :TG], True)
        sc = sc.masked_fill(~keep.repeat_interleave(E // G, dim=1), -math.inf)
    ordered = sc.sort(dim=-1, descending=True, stable=True)
    expert_gap = (ordered.values[:, k - 1] - ordered.values[:, k]).min().item()
    return [sorted(r) for r in ordered.indices[:, :k].tolist()], expert_gap, group_gap


class RouterProbe:
    """Forward hooks on the gate modules: router inputs and transformers' choices."""

    def __init__(self, modules):
        self.records = []
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, args, output):
        self.records.append((module, args[0].detach().reshape(-1, args[0].shape[-1]), output[2].detach()))

    def close(self):
        for h in self.handles:
            h.remove()


def routers(module):
    return [m for m in module.modules() if isinstance(m, (hf_v3.DeepseekV3TopkRouter, hf_v2.DeepseekV2TopkRouter))]


def logit_gap_rel(logits):
    top2 = logits.topk(2, dim=-1).values
    return ((top2[:, 0] - top2[:, 1]) / logits.abs().amax(dim=-1)).min().item()


@torch.no_grad()
def run_sequence(c, model, mtp, tokens, positions, mtp_next):
    """float64 logits [T, V] (and MTP logits) of one sequence, plus its margins."""
    ids = torch.tensor([tokens])
    pos = torch.tensor([positions])
    probe = RouterProbe(routers(model) + (routers(mtp) if mtp is not None else []))
    captured = {}
    hook = model.model.norm.register_forward_hook(lambda m, a, o: captured.__setitem__("h", o))
    try:
        out = model(input_ids=ids, position_ids=pos, use_cache=False)
        logits = out.logits[0]
        mtp_logits = None
        if mtp is not None:
            nxt = torch.tensor([tokens[1:] + [mtp_next]])
            mtp_logits = mtp(captured["h"], nxt, pos, model.model.rotary_emb)[0]
    finally:
        probe.close()
        hook.remove()
    margins = {"logit_gap_rel": logit_gap_rel(logits), "expert_gap": math.inf, "group_gap": math.inf}
    if mtp_logits is not None:
        margins["logit_gap_rel"] = min(margins["logit_gap_rel"], logit_gap_rel(mtp_logits))
    for module, x, hf_idx in probe.records:
        bias = getattr(module, "e_score_correction_bias", None)
        sel, eg, gg = route_margins(c, x, module.weight, bias)
        if sel != [sorted(r) for r in hf_idx.tolist()]:
            raise RuntimeError(f"transformers' expert choice {hf_idx.tolist()} differs from the recomputed {sel}")
        margins["expert_gap"] = min(margins["expert_gap"], eg)
        margins["group_gap"] = min(margins["group_gap"], gg)
    return logits, mtp_logits, captured["h"], margins


def margins_ok(m):
    return m["logit_gap_rel"] >= LOGIT_GAP_REL and m["expert_gap"] >= ROUTE_GAP and m["group_gap"] >= ROUTE_GAP


class Reference:
    """The float64 reference model of one case, read back from its files."""

    def __init__(self, case_name, c, case_dir):
        self.c = c
        self.patches, self.checks = [], []
        stored = read_checkpoint(case_dir)
        w = dequantized_float64(stored)
        hf_cfg = load_hf_config(case_dir)
        self.model = new_model(hf_cfg)
        E = c["n_routed_experts"]
        main = {k: v for k, v in w.items() if not is_mtp_name(c, k)}
        self.model.load_state_dict(to_memory_layout(main, "", "", E), strict=True)
        self.model.to(torch.float64)
        self.mtp = None
        if c.get("num_nextn_predict_layers"):
            self.mtp = MtpReference(self.model.config).eval()
            self.mtp.load_state_dict(MtpReference.state_dict_from_disk(w, c["num_hidden_layers"], E), strict=True)
            self.mtp.to(torch.float64)
        self._check_and_patch(case_dir, stored)

    def _check_and_patch(self, case_dir, stored):
        """The checks and patches every reference gets, once self.model and self.mtp are loaded."""
        c = self.c
        for module in (self.model, self.mtp):
            for t in list(module.parameters()) + list(module.buffers()) if module is not None else []:
                if t.dtype != torch.float64:
                    raise RuntimeError(f"reference tensor not float64: {t.dtype} {tuple(t.shape)}")
        self.patches += float64_patch_notes(c["model_type"])
        self.patches.append("attention: attn_implementation='sdpa' (float64 on CPU; transformers' eager "
                            "attention takes its softmax in float32), experts_implementation='eager'")
        apply_semantic_patches(c, self.model, [self.mtp] if self.mtp is not None else [], self.patches, self.checks)
        with float64_internals():
            err = check_rope_layout(c, self.model)
        self.checks.append(f"rope layout: interleaved pairs (x[2i], x[2i+1]); q.k equals the explicit formula "
                           f"within {err:.1g}")
        if c["model_type"] == "deepseek_v3":
            check_router_mask_fill()
            self.checks.append("DeepseekV3TopkRouter: experts of dropped groups get -inf (routing_cases B02 (b))")
        self.check_against_from_pretrained(case_dir, stored)

    def check_against_from_pretrained(self, case_dir, stored):
        """Our loading equals transformers' from_pretrained (not for fp8, whose quantizer this
        script does not use)."""
        if any(t.dtype == torch.float8_e4m3fn for t in stored.values()):
            return
        hf = model_class(self.c).from_pretrained(str(case_dir), dtype=torch.float32)
        ours = self.model.state_dict()
        for k, v in hf.state_dict().items():
            if not torch.equal(v.to(torch.float64), ours[k]):
                raise RuntimeError(f"from_pretrained differs at {k}")
        self.checks.append("weights equal transformers' from_pretrained of the same directory")

    def cross_check_mtp(self, name, main_h, next_tokens, position_ids, mtp_logits):
        """MTP logits of the first sequence against transformers' generic MtpModel."""
        with float64_internals():
            cross = mtp_cross_check(self.model, self.mtp, main_h, next_tokens, position_ids, mtp_logits)
        if cross is None:
            self.checks.append("MTP: transformers has no MtpModel to cross-check against")
        elif cross > 1e-12:
            raise RuntimeError(f"{name}: MTP logits differ from transformers' MtpModel by {cross}")
        else:
            self.checks.append(f"MTP logits equal transformers' generic MtpModel "
                               f"(modeling_layers.MtpModel.forward_layer) within {cross:.1g} relative")

    def run(self, tokens, positions, mtp_next):
        with float64_internals():
            return run_sequence(self.c, self.model, self.mtp, tokens, positions, mtp_next)

    def run_unpatched_precision(self, tokens, positions, mtp_next):
        """The same forward without the float64 patches (transformers' float32 internals)."""
        return run_sequence(self.c, self.model, self.mtp, tokens, positions, mtp_next)


def draw_inputs(name, refs, seed):
    """Draw token sequences (redrawing until all margins hold for every model in refs)."""
    V = refs[0].c["vocab_size"]
    has_mtp = refs[0].mtp is not None
    sequences, attempts = [], []
    for i, (T, p0) in enumerate(SEQUENCE_SHAPES):
        for attempt in range(1000):
            gen = torch.Generator().manual_seed(seed * 1000 + i * 100 + attempt)
            tokens = torch.randint(0, V, (T,), generator=gen).tolist()
            mtp_next = torch.randint(0, V, (1,), generator=gen).item() if has_mtp else None
            positions = list(range(p0, p0 + T))
            results = [r.run(tokens, positions, mtp_next) for r in refs]
            if all(margins_ok(res[3]) for res in results):
                break
        else:
            raise RuntimeError(f"{name}: no inputs with clear margins for sequence {i}")
        seq = {"tokens": tokens, "positions": positions}
        if has_mtp:
            seq["mtp_next_token"] = mtp_next
        sequences.append(seq)
        attempts.append(attempt)
    return sequences, attempts


# --------------------------------------------------------------------------------------------
# Training-gradient fixture (case v3)
# --------------------------------------------------------------------------------------------

GRADIENT_CASE = "v3"
GRADIENT_LENGTHS = [7, 5]  # one sequence of each length, positions 0..T-1
GRADIENT_ROUTE_GAP = 1e-2  # routing margins of the gradient sequences (stricter than ROUTE_GAP)
GRADIENT_DTYPE = torch.float32  # of the stored gradients
GRADIENT_FD_STEP = 1e-5  # central finite difference step on one weight entry
GRADIENT_FD_RTOL = 1e-6

GRADIENT_DEFINITION = (
    "loss = (sum over both sequences and every position t of -log softmax(logits[t])[labels[t]]) / (total "
    "number of positions), where each sequence runs alone (batch 1, no KV cache, position_ids 0..T-1, "
    "causal attention within the sequence) and labels[t] is the token after input_ids[t] in the drawn "
    "window; the gradients are d loss / d parameter for every trainable parameter of the main model "
    "(not the MTP module, not e_score_correction_bias), under the on-disk names and shapes.")

GRADIENT_NOTES = (
    "Computed by PyTorch autograd through transformers' DeepseekV3ForCausalLM in float64, set up as "
    "for reference.json (same float64 precision patches and semantic patches; eval mode, no dropout). "
    "The cross entropy is taken from the logits by this script (transformers' loss path is not used; "
    "DeepseekV3 adds no router aux loss anyway). Routing is hard top-k: the expert choice is not "
    "differentiated; gradient reaches mlp.gate.weight only through the selected experts' sigmoid "
    "scores (normalized over the top-k, times routed_scaling_factor), and routed experts no token "
    "chose get zero gradients. transformers keeps the routed experts fused (experts.gate_up_proj "
    "[E, 2M, H], experts.down_proj [E, H, M]); they are split back to experts.<e>.{gate,up,down}_proj. "
    "Inputs were redrawn until every routing decision has a margin >= 1e-2 (k-th vs (k+1)-th biased "
    "score, and kept vs next group score), so a small weight perturbation does not change the routing.")


def from_memory_layout(mem, E):
    """Inverse of to_memory_layout (prefix ''): fused experts.gate_up_proj [E, 2M, H] and
    experts.down_proj [E, H, M] back to per-expert on-disk tensors."""
    out = {}
    for name, t in mem.items():
        m = re.match(r"(.*mlp\.experts)\.(gate_up_proj|down_proj)$", name)
        if not m:
            out[name] = t
            continue
        if t.shape[0] != E:
            raise RuntimeError(f"{name}: {tuple(t.shape)} has not {E} experts")
        for e in range(E):
            if m.group(2) == "down_proj":
                out[f"{m.group(1)}.{e}.down_proj.weight"] = t[e].clone()
            else:
                gate, up = t[e].chunk(2, dim=0)
                out[f"{m.group(1)}.{e}.gate_proj.weight"] = gate.clone()
                out[f"{m.group(1)}.{e}.up_proj.weight"] = up.clone()
    return out


def memory_entry(name, index, M):
    """The in-memory parameter name and index of entry `index` of on-disk tensor `name` (written
    out separately from from_memory_layout, so that the finite differences check the mapping)."""
    m = re.match(r"(.*mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", name)
    if not m:
        return name, index
    e, r, col = int(m.group(2)), index[0], index[1]
    if m.group(3) == "down_proj":
        return m.group(1) + ".down_proj", (e, r, col)
    return m.group(1) + ".gate_up_proj", (e, r + (M if m.group(3) == "up_proj" else 0), col)


def gradient_loss(model, sequences):
    """The loss of GRADIENT_DEFINITION (a float64 scalar) and the experts transformers chose
    (one [T, k] tensor per router call)."""
    probe = RouterProbe(routers(model))
    try:
        total, n = 0.0, 0
        for s in sequences:
            T = len(s["input_ids"])
            out = model(input_ids=torch.tensor([s["input_ids"]]), position_ids=torch.arange(T)[None],
                        use_cache=False)
            logp = torch.log_softmax(out.logits[0], dim=-1)
            total = total - logp.gather(1, torch.tensor(s["labels"])[:, None]).sum()
            n += T
    finally:
        probe.close()
    return total / n, [idx for _, _, idx in probe.records]


def draw_gradient_inputs(ref, seed):
    """Token windows w of length T+1 (input_ids = w[:T], labels = w[1:]), redrawn until every
    routing decision of input_ids has a margin >= GRADIENT_ROUTE_GAP."""
    V = ref.c["vocab_size"]
    sequences, mins, attempts = [], {"expert_gap": math.inf, "group_gap": math.inf}, []
    for i, T in enumerate(GRADIENT_LENGTHS):
        for attempt in range(1000):
            gen = torch.Generator().manual_seed(10**7 + seed * 1000 + i * 100 + attempt)
            w = torch.randint(0, V, (T + 1,), generator=gen).tolist()
            with float64_internals():
                m = run_sequence(ref.c, ref.model, None, w[:T], list(range(T)), None)[3]
            if m["expert_gap"] >= GRADIENT_ROUTE_GAP and m["group_gap"] >= GRADIENT_ROUTE_GAP:
                break
        else:
            raise RuntimeError(f"gradient fixture: no inputs with routing margins >= {GRADIENT_ROUTE_GAP}")
        sequences.append({"input_ids": w[:T], "labels": w[1:]})
        attempts.append(attempt)
        for k in mins:
            mins[k] = min(mins[k], m[k])
    return sequences, mins, attempts


def write_gradient_fixture(ref, case_dir, seed):
    """gradients.safetensors / gradients.json of case_dir (see GRADIENT_DEFINITION). Returns a
    summary line."""
    c, model = ref.c, ref.model
    E, M = c["n_routed_experts"], c["moe_intermediate_size"]
    sequences, mins, attempts = draw_gradient_inputs(ref, seed)
    checks = []
    params = dict(model.named_parameters())
    if model.lm_head.weight is model.model.embed_tokens.weight:
        raise RuntimeError("lm_head is tied to embed_tokens")

    # transformers' own causal-LM loss (labels shifted inside) on the first T-1 positions equals
    # ours: nothing (no router aux loss) is added to the cross entropy. ForCausalLMLoss casts the
    # logits to float32 (logits.float()), hence the float32-level agreement and our own loss.
    loss_diff = 0.0
    with torch.no_grad(), float64_internals():
        for s in sequences:
            T = len(s["input_ids"])
            ids = torch.tensor([s["input_ids"]])
            out = model(input_ids=ids, position_ids=torch.arange(T)[None], labels=ids, use_cache=False)
            logp = torch.log_softmax(out.logits[0], dim=-1)
            ours = -logp[:-1].gather(1, torch.tensor(s["labels"][:-1])[:, None]).mean()
            loss_diff = max(loss_diff, abs(out.loss.item() - ours.item()) / abs(ours.item()))
    if loss_diff > 1e-6:
        raise RuntimeError(f"transformers' loss differs from the cross entropy by {loss_diff:.3g} relative")
    checks.append(f"transformers' loss (labels=input_ids, shifted inside) equals this cross entropy on the first "
                  f"T-1 positions within {loss_diff:.1g} relative (it casts the logits to float32): no aux loss "
                  "is added; the fixture's loss is computed from the float64 logits by this script")

    # the router logits of each call keep their gradient (the router's first output is not used
    # downstream; the logits' gradient arrives through sigmoid -> gather of the top-k -> weights)
    router_calls = []

    def keep_router_logits(module, args, output):
        output[0].retain_grad()
        router_calls.append((module, args[0].detach().reshape(-1, args[0].shape[-1]), output[0], output[2].detach()))

    router_names = {m: n for n, m in model.named_modules() if m in routers(model)}
    handles = [m.register_forward_hook(keep_router_logits) for m in router_names]
    model.zero_grad(set_to_none=True)
    try:
        with float64_internals():
            loss, routes = gradient_loss(model, sequences)
            loss.backward()
    finally:
        for hd in handles:
            hd.remove()
    grads_mem = {}
    for n, p in params.items():
        if p.grad is None:
            raise RuntimeError(f"no gradient for {n}")
        if p.grad.dtype != torch.float64:
            raise RuntimeError(f"gradient of {n} is {p.grad.dtype}")
        grads_mem[n] = p.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    grads = from_memory_layout(grads_mem, E)

    # names and shapes: the on-disk main-model tensors less the (untrained) correction bias
    stored = {k: v for k, v in read_checkpoint(case_dir).items()
              if not is_mtp_name(c, k) and not k.endswith("e_score_correction_bias")}
    if set(grads) != set(stored):
        raise RuntimeError(f"gradient names differ from the checkpoint: {sorted(set(grads) ^ set(stored))[:8]}")
    for k, g in grads.items():
        if tuple(g.shape) != tuple(stored[k].shape):
            raise RuntimeError(f"{k}: gradient {tuple(g.shape)} vs stored {tuple(stored[k].shape)}")
    back = to_memory_layout(grads, "", "", E)
    if set(back) != set(grads_mem) or any(not torch.equal(back[k], grads_mem[k]) for k in back):
        raise RuntimeError("to_memory_layout(gradients) does not give back the in-memory gradients")
    checks.append(f"{len(grads)} gradients under the on-disk names and shapes; to_memory_layout of them gives back "
                  "transformers' fused in-memory gradients exactly")

    # routing: hard top-k; unrouted experts and their router rows get no gradient
    chosen = sorted({e for r in routes for e in r.flatten().tolist()})
    unrouted = [e for e in range(E) if e not in chosen]
    gate = [k for k in grads if k.endswith("mlp.gate.weight")]
    for e in unrouted:
        for k in grads:
            if re.search(rf"mlp\.experts\.{e}\.", k) and grads[k].abs().max() != 0:
                raise RuntimeError(f"{k}: unrouted expert with a gradient")
        for k in gate:
            if grads[k][e].abs().max() != 0:
                raise RuntimeError(f"{k}: router row of unrouted expert {e} has a gradient")
    for e in chosen:
        if all(grads[k].abs().max() == 0 for k in grads if re.search(rf"mlp\.experts\.{e}\.", k)):
            raise RuntimeError(f"routed expert {e} has a zero gradient")
    checks.append(f"experts chosen by some token: {chosen}; unrouted: {unrouted} (their expert tensors and router "
                  "rows have exactly zero gradient)")
    # per token, only the selected experts' router logits get gradient, and the router weight's
    # gradient is the sum over calls of dL/dlogits^T x
    want_gate, n_nonzero, n_sel, n_all = {}, 0, 0, 0
    for module, x, logits, idx in router_calls:
        g = logits.grad
        selected = torch.zeros_like(g, dtype=torch.bool).scatter_(1, idx, True)
        if (g[~selected] != 0).any():
            raise RuntimeError(f"{router_names[module]}: gradient at router logits of unselected experts")
        n_nonzero += int((g[selected] != 0).sum())
        n_sel, n_all = n_sel + int(selected.sum()), n_all + g.numel()
        k = router_names[module] + ".weight"
        want_gate[k] = want_gate.get(k, 0) + g.T @ x
    gate_err = max(((want_gate[k] - grads_mem[k]).abs().max() / grads_mem[k].abs().max()).item() for k in want_gate)
    if gate_err > 1e-12:
        raise RuntimeError(f"router weight gradient differs from sum dL/dlogits^T x by {gate_err}")
    checks.append(f"router: dL/d(router logits) is exactly zero for every (token, unselected expert) and nonzero at "
                  f"{n_nonzero} of the {n_sel} selected ones ({n_all} in all); mlp.gate.weight's gradient equals "
                  f"sum dL/dlogits^T x within {gate_err:.1g} relative: the router learns only through the top-k "
                  "weights (sigmoid scores of the chosen experts, normalized, times routed_scaling_factor); the "
                  "choice itself and e_score_correction_bias get no gradient")

    # central finite differences on single entries (largest |gradient| of the tensor)
    expert = max(range(E), key=lambda e: grads[f"model.layers.1.mlp.experts.{e}.gate_proj.weight"].abs().max())
    probes = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_a_layernorm.weight",
              "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.kv_b_proj.weight",
              "model.layers.1.mlp.gate.weight", f"model.layers.1.mlp.experts.{expert}.gate_proj.weight",
              f"model.layers.1.mlp.experts.{expert}.up_proj.weight",
              f"model.layers.1.mlp.experts.{expert}.down_proj.weight",
              "model.layers.1.mlp.shared_experts.up_proj.weight", "model.norm.weight", "lm_head.weight"]
    fd_checks, h = [], GRADIENT_FD_STEP
    with torch.no_grad(), float64_internals():
        for name in probes:
            g = grads[name]
            index = tuple(int(i) for i in numpy.unravel_index(int(g.abs().argmax()), tuple(g.shape)))
            mem_name, mem_index = memory_entry(name, index, M)
            p = params[mem_name]
            orig = p[mem_index].item()
            p[mem_index] = orig + h
            lp, rp = gradient_loss(model, sequences)
            p[mem_index] = orig - h
            lm, rm = gradient_loss(model, sequences)
            p[mem_index] = orig
            if not all(torch.equal(a, b) for a, b in zip(rp + rm, routes + routes)):
                raise RuntimeError(f"finite difference on {name}{list(index)} changed the routing")
            fd = (lp.item() - lm.item()) / (2 * h)
            ad = g[index].item()
            rel = abs(fd - ad) / abs(ad)
            fd_checks.append({"name": name, "index": list(index), "autograd": ad, "finite_difference": fd,
                              "rel_error": rel})
            print(f"[{GRADIENT_CASE}] gradient check {name}{list(index)}: autograd {ad:+.12e}  "
                  f"central difference (h={h:g}) {fd:+.12e}  rel {rel:.1e}")
            if rel > GRADIENT_FD_RTOL:
                raise RuntimeError(f"finite difference disagrees on {name}{list(index)}: {fd} vs {ad}")
        loss_again = gradient_loss(model, sequences)[0].item()
    if loss_again != loss.item():
        raise RuntimeError("the weights were not restored after the finite differences")
    worst = max(f["rel_error"] for f in fd_checks)
    checks.append(f"autograd equals a float64 central difference (step {h:g}) within {worst:.1g} relative on "
                  f"{len(fd_checks)} entries (fd_checks)")

    tensors = {k: v.to(GRADIENT_DTYPE) for k, v in grads.items()}
    tensors["loss"] = loss.detach().reshape(1).to(GRADIENT_DTYPE)
    write_safetensors(case_dir / "gradients.safetensors", tensors)
    meta = {
        "case": GRADIENT_CASE,
        "sequences": sequences,
        "loss": loss.item(),
        "definition": GRADIENT_DEFINITION,
        "versions": versions(),
        "reference_dtype": "float64",
        "gradient_dtype": str(GRADIENT_DTYPE).replace("torch.", ""),
        "patches": ref.patches,
        "checks": checks,
        "fd_checks": fd_checks,
        "min_margins": {"expert_gap": mins["expert_gap"],
                        "group_gap": None if math.isinf(mins["group_gap"]) else mins["group_gap"]},
        "notes": GRADIENT_NOTES,
    }
    (case_dir / "gradients.json").write_text(json.dumps(meta, indent=2) + "\n")
    return (f"[{GRADIENT_CASE}] gradients: loss {loss.item():.17g}, {len(grads)} tensors, routing margins "
            f"expert {mins['expert_gap']:.3e} group {mins['group_gap']:.3e}, redraws {attempts}")


# --------------------------------------------------------------------------------------------


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0]}


NOTES = (
    "Reference logits of randomly initialised small models. Each sequence runs alone (batch 1, no "
    "KV cache) with the given absolute position_ids and causal attention within the sequence; "
    "logits_<i> holds every position. Computed in float64 with transformers' DeepseekV{2,3} modules "
    "on the stored weights (BF16 upcast; FP8 dequantized as float(q) * weight_scale_inv per 128x128 "
    "block), patched as listed. RoPE inverse frequencies are transformers' float32 values. MTP "
    "(v3 cases): h_i = main last_hidden_state after model.norm; next_i = tokens[i+1], and "
    "mtp_next_token for the last position; x_i = eh_proj(concat(enorm(embed(next_i)), hnorm(h_i))); "
    "y = the MTP decoder layer (an MoE layer) on x with the same position_ids and causal mask; "
    "mtp_logits_i = shared_head.head(shared_head.norm(y_i)); nothing is zeroed at position 0. "
    "Margins: every logit row has top1 - top2 >= 1e-3 * max|logit|; every routing decision has a "
    "gap >= 1e-4 between the k-th and (k+1)-th selection score (sigmoid or softmax, plus "
    "e_score_correction_bias for noaux_tc) and, with groups, between the topk_group-th and the next "
    "group score (sum of the top-2 biased scores)."
)


# --------------------------------------------------------------------------------------------
# A checkpoint written by deepmoe's trainer (read here, never written)
# --------------------------------------------------------------------------------------------

TRAINED_CASE = "deepmoe_trained"
TRAINED_SEED = 1005  # of the input draws only; the weights are deepmoe's
TRAINED_SOURCE = {
    "written_by": "deepmoe-train (examples/train); this script only reads config.json and model.safetensors",
    "command": "build/examples/deepmoe-train --source docs:1:docs:'*.md' --config tiny --steps 30 --batch 4 "
               "--seq-len 64 --eval-every 0 --save-every 0 --sample-tokens 0 --out /tmp/dm_trained_run",
    "files": "config.json and model.safetensors of checkpoint-30 (optimizer.safetensors and trainer_state.json "
             "not copied)",
}

TRAINED_NOTES = (
    "Reference logits of a checkpoint written by deepmoe's trainer (see source; configs/train_tiny.json: 2 layers, "
    "one MTP module as model.layers.2.*, vocab 259, float32). The main model is "
    "DeepseekV3ForCausalLM.from_pretrained(<case dir>) with no other argument (float32, the dtype of the "
    "weights: config.json has none), upcast to float64 and patched as listed; see load for what transformers "
    "reported. Sequences and conventions as in the other cases: each sequence runs alone (batch 1, no KV "
    "cache) with the given absolute position_ids, causal attention within the sequence, logits_<i> at every "
    "position; RoPE inverse frequencies are transformers' float32 values. from_pretrained does not load the "
    "MTP module (its tensors are the unexpected keys of load); its reference is the formula of the other "
    "cases on transformers' modules, with the module's own stored embed_tokens and shared_head.head: h_i = "
    "main last_hidden_state after model.norm; next_i = tokens[i+1], and mtp_next_token for the last "
    "position; x_i = eh_proj(concat(enorm(embed_mtp(next_i)), hnorm(h_i))); y = the MTP decoder layer on x; "
    "mtp_logits_i = shared_head.head(shared_head.norm(y_i)). deepmoe trains the module's embedding and head "
    "separately (they start as copies of the main ones), so they differ from model.embed_tokens and lm_head "
    "here; transformers' MtpModel ties them to the main ones instead (see checks). Margins as in the other "
    "cases: top1 - top2 >= 1e-3 * max|logit| in every row, routing gaps >= 1e-4."
)


class _LogRecords(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def normalized_log_message(msg, case_dir):
    """A transformers log message without colour codes or the machine's path, table rows sorted
    (transformers prints the load report's rows in set order)."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", msg).replace(str(case_dir), "<case dir>")
    lines, out, i = msg.splitlines(), [], 0
    while i < len(lines):
        out.append(lines[i])
        if lines[i].strip() and set(lines[i].strip()) <= set("-+|"):
            j = i + 1
            while j < len(lines) and "|" in lines[j]:
                j += 1
            out += sorted(lines[i + 1:j])
            i = j
        else:
            i += 1
    return "\n".join(out)


def from_pretrained_with_report(case_dir, c):
    """transformers' normal from_pretrained of the directory, with what it reported."""
    handler = _LogRecords()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    transformers.logging.disable_default_handler()  # recorded, summarized by main()
    transformers.logging.set_verbosity_warning()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = model_class(c).from_pretrained(str(case_dir), output_loading_info=True)
    finally:
        transformers.logging.set_verbosity_error()
        transformers.logging.enable_default_handler()
        logger.removeHandler(handler)
    report = {
        "call": f"{model_class(c).__name__}.from_pretrained(<case dir>)",
        "missing_keys": sorted(info["missing_keys"]),
        "unexpected_keys": sorted(info["unexpected_keys"]),
        "mismatched_keys": sorted(str(k) for k in info["mismatched_keys"]),
        "error_msgs": list(info["error_msgs"]),
        "log_warnings": [f"{r.levelname} {r.name}: {normalized_log_message(r.getMessage(), case_dir)}"
                         for r in handler.records if r.levelno >= logging.WARNING],
        "python_warnings": [f"{w.category.__name__}: {normalized_log_message(str(w.message), case_dir)}"
                            for w in caught],
    }
    return model, report


def config_differences(c, hf_cfg):
    """Fields of config.json that transformers' config does not hold with the same value."""
    out = []
    for k, v in sorted(c.items()):
        if k == "rope_theta":
            got = hf_cfg.rope_parameters.get("rope_theta")
        elif k == "rope_scaling":
            rp = {kk: vv for kk, vv in hf_cfg.rope_parameters.items() if kk != "rope_theta"}
            got = None if rp == {"rope_type": "default"} else rp
        elif k in ("torch_dtype", "dtype"):
            got = v if hf_cfg.dtype is None else str(hf_cfg.dtype).replace("torch.", "")
        else:
            got = getattr(hf_cfg, k, "<absent>")
        if got != v:
            out.append(f"{k}: config.json {v!r}, transformers {got!r}")
    return out


class TrainedReference(Reference):
    """The float64 reference of a checkpoint deepmoe wrote, with the main model loaded by
    transformers' from_pretrained from the files as they are."""

    def __init__(self, case_dir):
        c = json.loads((case_dir / "config.json").read_text())
        self.c = c
        self.patches, self.checks = [], []
        stored = read_checkpoint(case_dir)
        not_f32 = sorted(k for k, t in stored.items() if t.dtype != torch.float32)
        if not_f32:
            raise RuntimeError(f"{TRAINED_CASE}: expected float32 tensors only: {not_f32[:8]}")
        model, self.load_report = from_pretrained_with_report(case_dir, c)
        r, L = self.load_report, c["num_hidden_layers"]
        if r["missing_keys"] or r["mismatched_keys"] or r["error_msgs"]:
            raise RuntimeError(f"{TRAINED_CASE}: from_pretrained: {r}")
        not_mtp = [k for k in r["unexpected_keys"] if not k.startswith(f"model.layers.{L}.")]
        if not_mtp:
            raise RuntimeError(f"{TRAINED_CASE}: from_pretrained ignored tensors of the main model: {not_mtp}")
        dtypes = sorted({str(t.dtype) for t in model.state_dict().values()})
        if dtypes != ["torch.float32"]:
            raise RuntimeError(f"{TRAINED_CASE}: from_pretrained gave {dtypes}")
        self.checks.append(f"{r['call']}: no missing or mismatched keys; the {len(r['unexpected_keys'])} "
                           f"unexpected keys (warned) are all of the MTP module model.layers.{L}.*; weights "
                           "loaded as float32 (config.json has no dtype: transformers takes the weights')")
        diffs = config_differences(c, model.config)
        if diffs:
            raise RuntimeError(f"{TRAINED_CASE}: transformers reads config.json differently: {diffs}")
        self.checks.append(f"config: every one of the {len(c)} fields of deepmoe's config.json is read by "
                           "transformers with the same value (rope_theta and rope_scaling null as "
                           "rope_parameters {rope_theta, rope_type default}); no field patched")
        model.set_attn_implementation("sdpa")
        model.set_experts_implementation("eager")
        self.model = model.eval().to(torch.float64)
        self.stored64 = {k: v.to(torch.float64) for k, v in stored.items()}
        self.mtp = None
        if c.get("num_nextn_predict_layers"):
            self.mtp = MtpReference(self.model.config).eval()
            self.mtp.load_state_dict(
                MtpReference.state_dict_from_disk(self.stored64, L, c["n_routed_experts"]), strict=True)
            self.mtp.to(torch.float64)
        self._check_and_patch(case_dir, stored)

    def check_against_from_pretrained(self, case_dir, stored):
        """Here the model is from_pretrained's: check that it holds the stored tensors."""
        main = {k: v for k, v in self.stored64.items() if not is_mtp_name(self.c, k)}
        want = to_memory_layout(main, "", "", self.c["n_routed_experts"])
        got = self.model.state_dict()
        if set(got) != set(want):
            raise RuntimeError(f"{TRAINED_CASE}: from_pretrained names differ: {sorted(set(got) ^ set(want))[:8]}")
        for k, v in want.items():
            if not torch.equal(got[k], v):
                raise RuntimeError(f"{TRAINED_CASE}: from_pretrained's {k} differs from the stored tensor")
        self.checks.append(f"from_pretrained's weights equal the {len(main)} stored main-model tensors read "
                           "directly from model.safetensors (routed experts fused by transformers)")

    def cross_check_mtp(self, name, main_h, next_tokens, position_ids, mtp_logits):
        """The MTP module through transformers' own loader and MtpModel, where it can."""
        try:
            from transformers.modeling_layers import MtpModel
        except ImportError:
            self.checks.append("MTP: transformers has no MtpModel to cross-check against")
            return
        L = self.c["num_hidden_layers"]
        try:
            MtpModel.from_pretrained(self.model)
            self.checks.append("MTP: MtpModel.from_pretrained(model) loads the module as shipped")
        except RuntimeError as e:
            if "missing" not in str(e):
                raise
            self.checks.append(
                "MTP: MtpModel.from_pretrained(model) as shipped finds no MTP tensor (RuntimeError, weights "
                "missing): it selects them by DeepseekV3ForCausalLM._keys_to_ignore_on_load_unexpected = "
                f"{type(self.model)._keys_to_ignore_on_load_unexpected}, DeepSeek-V3's layer count; with that "
                f"pattern set to model\\.layers\\.{L}\\..* on the loaded model it loads them (below)")
        main = self.model
        main._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{L}\..*"]
        try:
            hf = MtpModel.from_pretrained(main).to(torch.float64).eval()
        finally:
            del main._keys_to_ignore_on_load_unexpected
        mtp = self.mtp
        want = {"layers.0.enorm.weight": mtp.enorm.weight, "layers.0.hnorm.weight": mtp.hnorm.weight,
                "layers.0.eh_proj.weight": mtp.eh_proj.weight,
                "layers.0.post_norm.weight": mtp.shared_head.norm.weight}
        want.update({"layers.0.mtp_block." + k: v for k, v in mtp.block.state_dict().items()})
        got = hf.state_dict()
        for k, v in want.items():
            if k not in got or not torch.equal(got[k], v):
                raise RuntimeError(f"{name}: MtpModel.from_pretrained's {k} differs from the stored tensor")
        for a in attention_modules(hf):
            a.q_a_layernorm.variance_epsilon = a.kv_a_layernorm.variance_epsilon = main.config.rms_norm_eps

        def drafts():
            with torch.no_grad(), float64_internals():
                h = hf.forward_layer(0, main_h, position_ids, None, input_ids=next_tokens)
                return hf._project_to_logits(h)[0]

        def rel(a, b):
            return ((a - b).abs().max() / b.abs().max()).item()

        tied = rel(drafts(), mtp_logits)
        emb_diff = rel(mtp.embed_tokens.weight, main.model.embed_tokens.weight)
        head_diff = rel(mtp.shared_head.head.weight, main.lm_head.weight)
        hf.embed_tokens, hf.shared_head = mtp.embed_tokens, mtp.shared_head.head
        own = rel(drafts(), mtp_logits)
        if own > 1e-12:
            raise RuntimeError(f"{name}: MTP logits differ from transformers' MtpModel (own embedding/head) by {own}")
        if tied > 1e-12:
            raise RuntimeError(f"{name}: transformers' MtpModel (embedding and head tied to the main model's) "
                               f"differs from the reference drafts by {tied}; the stored copies differ from "
                               f"model.embed_tokens / lm_head by {emb_diff} / {head_diff}")
        self.checks.append(
            f"MTP: MtpModel.from_pretrained's {len(want)} module tensors equal the stored ones; MtpModel ties the "
            f"embedding and head to the main model's (model.layers.{L}.embed_tokens and shared_head.head are in its "
            "_keys_to_ignore_on_load_unexpected), as deepmoe's trainer does (it keeps the stored copies equal: "
            f"they differ from model.embed_tokens and lm_head by {emb_diff:.2g} and {head_diff:.2g}); MtpModel's "
            f"drafts as transformers runs them equal mtp_logits_0 within {tied:.1g} relative, and with the stored "
            f"copies put in within {own:.1g}")


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_reference(name, ref, case_dir, sequences, storage, notes, extra=None):
    """reference.safetensors and reference.json of one case; returns the smallest margins."""
    tensors, mins = {}, {"logit_gap_rel": math.inf, "expert_gap": math.inf, "group_gap": math.inf}
    precision_effect = 0.0
    for i, s in enumerate(sequences):
        logits, mtp_logits, main_h, m = ref.run(s["tokens"], s["positions"], s.get("mtp_next_token"))
        if not margins_ok(m):
            raise RuntimeError(f"{name}: margins fail for sequence {i}: {m}")
        for k in mins:
            mins[k] = min(mins[k], m[k])
        tensors[f"logits_{i}"] = logits.to(torch.float32)
        base = ref.run_unpatched_precision(s["tokens"], s["positions"], s.get("mtp_next_token"))
        precision_effect = max(precision_effect, ((base[0] - logits).abs().max() / logits.abs().max()).item())
        if s["positions"][0] != 0:
            # RoPE is relative: without a KV cache a position offset does not change the logits
            shifted = ref.run(s["tokens"], list(range(len(s["tokens"]))), s.get("mtp_next_token"))[0]
            ref.checks.append(
                f"sequence {i} (positions {s['positions'][0]}..{s['positions'][-1]}) has the logits of the same "
                f"tokens at positions 0..{len(s['tokens']) - 1} within "
                f"{((shifted - logits).abs().max() / logits.abs().max()).item():.1g} relative: RoPE scores depend "
                "on relative positions only, so without a KV cache the offset is not observable")
        if mtp_logits is not None:
            tensors[f"mtp_logits_{i}"] = mtp_logits.to(torch.float32)
            precision_effect = max(precision_effect,
                                   ((base[1] - mtp_logits).abs().max() / mtp_logits.abs().max()).item())
            if i == 0:
                nxt = torch.tensor([s["tokens"][1:] + [s["mtp_next_token"]]])
                ref.cross_check_mtp(name, main_h, nxt, torch.tensor([s["positions"]]), mtp_logits)
    write_safetensors(case_dir / "reference.safetensors", tensors)
    ref.checks.append(f"largest effect of the float64 precision patches on the logits: "
                      f"{precision_effect:.2g} relative to max|logit|")
    meta = {
        "case": name,
        "sequences": sequences,
        "versions": versions(),
        "patches": ref.patches,
        "checks": ref.checks,
        "min_margins": {"logit_gap_rel": mins["logit_gap_rel"], "expert_gap": mins["expert_gap"],
                        "group_gap": None if math.isinf(mins["group_gap"]) else mins["group_gap"]},
        "storage": storage,
        "reference_dtype": "float64",
        "notes": notes,
    }
    meta.update(extra or {})
    (case_dir / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    return mins


def main():
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(repo / "tests" / "fixtures" / "model"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # fixed summation order
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    refs, inputs, summary = {}, {}, {}
    for case in CASES:
        name, c, seed, storage = case
        torch.manual_seed(seed)
        case_dir = out / name
        write_case_checkpoint(case, c, case_dir, make_weights(c, seed))
        refs[name] = Reference(name, c, case_dir)

    for case in CASES:
        name, c, seed, storage = case
        if name in INPUTS_SHARED_WITH:
            continue
        group = [refs[name]] + [refs[n] for n, base in INPUTS_SHARED_WITH.items() if base == name]
        torch.manual_seed(seed)
        inputs[name] = draw_inputs(name, group, seed)
    for n, base in INPUTS_SHARED_WITH.items():
        inputs[n] = inputs[base]

    for case in CASES:
        name, c, seed, storage = case
        sequences, attempts = inputs[name]
        mins = write_reference(
            name, refs[name], out / name, sequences,
            {"f32": "float32", "bf16": "bfloat16 (e_score_correction_bias float32)",
             "fp8": "float8_e4m3fn 128x128 block scales for the attention and MLP projections; "
                    "bfloat16 otherwise; e_score_correction_bias float32"}[storage],
            NOTES + (" The weights are those of case v3 quantized; the sequences are v3's."
                     if name == "v3_fp8" else ""))
        summary[name] = (mins, attempts)

    # after every reference file is written: the training-gradient fixture of case v3
    gradient_summary = write_gradient_fixture(refs[GRADIENT_CASE], out / GRADIENT_CASE,
                                              dict((n, s) for n, _, s, _ in CASES)[GRADIENT_CASE])

    # a checkpoint written by deepmoe-train, if present: read, never rewritten
    trained_dir = out / TRAINED_CASE
    if (trained_dir / "config.json").exists():
        ref = refs[TRAINED_CASE] = TrainedReference(trained_dir)
        sequences, attempts = draw_inputs(TRAINED_CASE, [ref], TRAINED_SEED)
        source = dict(TRAINED_SOURCE)
        source["sha256"] = {f: sha256(trained_dir / f) for f in ("config.json", "model.safetensors")}
        mins = write_reference(TRAINED_CASE, ref, trained_dir, sequences,
                               "float32 (as deepmoe-train wrote it)", TRAINED_NOTES,
                               {"source": source, "load": ref.load_report})
        summary[TRAINED_CASE] = (mins, attempts)

    print("case        min logit gap/max|logit|   min expert gap   min group gap   redraws per sequence")
    for name, (mins, attempts) in summary.items():
        gg = "-" if math.isinf(mins["group_gap"]) else f"{mins['group_gap']:.3e}"
        print(f"{name:<11} {mins['logit_gap_rel']:>24.3e}   {mins['expert_gap']:>14.3e}   {gg:>13}   {attempts}")
    print(gradient_summary)
    for name in summary:
        for p in refs[name].patches:
            print(f"[{name}] patch: {p}")
    if TRAINED_CASE in summary:
        r = refs[TRAINED_CASE].load_report
        print(f"[{TRAINED_CASE}] {r['call']}: missing {r['missing_keys']}, mismatched {r['mismatched_keys']}, "
              f"unexpected {len(r['unexpected_keys'])} keys (the MTP module)")
        for w in r["log_warnings"] + r["python_warnings"]:
            print(f"[{TRAINED_CASE}] transformers warned: {w}")
        for chk in refs[TRAINED_CASE].checks:
            print(f"[{TRAINED_CASE}] check: {chk}")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"total size of {out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

#include "core/llama.h"

#include "core/error.h"
#include "core/packed_runtime.h"

#include <ATen/ATen.h>
#include <torch/version.h>

#include <algorithm>
#include <limits>

#include <cmath>

namespace pbllm {

std::vector<float> rope_inverse_frequencies(const ModelConfig& config)
{
    const int half = config.head_dim() / 2;
    const RopeScaling& r = config.rope_scaling;
    std::vector<float> freq(static_cast<std::size_t>(half));
    for (int i = 0; i < half; ++i) {
        float f = 1.0f / std::pow(config.rope_theta, (2.0f * i) / static_cast<float>(config.head_dim()));
        if (r.type == RopeScaling::Type::Linear) {
            f /= r.factor;
        } else if (r.type == RopeScaling::Type::Llama3) {
            // Wavelengths longer than original / low_freq_factor are scaled, shorter than
            // original / high_freq_factor kept; those between blend the two linearly in
            // original / wavelength (transformers' _compute_llama3_parameters, in float32).
            const float original = static_cast<float>(r.original_max_position);
            const float low_wavelen = original / r.low_freq_factor, high_wavelen = original / r.high_freq_factor;
            const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
            if (wavelen > low_wavelen) {
                f /= r.factor;
            } else if (wavelen >= high_wavelen) {
                const float s = (original / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
                f = (1.0f - s) * f / r.factor + s * f;
            }
        }
        freq[static_cast<std::size_t>(i)] = f;
    }
    return freq;
}

RopeTables make_rope_tables(const ModelConfig& config, int max_len)
{
    if (config.sliding_window > 0 && max_len > config.sliding_window)
        throw Error("a sequence of " + std::to_string(max_len) + " positions is longer than the model's sliding "
                    "attention window of " + std::to_string(config.sliding_window) +
                    " (windowed attention is not implemented; use at most " + std::to_string(config.sliding_window) +
                    " tokens: --seqlen, or fewer tokens to generate)");
    const int half = config.head_dim() / 2;
    const std::vector<float> freqs = rope_inverse_frequencies(config);
    at::Tensor cos = at::empty({max_len, half}, at::kFloat);
    at::Tensor sin = at::empty({max_len, half}, at::kFloat);
    float* c = cos.data_ptr<float>();
    float* s = sin.data_ptr<float>();
    for (int i = 0; i < half; ++i) {
        const float freq = freqs[static_cast<std::size_t>(i)];
        for (int pos = 0; pos < max_len; ++pos) {
            const float angle = static_cast<float>(pos) * freq;
            c[pos * half + i] = std::cos(angle);
            s[pos * half + i] = std::sin(angle);
        }
    }
    return {cos, sin};
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, float eps)
{
    const at::Tensor xf = x.to(at::kFloat);
    const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
    return normed.to(x.scalar_type()) * weight;
}

namespace {

/// x: (B, T, heads, head_dim), rotate-half convention.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin)
{
    const std::int64_t half = x.size(-1) / 2;
    const at::Tensor x1 = x.narrow(-1, 0, half);
    const at::Tensor x2 = x.narrow(-1, half, half);
    return at::cat({x1 * cos - x2 * sin, x1 * sin + x2 * cos}, -1);
}

/// Causal softmax(q k^T / sqrt(hd)) v for q (B, H, T, hd) and k, v (B, H, T, hd) already expanded
/// to H heads. libtorch >= 2.0 has a fused kernel; 1.13 does it by hand, a few sequences at a
/// time so the (H, T, T) score tensor stays below glibc's 32 MiB mmap ceiling and off the
/// page-fault path.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v)
{
#if TORCH_VERSION_MAJOR >= 2
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
#else
    const std::int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3);
    const std::int64_t per_sequence = H * T * T * static_cast<std::int64_t>(sizeof(float));
    const std::int64_t chunk = std::clamp<std::int64_t>((16ll << 20) / std::max<std::int64_t>(per_sequence, 1), 1, B);
    const at::Tensor future = at::ones({T, T}, at::TensorOptions().dtype(at::kBool).device(q.device())).triu(1);
    const at::Tensor qs = q * (1.0 / std::sqrt(static_cast<double>(hd)));
    std::vector<at::Tensor> outs;
    for (std::int64_t b = 0; b < B; b += chunk) {
        const std::int64_t n = std::min(chunk, B - b);
        at::Tensor scores = at::matmul(qs.narrow(0, b, n), k.narrow(0, b, n).transpose(-2, -1)).to(at::kFloat);
        scores.masked_fill_(future, -std::numeric_limits<float>::infinity());
        const at::Tensor probs = at::softmax(scores, -1).to(q.scalar_type());
        outs.push_back(at::matmul(probs, v.narrow(0, b, n)));
    }
    return outs.size() == 1 ? outs.front() : at::cat(outs, 0);
#endif
}

} // namespace

at::Tensor for_compute(const at::Tensor& weight)
{
    if (weight.defined() && weight.device().is_cpu() && weight.scalar_type() != at::kFloat)
        return weight.to(at::kFloat);
    return weight;
}

DecoderLayer for_compute(const DecoderLayer& layer)
{
    DecoderLayer out;
    out.attn_norm = for_compute(layer.attn_norm);
    out.ffn_norm = for_compute(layer.ffn_norm);
    out.q_norm = for_compute(layer.q_norm);
    out.k_norm = for_compute(layer.k_norm);
    for (int k = 0; k < kLinearKindCount; ++k) {
        out.linear[k] = for_compute(layer.linear[k]);
        out.bias[k] = for_compute(layer.bias[k]);
    }
    out.packed = layer.packed;
    return out;
}

std::int64_t for_compute_peak_bytes(const Model& model)
{
    auto copy_bytes = [](const at::Tensor& t) {
        return t.defined() && t.device().is_cpu() && t.scalar_type() != at::kFloat ? t.numel() * std::int64_t{4}
                                                                                   : std::int64_t{0};
    };
    std::int64_t layer_bytes = 0;
    for (const DecoderLayer& layer : model.layers) {
        std::int64_t bytes = copy_bytes(layer.attn_norm) + copy_bytes(layer.ffn_norm);
        for (const at::Tensor& w : layer.linear)
            bytes += copy_bytes(w);
        layer_bytes = std::max(layer_bytes, bytes);
    }
    return layer_bytes + copy_bytes(model.output);
}

at::Tensor embed_tokens(const Model& model, const at::Tensor& tokens)
{
    if (tokens.numel() > 0) {
        const std::int64_t lo = tokens.min().item<std::int64_t>(), hi = tokens.max().item<std::int64_t>();
        if (lo < 0 || hi >= model.config.vocab_size)
            throw Error("token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the model's vocabulary of " +
                        std::to_string(model.config.vocab_size));
    }
    // Gather the rows first: only they are converted to the compute precision.
    return for_compute(at::embedding(model.tok_embeddings, tokens.to(model.tok_embeddings.device())));
}

at::Tensor decoder_layer_forward(const ModelConfig& c, const DecoderLayer& layer, const at::Tensor& x,
                                 const RopeTables& rope, const LinearObserver& observer)
{
    const std::int64_t B = x.size(0), T = x.size(1);
    const int H = c.n_heads, KV = c.n_kv_heads, hd = c.head_dim();
    if (T > rope.cos.size(0))
        throw Error("sequence of " + std::to_string(T) + " tokens exceeds the RoPE table of " +
                    std::to_string(rope.cos.size(0)) + " positions");
    auto linear = [&](LinearKind kind, const at::Tensor& input) {
        const kernels::PackedWeights* packed = layer.packed_weight(kind);
        const at::Tensor output = packed ? packed_linear_forward(*packed, input) : at::matmul(input, layer.weight(kind).t());
        if (observer) // W x alone: the quantizer's output energy is tr(W H W^T), whatever the bias
            observer(kind, input, output);
        return layer.bias_of(kind).defined() ? output + layer.bias_of(kind) : output;
    };

    const at::Tensor h = rms_norm(x, layer.attn_norm, c.norm_eps);
    at::Tensor q = linear(LinearKind::Q, h).view({B, T, H, hd});
    at::Tensor k = linear(LinearKind::K, h).view({B, T, KV, hd});
    at::Tensor v = linear(LinearKind::V, h).view({B, T, KV, hd});
    if (layer.q_norm.defined()) { // Qwen3: every head RMS-normalised before RoPE
        q = rms_norm(q, layer.q_norm, c.norm_eps);
        k = rms_norm(k, layer.k_norm, c.norm_eps);
    }
    const at::Tensor cos = rope.cos.narrow(0, 0, T).to(x.device(), x.scalar_type()).view({1, T, 1, hd / 2});
    const at::Tensor sin = rope.sin.narrow(0, 0, T).to(x.device(), x.scalar_type()).view({1, T, 1, hd / 2});
    q = apply_rope(q, cos, sin).transpose(1, 2); // (B, H, T, hd)
    k = apply_rope(k, cos, sin).transpose(1, 2); // (B, KV, T, hd)
    v = v.transpose(1, 2);
    if (KV != H) {
        k = k.repeat_interleave(H / KV, 1);
        v = v.repeat_interleave(H / KV, 1);
    }
    const at::Tensor attn = causal_attention(q, k, v).transpose(1, 2).reshape({B, T, c.q_dim()});
    const at::Tensor x2 = x + linear(LinearKind::O, attn);

    const at::Tensor h2 = rms_norm(x2, layer.ffn_norm, c.norm_eps);
    const at::Tensor gate = linear(LinearKind::Gate, h2);
    const at::Tensor up = linear(LinearKind::Up, h2);
    return x2 + linear(LinearKind::Down, at::silu(gate) * up);
}

at::Tensor output_logits(const Model& model, const at::Tensor& x)
{
    const at::Tensor h = rms_norm(x, for_compute(model.final_norm), model.config.norm_eps);
    return at::matmul(h, for_compute(model.output).t()).to(at::kFloat);
}

at::Tensor forward(const Model& model, const at::Tensor& tokens)
{
    if (tokens.dim() != 2)
        throw Error("forward expects a (batch, time) tensor of token ids");
    const RopeTables rope = make_rope_tables(model.config, static_cast<int>(tokens.size(1)));
    at::Tensor x = embed_tokens(model, tokens);
    for (const DecoderLayer& layer : model.layers)
        x = decoder_layer_forward(model.config, for_compute(layer), x, rope);
    return output_logits(model, x);
}

} // namespace pbllm

#include "core/decoder.h"

#include "core/error.h"
#include "core/llama.h"
#include "core/simd.h"
#include "core/system.h"
#include "core/kernels/matvec.h"
#include "core/packed_runtime.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

namespace pbllm {
namespace {

void check_capacity(int position, int capacity)
{
    if (position >= capacity)
        throw Error("context length of " + std::to_string(capacity) + " tokens reached");
}

// ---- plain-loop CPU decoder -------------------------------------------------------------------

kernels::WeightFormat weight_format(const at::Tensor& W)
{
    switch (W.scalar_type()) {
    case at::kHalf: return kernels::WeightFormat::F16;
    case at::kBFloat16: return kernels::WeightFormat::BF16;
    default: return kernels::WeightFormat::F32;
    }
}


void rms_norm_vec(const float* x, const float* weight, float* out, int n, float eps)
{
    double ss = 0.0;
    for (int i = 0; i < n; ++i)
        ss += static_cast<double>(x[i]) * x[i];
    const float scale = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
    for (int i = 0; i < n; ++i)
        out[i] = x[i] * scale * weight[i];
}

void rope_vec(float* v, int heads, int hd, const float* cos, const float* sin)
{
    const int half = hd / 2;
    for (int h = 0; h < heads; ++h) {
        float* x = v + h * hd;
        for (int i = 0; i < half; ++i) {
            const float a = x[i], b = x[i + half];
            x[i] = a * cos[i] - b * sin[i];
            x[i + half] = a * sin[i] + b * cos[i];
        }
    }
}

/// a . b over n floats: eight independent sums (one vector register), added in a fixed order.
inline float dot(const float* a, const float* b, int n)
{
    float lanes[8] = {};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j)
            lanes[j] += a[i + j] * b[i + j];
    float s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for (; i < n; ++i)
        s += a[i] * b[i];
    return s;
}

/// One head's attention at position `last` over the cached keys and values (rows `stride` floats
/// apart): out = softmax(q . k_t * scale) . v_t, with att (last + 1 floats) as scratch.
PBLLM_MULTIVERSION
void attend_head(const float* q, const float* keys, const float* values, std::size_t stride, int last, int hd,
                 float scale, float* __restrict att, float* __restrict out)
{
    float max_score = -INFINITY;
    for (int t = 0; t <= last; ++t) {
        att[t] = dot(q, keys + static_cast<std::size_t>(t) * stride, hd) * scale;
        max_score = std::max(max_score, att[t]);
    }
    float sum = 0.0f;
    for (int t = 0; t <= last; ++t) {
        att[t] = std::exp(att[t] - max_score);
        sum += att[t];
    }
    std::fill(out, out + hd, 0.0f);
    for (int t = 0; t <= last; ++t) {
        const float a = att[t] / sum;
        const float* v = values + static_cast<std::size_t>(t) * stride;
        int i = 0;
        for (; i + 8 <= hd; i += 8) // groups of eight: one vector each
            for (int j = 0; j < 8; ++j)
                out[i + j] += a * v[i + j];
        for (; i < hd; ++i)
            out[i] += a * v[i];
    }
}

bool reads_directly(const at::Tensor& t)
{
    const at::ScalarType type = t.scalar_type();
    return t.device().is_cpu() && t.is_contiguous() &&
           (type == at::kFloat || type == at::kHalf || type == at::kBFloat16);
}

class CpuDecoder final : public Decoder {
public:
    CpuDecoder(const Model& model, int capacity, const DecoderOptions& options)
        : m_(model), c_(model.config), capacity_(capacity)
    {
        packed_input_.precision = options.activations;
        if (options.int8_head)
            head_int8_ = int8_copy(m_.output);
        for (const NamedTensor& t : m_.named_tensors())
            if (!reads_directly(t.tensor))
                throw Error("the CPU decoder needs contiguous float32, float16 or bfloat16 CPU weights; '" + t.name +
                            "' is not");
        // Norm weights are tiny: float32 copies keep the per-element loops simple.
        for (const DecoderLayer& layer : m_.layers) {
            attn_norm_.push_back(for_compute(layer.attn_norm).contiguous());
            ffn_norm_.push_back(for_compute(layer.ffn_norm).contiguous());
            q_norm_.push_back(for_compute(layer.q_norm).contiguous()); // undefined unless Qwen3
            k_norm_.push_back(for_compute(layer.k_norm).contiguous());
            auto& biases = bias_.emplace_back();
            for (int k = 0; k < kLinearKindCount; ++k)
                if (layer.bias[k].defined())
                    biases[k] = for_compute(layer.bias[k]).contiguous();
        }
        final_norm_ = for_compute(m_.final_norm).contiguous();
        rope_ = make_rope_tables(c_, capacity_);
        const int d = c_.dim, kv = c_.kv_dim();
        x_.resize(d); xb2_.resize(d);
        xb_.resize(std::max(d, c_.q_dim())); // the normalised stream, then the attention's output
        q_.resize(c_.q_dim()); k_.resize(kv); v_.resize(kv);
        hb_.resize(c_.hidden_dim); hb2_.resize(c_.hidden_dim);
        // A row of scores per head (heads run on different threads), rounded up to 16 floats (a cache line).
        att_stride_ = (static_cast<std::size_t>(capacity_) + 15) / 16 * 16;
        att_.resize(static_cast<std::size_t>(c_.n_heads) * att_stride_);
        logits_.resize(c_.vocab_size);
        require_memory(static_cast<std::int64_t>(c_.n_layers) * capacity_ * kv * 2 * 4,
                       "a KV cache of " + std::to_string(capacity_) + " tokens (fewer tokens to generate need less)");
        key_cache_.assign(static_cast<std::size_t>(c_.n_layers) * capacity_ * kv, 0.0f);
        value_cache_.assign(key_cache_.size(), 0.0f);
    }

    const float* step(int token) override
    {
        check_capacity(pos_, capacity_);
        if (token < 0 || token >= c_.vocab_size)
            throw Error("token id " + std::to_string(token) + " is outside the vocabulary");
        const int d = c_.dim, kv = c_.kv_dim(), hd = c_.head_dim(), H = c_.n_heads;
        const int group = c_.n_heads / c_.n_kv_heads;
        const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
        const at::Tensor& emb = m_.tok_embeddings;
        kernels::to_float(weight_format(emb),
                          static_cast<const char*>(emb.data_ptr()) + static_cast<std::int64_t>(token) * d * emb.element_size(),
                          x_.data(), d);
        const float* cos = rope_.cos.data_ptr<float>() + pos_ * (hd / 2);
        const float* sin = rope_.sin.data_ptr<float>() + pos_ * (hd / 2);

        for (int l = 0; l < c_.n_layers; ++l) {
            rms_norm_vec(x_.data(), attn_norm_[l].data_ptr<float>(), xb_.data(), d, c_.norm_eps);
            float* kc = key_cache_.data() + (static_cast<std::size_t>(l) * capacity_) * kv;
            float* vc = value_cache_.data() + (static_cast<std::size_t>(l) * capacity_) * kv;
            linear(l, LinearKind::Q, xb_.data(), q_.data());
            linear(l, LinearKind::K, xb_.data(), kc + static_cast<std::size_t>(pos_) * kv);
            linear(l, LinearKind::V, xb_.data(), vc + static_cast<std::size_t>(pos_) * kv);
            if (q_norm_[l].defined()) { // Qwen3: every head RMS-normalised before RoPE
                for (int h = 0; h < H; ++h)
                    rms_norm_vec(q_.data() + h * hd, q_norm_[l].data_ptr<float>(), q_.data() + h * hd, hd, c_.norm_eps);
                for (int h = 0; h < c_.n_kv_heads; ++h) {
                    float* key = kc + static_cast<std::size_t>(pos_) * kv + static_cast<std::size_t>(h) * hd;
                    rms_norm_vec(key, k_norm_[l].data_ptr<float>(), key, hd, c_.norm_eps);
                }
            }
            rope_vec(q_.data(), H, hd, cos, sin);
            rope_vec(kc + static_cast<std::size_t>(pos_) * kv, c_.n_kv_heads, hd, cos, sin);

            // Heads split between threads once the context makes them worth a wake-up (~64K MACs).
            const std::int64_t head_grain = std::max<std::int64_t>(1, (1 << 16) / (static_cast<std::int64_t>(pos_ + 1) * hd));
            at::parallel_for(0, H, head_grain, [&](std::int64_t h0, std::int64_t h1) {
                for (std::int64_t h = h0; h < h1; ++h) {
                    const std::size_t head_offset = static_cast<std::size_t>(h / group) * hd;
                    attend_head(q_.data() + h * hd, kc + head_offset, vc + head_offset, static_cast<std::size_t>(kv),
                                pos_, hd, scale, att_.data() + h * att_stride_, xb_.data() + h * hd);
                }
            });
            linear(l, LinearKind::O, xb_.data(), xb2_.data());
            for (int i = 0; i < d; ++i)
                x_[i] += xb2_[i];

            rms_norm_vec(x_.data(), ffn_norm_[l].data_ptr<float>(), xb_.data(), d, c_.norm_eps);
            linear(l, LinearKind::Gate, xb_.data(), hb_.data());
            linear(l, LinearKind::Up, xb_.data(), hb2_.data());
            for (int i = 0; i < c_.hidden_dim; ++i) {
                const float g = hb_[i];
                hb_[i] = g / (1.0f + std::exp(-g)) * hb2_[i];
            }
            linear(l, LinearKind::Down, hb_.data(), xb2_.data());
            for (int i = 0; i < d; ++i)
                x_[i] += xb2_[i];
        }
        rms_norm_vec(x_.data(), final_norm_.data_ptr<float>(), xb_.data(), d, c_.norm_eps);
        if (head_int8_.rows > 0) {
            const std::int64_t grain = std::max<std::int64_t>(1, (1 << 16) / c_.dim);
            at::parallel_for(0, head_int8_.rows, grain, [&](std::int64_t begin, std::int64_t end) {
                kernels::matvec_int8_rows(head_int8_, xb_.data(), logits_.data(), begin, end);
            });
        } else {
            dense_matvec(m_.output, xb_.data(), logits_.data());
        }
        ++pos_;
        return logits_.data();
    }

    void reset() override { pos_ = 0; }
    int position() const override { return pos_; }
    int capacity() const override { return capacity_; }

private:
    /// W rounded to int8 rows, a few thousand rows converted to float32 at a time.
    static kernels::Int8Rows int8_copy(const at::Tensor& W)
    {
        kernels::Int8Rows out;
        out.rows = W.size(0);
        out.cols = W.size(1);
        out.q.reserve(static_cast<std::size_t>(out.rows * out.cols)); // no doubling copies of a 7B head
        out.scale.reserve(static_cast<std::size_t>(out.rows));
        for (std::int64_t r0 = 0; r0 < out.rows; r0 += 4096) {
            const at::Tensor chunk = W.narrow(0, r0, std::min<std::int64_t>(4096, out.rows - r0)).to(at::kFloat).contiguous();
            const kernels::Int8Rows part = kernels::quantize_rows_int8(chunk.data_ptr<float>(), chunk.size(0), out.cols);
            out.q.insert(out.q.end(), part.q.begin(), part.q.end());
            out.scale.insert(out.scale.end(), part.scale.begin(), part.scale.end());
        }
        return out;
    }

    void linear(int l, LinearKind kind, const float* x, float* y)
    {
        const DecoderLayer& layer = m_.layers[static_cast<std::size_t>(l)];
        // K and V read Q's input, Up reads Gate's: prepared once for the packed kernels (unless a
        // Linear between them was not packed, or had other parameter groups).
        const bool same_input = kind == LinearKind::K || kind == LinearKind::V || kind == LinearKind::Up;
        if (const kernels::PackedWeights* packed = layer.packed_weight(kind))
            packed_matvec(*packed, x, y, packed_input_, same_input && packed_input_for_ == x && packed->groups == 1);
        else
            dense_matvec(layer.weight(kind), x, y);
        packed_input_for_ = layer.packed_weight(kind) && layer.packed_weight(kind)->groups == 1 ? x : nullptr;
        if (const at::Tensor& b = bias_[static_cast<std::size_t>(l)][static_cast<int>(kind)]; b.defined()) {
            const float* bias = b.data_ptr<float>();
            for (std::int64_t i = 0; i < b.numel(); ++i)
                y[i] += bias[i];
        }
    }

    Model m_; // shares the caller's tensors
    ModelConfig c_;
    std::vector<at::Tensor> attn_norm_, ffn_norm_; // float32
    std::vector<at::Tensor> q_norm_, k_norm_;     // float32, undefined unless Qwen3
    std::vector<std::array<at::Tensor, kLinearKindCount>> bias_; // float32, undefined where none
    at::Tensor final_norm_;
    int capacity_;
    int pos_ = 0;
    RopeTables rope_;
    std::vector<float> x_, xb_, xb2_, q_, k_, v_, hb_, hb2_, att_, logits_;
    std::size_t att_stride_ = 0; ///< floats between heads' rows of att_
    std::vector<float> key_cache_, value_cache_; // (layers, capacity, kv_dim)
    kernels::PackedInput packed_input_;
    const float* packed_input_for_ = nullptr; ///< x the packed input was last prepared from
    kernels::Int8Rows head_int8_; ///< rows = 0 unless DecoderOptions::int8_head
};

// ---- libtorch decoder (any device) -----------------------------------------------------------

class TorchDecoder final : public Decoder {
public:
    TorchDecoder(const Model& model, int capacity) : m_(model), c_(model.config), capacity_(capacity)
    {
        const RopeTables rope = make_rope_tables(c_, capacity_);
        const at::Device device = m_.tok_embeddings.device();
        const at::ScalarType dtype = m_.tok_embeddings.scalar_type();
        cos_ = rope.cos.to(device, dtype);
        sin_ = rope.sin.to(device, dtype);
        const auto opts = at::TensorOptions().device(device).dtype(dtype);
        for (int l = 0; l < c_.n_layers; ++l) {
            keys_.push_back(at::zeros({c_.n_kv_heads, capacity_, c_.head_dim()}, opts));
            values_.push_back(at::zeros({c_.n_kv_heads, capacity_, c_.head_dim()}, opts));
        }
        logits_.resize(c_.vocab_size);
    }

    const float* step(int token) override
    {
        check_capacity(pos_, capacity_);
        const int H = c_.n_heads, KV = c_.n_kv_heads, hd = c_.head_dim();
        const at::Tensor ids = at::full({1, 1}, token, at::kLong);
        at::Tensor x = embed_tokens(m_, ids).view({1, c_.dim});
        const at::Tensor cos = cos_.narrow(0, pos_, 1).view({1, 1, hd / 2});
        const at::Tensor sin = sin_.narrow(0, pos_, 1).view({1, 1, hd / 2});
        auto rope = [&](const at::Tensor& v, int heads) {
            const at::Tensor r = v.view({heads, 1, hd});
            const at::Tensor a = r.narrow(-1, 0, hd / 2), b = r.narrow(-1, hd / 2, hd / 2);
            return at::cat({a * cos - b * sin, a * sin + b * cos}, -1); // (heads, 1, hd)
        };
        for (int l = 0; l < c_.n_layers; ++l) {
            const DecoderLayer& layer = m_.layers[l];
            auto linear = [&](LinearKind kind, const at::Tensor& input) {
                const at::Tensor y = at::matmul(input, layer.weight(kind).t());
                return layer.bias_of(kind).defined() ? y + layer.bias_of(kind) : y;
            };
            const at::Tensor h = rms_norm(x, layer.attn_norm, c_.norm_eps);
            auto head_norm = [&](const at::Tensor& y, const at::Tensor& weight, int heads) { // Qwen3
                return weight.defined() ? rms_norm(y.view({heads, hd}), weight, c_.norm_eps) : y;
            };
            const at::Tensor q = rope(head_norm(linear(LinearKind::Q, h), layer.q_norm, H), H);
            keys_[l].narrow(1, pos_, 1).copy_(rope(head_norm(linear(LinearKind::K, h), layer.k_norm, KV), KV));
            values_[l].narrow(1, pos_, 1).copy_(linear(LinearKind::V, h).view({KV, 1, hd}));
            at::Tensor k = keys_[l].narrow(1, 0, pos_ + 1);
            at::Tensor v = values_[l].narrow(1, 0, pos_ + 1);
            if (KV != H) {
                k = k.repeat_interleave(H / KV, 0);
                v = v.repeat_interleave(H / KV, 0);
            }
            const at::Tensor scores = at::matmul(q, k.transpose(1, 2)) * (1.0 / std::sqrt(static_cast<double>(hd)));
            const at::Tensor probs = at::softmax(scores.to(at::kFloat), -1).to(q.scalar_type());
            const at::Tensor attn = at::matmul(probs, v).reshape({1, c_.q_dim()});
            x = x + at::matmul(attn, layer.weight(LinearKind::O).t());
            const at::Tensor h2 = rms_norm(x, layer.ffn_norm, c_.norm_eps);
            const at::Tensor ff = at::silu(at::matmul(h2, layer.weight(LinearKind::Gate).t())) *
                                  at::matmul(h2, layer.weight(LinearKind::Up).t());
            x = x + at::matmul(ff, layer.weight(LinearKind::Down).t());
        }
        const at::Tensor logits = output_logits(m_, x).to(at::kCPU).contiguous();
        std::copy(logits.data_ptr<float>(), logits.data_ptr<float>() + c_.vocab_size, logits_.begin());
        ++pos_;
        return logits_.data();
    }

    void reset() override { pos_ = 0; }
    int position() const override { return pos_; }
    int capacity() const override { return capacity_; }

private:
    Model m_;
    ModelConfig c_;
    int capacity_;
    int pos_ = 0;
    at::Tensor cos_, sin_;
    std::vector<at::Tensor> keys_, values_; // per layer (kv_heads, capacity, head_dim)
    std::vector<float> logits_;
};

} // namespace

void dense_matvec(const at::Tensor& W, const float* x, float* y)
{
    const std::int64_t rows = W.size(0), cols = W.size(1);
    const kernels::WeightFormat format = weight_format(W);
    const void* w = W.data_ptr();
    // Threads only pay off once a matrix is big enough (~64K MACs) to outweigh the wake-up cost.
    const std::int64_t grain = std::max<std::int64_t>(1, (1 << 16) / std::max<std::int64_t>(cols, 1));
    at::parallel_for(0, rows, grain, [&](std::int64_t begin, std::int64_t end) {
        kernels::matvec_rows(format, w, x, y, cols, begin, end);
    });
}


std::unique_ptr<Decoder> make_decoder(const Model& model, DecoderBackend backend, int capacity,
                                      const DecoderOptions& options)
{
    if (capacity <= 0)
        capacity = model.config.usable_context();
    if (backend == DecoderBackend::Auto) {
        bool direct = true;
        for (const NamedTensor& t : model.named_tensors())
            direct = direct && reads_directly(t.tensor);
        backend = direct ? DecoderBackend::Cpu : DecoderBackend::Torch;
    }
    if (backend == DecoderBackend::Cpu)
        return std::make_unique<CpuDecoder>(model, capacity, options);
    if (model.has_packed_linears())
        throw Error(model.source_path + ": its Linears are kept packed, which only the CPU decoder runs; load it "
                    "dequantized (--packed off) for this device");
    return std::make_unique<TorchDecoder>(model, capacity);
}

} // namespace pbllm

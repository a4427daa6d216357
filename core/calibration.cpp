#include "core/calibration.h"

#include "core/error.h"
#include "core/system.h"
#include "core/llama.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <random>

namespace pbllm {

std::vector<std::vector<int>> sample_calibration_windows(const std::vector<int>& tokens, int nsamples, int seqlen,
                                                         std::uint64_t seed)
{
    if (nsamples < 1 || seqlen < 2)
        throw Error("calibration needs at least one window of at least 2 tokens");
    if (static_cast<std::int64_t>(tokens.size()) < seqlen)
        throw Error("the calibration text has " + std::to_string(tokens.size()) + " tokens, fewer than one window of " +
                    std::to_string(seqlen));
    std::mt19937_64 rng(seed);
    const std::uint64_t offsets = tokens.size() - static_cast<std::size_t>(seqlen) + 1;
    std::vector<std::vector<int>> windows;
    for (int i = 0; i < nsamples; ++i) {
        const std::size_t start = static_cast<std::size_t>(rng() % offsets);
        windows.emplace_back(tokens.begin() + static_cast<std::ptrdiff_t>(start),
                             tokens.begin() + static_cast<std::ptrdiff_t>(start + seqlen));
    }
    return windows;
}

LinearInput input_of(LinearKind kind)
{
    switch (kind) {
    case LinearKind::Q:
    case LinearKind::K:
    case LinearKind::V: return LinearInput::Attention;
    case LinearKind::O: return LinearInput::AttentionOutput;
    case LinearKind::Gate:
    case LinearKind::Up: return LinearInput::Mlp;
    case LinearKind::Down: return LinearInput::MlpHidden;
    }
    return LinearInput::Attention;
}

std::string_view to_string(LinearInput input)
{
    switch (input) {
    case LinearInput::Attention: return "attention_input";
    case LinearInput::AttentionOutput: return "attention_output";
    case LinearInput::Mlp: return "mlp_input";
    case LinearInput::MlpHidden: return "mlp_hidden";
    }
    return "?";
}

HessianAccumulator::HessianAccumulator(std::int64_t features) : sum_(at::zeros({features, features}, at::kDouble)) {}

void HessianAccumulator::add(const at::Tensor& x)
{
    const at::Tensor rows = x.reshape({-1, x.size(-1)}).to(at::kCPU, at::kFloat);
    if (!product_.defined())
        product_ = at::empty({rows.size(1), rows.size(1)}, at::kFloat);
    at::mm_out(product_, rows.t(), rows);
    // sum += double(product), element by element. sum_.add_(product_) would first copy the whole
    // product to float64 (a fresh tensor: page faults on every call, a quarter of the time).
    double* sum = sum_.data_ptr<double>();
    const float* product = product_.data_ptr<float>();
    at::parallel_for(0, product_.numel(), 1 << 16, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i)
            sum[i] += static_cast<double>(product[i]);
    });
    tokens_ += rows.size(0);
}

at::Tensor HessianAccumulator::hessian() const
{
    return tokens_ > 0 ? sum_ * (2.0 / static_cast<double>(tokens_)) : sum_.clone();
}

at::Tensor HessianAccumulator::take_hessian()
{
    at::Tensor h = std::move(sum_);
    if (tokens_ > 0)
        h.mul_(2.0 / static_cast<double>(tokens_));
    product_ = at::Tensor();
    tokens_ = 0;
    return h;
}

std::int64_t CalibrationData::tokens() const
{
    return windows.empty() ? 0 : static_cast<std::int64_t>(windows.size()) * static_cast<std::int64_t>(windows[0].size());
}

void for_each_batch(std::int64_t windows, std::int64_t seqlen, const ModelConfig& c,
                    const std::function<void(std::int64_t, std::int64_t)>& fn)
{
    const std::int64_t per_window = seqlen * (c.n_heads * seqlen + 4 * c.hidden_dim + 8 * c.dim) * 4;
    const std::int64_t batch = std::clamp<std::int64_t>((128ll << 20) / std::max<std::int64_t>(per_window, 1), 1, 32);
    for (std::int64_t b = 0; b < windows; b += batch)
        fn(b, std::min(batch, windows - b));
}

std::int64_t layer_hessian_bytes(const ModelConfig& c)
{
    const std::int64_t d = c.dim, h = c.hidden_dim;
    return (3 * d * d + h * h) * 8;
}

std::int64_t residual_stream_bytes(const ModelConfig& c, std::int64_t windows, std::int64_t seqlen)
{
    return 2 * windows * seqlen * c.dim * 4;
}

CalibrationData calibrate(const Model& model, std::vector<std::vector<int>> windows, const ProgressFn& progress)
{
    c10::InferenceMode inference;
    const ModelConfig& c = model.config;
    if (windows.empty())
        throw Error("calibration needs at least one window");
    CalibrationData data;
    data.seqlen = static_cast<int>(windows[0].size());
    std::vector<std::int64_t> flat;
    for (const auto& w : windows) {
        if (static_cast<int>(w.size()) != data.seqlen)
            throw Error("calibration windows must all have the same length");
        flat.insert(flat.end(), w.begin(), w.end());
    }
    data.windows = std::move(windows);
    const std::int64_t n = static_cast<std::int64_t>(data.windows.size());
    require_memory(c.n_layers * layer_hessian_bytes(c) + residual_stream_bytes(c, n, data.seqlen),
                   "calibration of " + std::to_string(c.n_layers) + " layers (it keeps every layer's float64 Hessians, " +
                       human_bytes(layer_hessian_bytes(c)) + " a layer; quantize --calib TEXT computes them one layer "
                       "at a time instead)");
    const at::Tensor ids = at::tensor(flat).view({n, data.seqlen});
    const RopeTables rope = make_rope_tables(c, data.seqlen);
    at::Tensor x = embed_tokens(model, ids);
    report_progress(progress, 0.0, "calibration");
    for (int l = 0; l < c.n_layers; ++l) {
        std::vector<HessianAccumulator> acc;
        for (int features : {c.dim, c.dim, c.dim, c.hidden_dim})
            acc.emplace_back(features);
        at::Tensor next = at::empty_like(x);
        for_each_batch(n, data.seqlen, c, [&](std::int64_t b, std::int64_t count) {
            next.narrow(0, b, count)
                .copy_(decoder_layer_forward(c, model.layers[l], x.narrow(0, b, count), rope,
                                             [&](LinearKind kind, const at::Tensor& input) {
                                                 if (kind == LinearKind::Q || kind == LinearKind::O ||
                                                     kind == LinearKind::Gate || kind == LinearKind::Down)
                                                     acc[static_cast<int>(input_of(kind))].add(input);
                                             }));
        });
        x = next;
        std::array<at::Tensor, kLinearInputCount> h;
        for (int i = 0; i < kLinearInputCount; ++i)
            h[i] = acc[i].hessian();
        data.hessians.push_back(h);
        report_progress(progress, static_cast<double>(l + 1) / c.n_layers, "calibration");
    }
    return data;
}

} // namespace pbllm

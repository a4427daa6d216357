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

int input_features(LinearInput input, const ModelConfig& config)
{
    switch (input) {
    case LinearInput::AttentionOutput: return config.q_dim();
    case LinearInput::MlpHidden: return config.hidden_dim;
    case LinearInput::Attention:
    case LinearInput::Mlp: break;
    }
    return config.dim;
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

namespace {

/// x^T x is symmetric: only the column blocks on and right of the diagonal block are computed
/// (5/8 of the product for 4096 features, 6/11 for 11008) and the rest is mirrored once at the end.
constexpr std::int64_t kHessianBlock = 1024;

/// Makes the square float64 `m` exactly symmetric from its upper triangle (the diagonal blocks'
/// products are not, to rounding), in tiles so that both sides stay in cache.
void mirror_upper_triangle(at::Tensor& m)
{
    const std::int64_t n = m.size(0), tile = 64;
    double* p = m.data_ptr<double>();
    at::parallel_for(0, (n + tile - 1) / tile, 1, [&](std::int64_t t0, std::int64_t t1) {
        for (std::int64_t r0 = t0 * tile; r0 < std::min(n, t1 * tile); r0 += tile)
            for (std::int64_t c0 = 0; c0 <= r0; c0 += tile)
                for (std::int64_t r = r0; r < std::min(n, r0 + tile); ++r)
                    for (std::int64_t c = c0; c < std::min(r, c0 + tile); ++c)
                        p[r * n + c] = p[c * n + r];
    });
}

} // namespace

HessianAccumulator::HessianAccumulator(std::int64_t features) : sum_(at::zeros({features, features}, at::kDouble)) {}

void HessianAccumulator::add(const at::Tensor& x)
{
    const at::Tensor rows = x.reshape({-1, x.size(-1)}).to(at::kCPU, at::kFloat);
    const std::int64_t n = rows.size(1);
    if (!product_.defined())
        product_ = at::empty({std::min(kHessianBlock, n), n}, at::kFloat);
    double* sum = sum_.data_ptr<double>();
    const float* product = product_.data_ptr<float>();
    // One product per block row, straight into the (strided) buffer: ldc = n is a valid GEMM
    // output. Then sum += double(product) element by element: sum_.add_(...) would first copy the
    // product to float64 (a fresh tensor: page faults on every call).
    for (std::int64_t r0 = 0; r0 < n; r0 += kHessianBlock) {
        const std::int64_t height = std::min(kHessianBlock, n - r0), width = n - r0;
        at::Tensor out = product_.narrow(0, 0, height).narrow(1, 0, width);
        at::mm_out(out, rows.narrow(1, r0, height).t(), rows.narrow(1, r0, width));
        at::parallel_for(0, height, 16, [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t i = begin; i < end; ++i) {
                double* to = sum + (r0 + i) * n + r0;
                const float* from = product + i * n;
                for (std::int64_t j = 0; j < width; ++j)
                    to[j] += static_cast<double>(from[j]);
            }
        });
    }
    tokens_ += rows.size(0);
}

at::Tensor HessianAccumulator::hessian() const
{
    at::Tensor h = tokens_ > 0 ? sum_ * (2.0 / static_cast<double>(tokens_)) : sum_.clone();
    mirror_upper_triangle(h);
    return h;
}

at::Tensor HessianAccumulator::take_hessian()
{
    at::Tensor h = std::move(sum_);
    if (tokens_ > 0)
        h.mul_(2.0 / static_cast<double>(tokens_));
    mirror_upper_triangle(h);
    product_ = at::Tensor();
    tokens_ = 0;
    return h;
}

double HessianAccumulator::flops_per_token(std::int64_t features)
{
    double computed = 0.0; // multiply-adds of the computed blocks
    for (std::int64_t r0 = 0; r0 < features; r0 += kHessianBlock)
        computed += static_cast<double>(std::min(kHessianBlock, features - r0)) * static_cast<double>(features - r0);
    return 2.0 * computed;
}

std::int64_t CalibrationData::tokens() const
{
    return windows.empty() ? 0 : static_cast<std::int64_t>(windows.size()) * static_cast<std::int64_t>(windows[0].size());
}

namespace {

/// A decoder layer's float32 activations per window: attention scores, the MLP's hidden
/// states and a few residual-sized temporaries.
std::int64_t activation_bytes_per_window(std::int64_t seqlen, const ModelConfig& c)
{
    return seqlen * (c.n_heads * seqlen + 4 * c.hidden_dim + 8 * std::max(c.dim, c.q_dim())) * 4;
}

/// Windows per batch: about 128 MiB of activations, 1 to 32 windows.
std::int64_t batch_windows(std::int64_t seqlen, const ModelConfig& c)
{
    return std::clamp<std::int64_t>((128ll << 20) / std::max<std::int64_t>(activation_bytes_per_window(seqlen, c), 1),
                                    1, 32);
}

} // namespace

void for_each_batch(std::int64_t windows, std::int64_t seqlen, const ModelConfig& c,
                    const std::function<void(std::int64_t, std::int64_t)>& fn)
{
    const std::int64_t batch = batch_windows(seqlen, c);
    for (std::int64_t b = 0; b < windows; b += batch)
        fn(b, std::min(batch, windows - b));
}

std::int64_t batch_activation_bytes(std::int64_t windows, std::int64_t seqlen, const ModelConfig& c)
{
    return std::min(windows, batch_windows(seqlen, c)) * activation_bytes_per_window(seqlen, c);
}

std::int64_t layer_hessian_bytes(const ModelConfig& c)
{
    const std::int64_t d = c.dim, h = c.hidden_dim, q = c.q_dim();
    return (2 * d * d + q * q + h * h) * 8;
}

std::int64_t residual_stream_bytes(const ModelConfig& c, std::int64_t windows, std::int64_t seqlen)
{
    return 2 * windows * seqlen * c.dim * 4;
}

std::int64_t calibration_working_bytes(const Model& model, std::int64_t windows, std::int64_t seqlen)
{
    const ModelConfig& c = model.config;
    std::int64_t layer = 0;
    for (const at::Tensor& w : model.layers.front().linear)
        layer += w.numel() * 4;
    // The accumulators' block-row product buffers (1024 rows each) are below 0.1 GiB for 7B.
    const std::int64_t buffers = 1024 * (2 * c.dim + c.q_dim() + c.hidden_dim) * 4;
    return residual_stream_bytes(c, windows, seqlen) + layer + batch_activation_bytes(windows, seqlen, c) +
           layer_hessian_bytes(c) + buffers + kRuntimeReserveBytes;
}

void for_each_layer_hessians(const Model& model, const std::vector<std::vector<int>>& windows,
                             const std::function<void(int, LayerHessians&&)>& fn, const ProgressFn& progress)
{
    c10::InferenceMode inference;
    const ModelConfig& c = model.config;
    if (windows.empty())
        throw Error("calibration needs at least one window");
    const std::int64_t seqlen = static_cast<std::int64_t>(windows[0].size());
    std::vector<std::int64_t> flat;
    for (const auto& w : windows) {
        if (static_cast<std::int64_t>(w.size()) != seqlen)
            throw Error("calibration windows must all have the same length");
        flat.insert(flat.end(), w.begin(), w.end());
    }
    const std::int64_t n = static_cast<std::int64_t>(windows.size());
    const at::Tensor ids = at::tensor(flat).view({n, seqlen});
    const RopeTables rope = make_rope_tables(c, static_cast<int>(seqlen));
    at::Tensor x = embed_tokens(model, ids).to(at::kCPU, at::kFloat);
    report_progress(progress, 0.0, "calibration");
    for (int l = 0; l < c.n_layers; ++l) {
        const DecoderLayer layer = for_compute(model.layers[static_cast<std::size_t>(l)]);
        std::vector<HessianAccumulator> acc;
        for (int i = 0; i < kLinearInputCount; ++i)
            acc.emplace_back(input_features(static_cast<LinearInput>(i), c));
        at::Tensor next = at::empty_like(x);
        for_each_batch(n, seqlen, c, [&](std::int64_t b, std::int64_t count) {
            next.narrow(0, b, count)
                .copy_(decoder_layer_forward(c, layer, x.narrow(0, b, count), rope,
                                             [&](LinearKind kind, const at::Tensor& input, const at::Tensor&) {
                                                 if (kind == LinearKind::Q || kind == LinearKind::O ||
                                                     kind == LinearKind::Gate || kind == LinearKind::Down)
                                                     acc[static_cast<int>(input_of(kind))].add(input);
                                             }));
        });
        x = next;
        LayerHessians h;
        for (int i = 0; i < kLinearInputCount; ++i)
            h[static_cast<std::size_t>(i)] = acc[static_cast<std::size_t>(i)].take_hessian();
        acc.clear();
        fn(l, std::move(h));
        report_progress(progress, static_cast<double>(l + 1) / c.n_layers,
                        "calibration: layer " + std::to_string(l + 1) + "/" + std::to_string(c.n_layers));
    }
}

CalibrationData calibrate(const Model& model, std::vector<std::vector<int>> windows, const ProgressFn& progress)
{
    const ModelConfig& c = model.config;
    if (windows.empty())
        throw Error("calibration needs at least one window");
    CalibrationData data;
    data.seqlen = static_cast<int>(windows[0].size());
    const std::int64_t n = static_cast<std::int64_t>(windows.size());
    require_memory(c.n_layers * layer_hessian_bytes(c) + calibration_working_bytes(model, n, data.seqlen),
                   "calibration of " + std::to_string(c.n_layers) + " layers (it keeps every layer's float64 Hessians, " +
                       human_bytes(layer_hessian_bytes(c)) + " a layer; pbllm calibrate writes them to the file one "
                       "layer at a time instead)");
    for_each_layer_hessians(
        model, windows,
        [&](int, LayerHessians&& h) {
            std::array<double, kLinearInputCount> traces{};
            for (int i = 0; i < kLinearInputCount; ++i)
                traces[static_cast<std::size_t>(i)] = h[static_cast<std::size_t>(i)].trace().item<double>();
            data.hessian_traces.push_back(traces);
            data.hessians.push_back(std::move(h));
        },
        progress);
    data.windows = std::move(windows);
    return data;
}

} // namespace pbllm

#pragma once
// Calibration (EVALUATION.md): seeded windows of the calibration text, and the layer-by-layer
// Hessians H = 2/N sum x x^T of every Linear's input.
#include "core/model.h"
#include "core/progress.h"

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace pbllm {

/// `nsamples` windows of `seqlen` tokens at uniformly random offsets, from std::mt19937_64(seed)
/// (offset = draw mod (tokens - seqlen + 1)). Throws Error when the text is shorter than a window.
std::vector<std::vector<int>> sample_calibration_windows(const std::vector<int>& tokens, int nsamples, int seqlen,
                                                         std::uint64_t seed);

/// The four distinct Linear inputs of a decoder layer (Q/K/V share one, as do gate/up).
enum class LinearInput { Attention = 0, AttentionOutput = 1, Mlp = 2, MlpHidden = 3 };
constexpr int kLinearInputCount = 4;
LinearInput input_of(LinearKind kind);
/// Width of an input: dim, the attention's width (q_dim), dim, hidden_dim.
int input_features(LinearInput input, const ModelConfig& config);
std::string_view to_string(LinearInput input);

/// Running H = 2/N sum x x^T for one input, accumulated in float64 from float32 partial products.
class HessianAccumulator {
public:
    explicit HessianAccumulator(std::int64_t features);
    /// x (..., features): every row is one token.
    void add(const at::Tensor& x);
    at::Tensor hessian() const; ///< float64 (features, features); zeros before any token
    /// hessian(), made in place of the running sum (no copy); the accumulator is empty after.
    at::Tensor take_hessian();
    std::int64_t tokens() const { return tokens_; }
    /// Floating-point operations add() spends per token on `features` inputs.
    static double flops_per_token(std::int64_t features);

private:
    at::Tensor sum_;     // float64 sum of x x^T; only the blocks add() computes are kept up to date
    at::Tensor product_; // float32, one block row of x^T x at a time (1024 x features), reused:
                         // a fresh tensor per call cost more in page faults than the product
    std::int64_t tokens_ = 0;
};

/// What `pbllm calibrate` saves: the windows (so a quantizer can replay them exactly) and the
/// full-precision model's Hessians for saliency analysis.
struct CalibrationData {
    std::vector<std::vector<int>> windows;
    std::uint64_t seed = 0;
    int seqlen = 0;
    std::string text_sha256;  ///< of the calibration text
    std::string model_sha256; ///< of the model it was computed for ("" if unknown)
    std::vector<std::array<at::Tensor, kLinearInputCount>> hessians; ///< per decoder layer, float64
    /// Set instead of `hessians` when they stay on disk (read_calibration_file with
    /// HessianLoading::OnDemand): calibration_hessian() reads one at a time from this file.
    std::string hessian_file;
    /// tr H per decoder layer and input (what the studio plots across layers), known without
    /// reading the Hessians: stored beside each in the file. NaN where unknown (an older file
    /// read with HessianLoading::OnDemand).
    std::vector<std::array<double, kLinearInputCount>> hessian_traces;
    std::int64_t tokens() const;
};

/// Windows of `x` in batches small enough for attention memory: calls fn(begin, count).
void for_each_batch(std::int64_t windows, std::int64_t seqlen, const ModelConfig& config,
                    const std::function<void(std::int64_t, std::int64_t)>& fn);

/// Bytes of the activations one for_each_batch batch of a decoder layer's forward holds.
std::int64_t batch_activation_bytes(std::int64_t windows, std::int64_t seqlen, const ModelConfig& config);
/// Bytes of one decoder layer's Hessian accumulators (float64: three dim x dim, one hidden x hidden).
std::int64_t layer_hessian_bytes(const ModelConfig& config);
/// Bytes of the residual streams a layer-by-layer pass over `windows` x `seqlen` tokens holds
/// (a layer's input and output, float32).
std::int64_t residual_stream_bytes(const ModelConfig& config, std::int64_t windows, std::int64_t seqlen);

/// One decoder layer's four input Hessians, float64, indexed by LinearInput.
using LayerHessians = std::array<at::Tensor, kLinearInputCount>;

/// The full-precision model's Hessians, one decoder layer at a time: each layer (converted to
/// float32 once) runs over all windows, and fn(layer, hessians) receives its Hessians as soon as
/// they are made. Holds the residual stream in and out, one layer in float32, one batch of
/// activations and one layer's Hessians: calibration_working_bytes. Windows must be non-empty
/// and of one length (Error otherwise).
void for_each_layer_hessians(const Model& model, const std::vector<std::vector<int>>& windows,
                             const std::function<void(int layer, LayerHessians&& hessians)>& fn,
                             const ProgressFn& progress = {});
/// Bytes for_each_layer_hessians holds besides the model's own storage.
std::int64_t calibration_working_bytes(const Model& model, std::int64_t windows, std::int64_t seqlen);

/// Full-precision Hessians of every Linear input, all layers kept in memory. Refuses up front,
/// with the figures, when every layer's Hessians would not fit the available memory
/// (calibrate_to_file, core/calibration_file.h, keeps one layer at a time).
CalibrationData calibrate(const Model& model, std::vector<std::vector<int>> windows, const ProgressFn& progress = {});

} // namespace pbllm

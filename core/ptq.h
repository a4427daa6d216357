#pragma once
// Whole-model post-training quantization (METHOD.md section 4): layer by layer, each layer's
// Hessians from the *quantized* previous layers' outputs.
#include "core/gptq.h"
#include "core/llama.h"
#include "core/model.h"
#include "core/progress.h"
#include "core/quant_config.h"

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace pbllm {

/// A model whose Linears were quantized: `model` computes with the dequantized weights, and
/// `linears` hold the packed form, in layer order (head last when quantized).
struct QuantizedModel {
    Model model;
    std::vector<QuantizedLinear> linears;
    QuantPlan plan;
    std::string source_sha256;      ///< SHA-256 of the source model file ("" for folders/unknown)
    std::string calibration_sha256; ///< SHA-256 of the calibration text
    std::string tokenizer_bytes;    ///< serialized SentencePiece model, embedded in the packed file
    std::string training_json;      ///< QAT settings and outcome ("" for PTQ), stored in the file
    double seconds = 0.0;

    /// Salient weights / quantized weights over all quantized Linears.
    double salient_ratio() const;
    std::int64_t quantized_weights() const;
};

/// `model` with its full-precision part as a packed file stores it: embedding, norms and the head
/// (unless `head_quantized`) rounded to FP16 values, in float32 on the CPU. Quantizers start from
/// this so the exported model is exactly the one they measured.
Model with_fp16_full_precision(const Model& model, bool head_quantized);

/// The layer-by-layer pass as separate steps, so each caller decides what it keeps:
/// quantize_model keeps the whole dequantized model (the studio), quantize_to_file
/// (core/streamed_ptq.h) one decoder layer at a time. `model` may keep its weights mapped in
/// F16/BF16: each step converts only the layer it works on to float32 (CPU). The full-precision
/// parts a packed file stores in FP16 (embedding, norms, skipped Linears, unquantized head) are
/// rounded to FP16 first, so the quantizers measure exactly the model that is exported.
class LayerwiseQuantizer {
public:
    /// Validates the plan and the windows (same length, at least one); `model` must outlive this.
    LayerwiseQuantizer(const Model& model, const std::vector<std::vector<int>>& windows, const QuantPlan& plan);

    /// Layer 0's input: the windows' embeddings, (windows, seqlen, dim) float32.
    at::Tensor embed() const;
    /// Called before each stage of a layer: "hessians", then each Linear's short name
    /// ("q_proj" ... "down_proj"), then "output". May throw (Cancelled) to stop.
    using StageFn = std::function<void(std::string_view stage)>;
    /// Receives each quantized Linear as soon as it is made, in kAllLinearKinds order (skipped
    /// ones absent), so that the caller decides what to keep of it while the layer goes on.
    using LinearSink = std::function<void(QuantizedLinear&&)>;
    /// Quantizes decoder layer `l` given its input `x` (from embed() or the previous layer),
    /// hands its quantized Linears to `take` and replaces `x` by the quantized layer's output.
    /// `computed`, when given, receives the layer as the result computes with it (float32:
    /// dequantized Linears, FP16-rounded the rest).
    void quantize_layer(int l, at::Tensor& x, const LinearSink& take, const StageFn& stage = {},
                        DecoderLayer* computed = nullptr) const;
    /// The output head from the last layer's output (plan.config.quantize_head; Error when tied).
    QuantizedLinear quantize_head(const at::Tensor& x) const;

    /// Bytes a quantize_layer step holds at its peak besides the model's own storage, with a
    /// caller that keeps each Linear in its packed form (about 1.3 bits a weight) or less: the
    /// largest of its phases (accumulating the Hessians, quantizing each Linear, the quantized
    /// layer's forward), plus the runtime's own memory. See the comments inside for the terms.
    std::int64_t working_bytes() const;
    /// Floating-point operations of one decoder layer's step (two forwards over the windows,
    /// the Hessians, the factorisations and GPTQ sweeps): what per-layer times are judged by.
    double layer_flops() const;

    std::int64_t windows() const { return n_; }
    std::int64_t seqlen() const { return seqlen_; }

private:
    const Model& model_;
    QuantPlan plan_;
    at::Tensor ids_;
    RopeTables rope_;
    GptqOptions options_;
    std::int64_t n_ = 0, seqlen_ = 0;
};

/// Quantizes every Linear of the decoder (and the head with plan.config.quantize_head) of
/// `model` by `plan`, replaying `windows` layer by layer, and keeps the whole dequantized model
/// in memory (float32). `model` is not modified. Progress is per Linear; cancelling throws
/// Cancelled.
QuantizedModel quantize_model(const Model& model, const std::vector<std::vector<int>>& windows, const QuantPlan& plan,
                              const ProgressFn& progress = {});

} // namespace pbllm

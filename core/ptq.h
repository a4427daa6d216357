#pragma once
// Whole-model post-training quantization (METHOD.md section 4): layer by layer, each layer's
// Hessians from the *quantized* previous layers' outputs.
#include "core/gptq.h"
#include "core/model.h"
#include "core/progress.h"
#include "core/quant_config.h"

#include <string>
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

/// Quantizes every Linear of the decoder (and the head with plan.config.quantize_head) of
/// `model` by `plan`, replaying `windows` layer by layer. `model` is not modified. Progress is
/// per Linear; cancelling throws Cancelled.
QuantizedModel quantize_model(const Model& model, const std::vector<std::vector<int>>& windows, const QuantPlan& plan,
                              const ProgressFn& progress = {});

} // namespace pbllm

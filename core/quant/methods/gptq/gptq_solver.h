#pragma once
// The GPTQ solver behind pb-gptq, rtn (no feedback) and gptq (METHOD.md section 4): quantizer
// parameters fitted from the original W, then GPTQ's column walk per block of columns with the
// method's element quantizer, and the lazy update of the later blocks as one GEMM.
#include "core/gptq.h"

namespace pbllm {

/// Their registry rows' quantize (a QuantizeLinearFn; arguments as quantize_linear documents).
QuantizedLinear quantize_gptq_family(const std::string& name, const at::Tensor& W, at::Tensor H,
                                     const LayerQuantSettings& settings, const GptqOptions& options,
                                     double reference_energy);

} // namespace pbllm

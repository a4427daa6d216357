#pragma once
// A quantized Linear (its codes as the packed file stores them and the dequantized weights the
// model computes with), and quantize_linear, which runs any method of the registry
// (core/quant/registry.h; the GPTQ family's solver is core/quant/methods/gptq/).
#include "core/quant_config.h"
#include "core/quant/common/block_binary.h"
#include "core/quantizers.h"

#include <ATen/core/Tensor.h>

#include <string>

namespace pbllm {

/// A quantized Linear in the form the packed checkpoint stores it. `dequantized` is what the
/// quantizer produced; dequantize() rebuilds it from codes and parameters, bit for bit.
struct QuantizedLinear {
    std::string name;
    std::int64_t rows = 0, cols = 0;
    LayerQuantSettings settings;
    int groupsize = 0;       ///< columns per binarization-statistics group (pb) or grid group (gptq); 0 = row
    at::Tensor salient;      ///< bool (rows, cols); all true for plain GPTQ
    at::Tensor codes;        ///< int16 (rows, cols): grid code, or FP16 bits when salient_bits = 16; 0 elsewhere
    at::Tensor signs;        ///< bool (rows, cols): true = +1, meaningful where not salient
    RowGrid grid;            ///< (rows, grid groups); unused when salient_bits = 16
    BinaryStats binary;      ///< (rows, groups); undefined for plain GPTQ
    BlockBinaryCodes block_binary; ///< BiLLM's codes (the fields above but `salient` stay undefined)
    at::Tensor dequantized;  ///< float32 (rows, cols)

    // report
    double salient_ratio = 0.0;  ///< achieved
    double weight_error = 0.0;   ///< ||W - Q||_F / ||W||_F
    double output_error = -1.0;  ///< tr(dW H dW^T) / tr(W H W^T); -1 without a Hessian
    double seconds = 0.0;
    std::string note;            ///< e.g. damping raised

    /// Grid bit-width actually used for high-precision weights (bits for gptq, else salient_bits).
    int grid_bits() const;
    /// Rebuilds the float32 weights from codes, signs and parameters.
    at::Tensor dequantize() const;
    /// Throws Error when shapes, code ranges or parameters are inconsistent (used before writing
    /// and after reading a packed file).
    void validate() const;
};

struct GptqOptions {
    int blocksize = 128;
    int groupsize = 0;
    double percdamp = 0.01;
    bool act_order = false;
    /// The numerator comes free from GPTQ's losses (rtn: one rows x cols x cols product); the
    /// denominator costs one such product unless the caller passes it.
    bool measure_output_error = true;
    int billm_max_salient_columns = 49;             ///< BiLLM: k = 1 .. this (the code's up_lim 50)
};

/// Quantizes W (d_out, d_in) with `settings`, through the method's row in the registry
/// (core/quant/registry.h). H (d_in, d_in) is the calibration Hessian; it may be
/// undefined only for magnitude saliency with method rtn. `reference_energy`, when >= 0, is
/// tr(W H W^T), the output error's denominator, measured by the caller (the layer-streamed quantizer
/// sums the Linear's squared outputs on the calibration tokens, which is the same quantity).
/// H is taken by value so that a caller can move its last reference in: it is then freed once
/// factored, unless a product still needs it (rtn, or no `reference_energy`).
/// Throws Error naming `name` for impossible settings, a non-finite W or an unusable Hessian.
QuantizedLinear quantize_linear(const std::string& name, const at::Tensor& W, at::Tensor H,
                                const LayerQuantSettings& settings, const GptqOptions& options,
                                double reference_energy = -1.0);

} // namespace pbllm

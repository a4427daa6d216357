#pragma once
// BiLLM (Huang et al., ICML 2024), as ../shared/docs/METHODS-BEYOND.md section 1 specifies it: per
// block of columns, the salient columns get a second-order residual binarization, the rest is
// split at a searched break point into a concentrated and a sparse group binarized apart, and the
// block's error is compensated into the later columns through the inverse Hessian's factor.
#include "core/gptq.h"
#include "core/quant/common/block_binary.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace pbllm {

/// The searches of one block. `scores` (rows, nb): S, which ranks the columns (c_j = sum_i |S_ij|)
/// and splits the non-salient weights (|S| against the break point); `values` (rows, nb): what is
/// binarized to score a candidate (S or W). Both float32, contiguous.
struct BillmBlockChoice {
    std::vector<std::int64_t> column_order; ///< columns by decreasing c_j (ties: lower index first)
    int salient_columns = 0;                ///< k: the first k of column_order are salient
    float break_point = 0.0f;               ///< p
    std::vector<double> column_errors;      ///< the search's error for k = 1, 2, ...
    std::vector<double> break_errors;       ///< for each candidate break point
    std::vector<float> break_candidates;    ///< the 0.10 .. 0.90 quantiles
    /// CGB (split_salient): the salient columns' break point, searched as p with second-order sides.
    float salient_break_point = 0.0f;
    std::vector<double> salient_break_errors;
    std::vector<float> salient_break_candidates; ///< quantiles of the non-zero salient |S|
};
/// `split_salient`: also search CGB's salient break point. `reference`: re-binarize every
/// candidate from scratch (the definition, for tests); otherwise the incremental search (values
/// sorted once per row, prefix sums in Fenwick trees).
BillmBlockChoice billm_search_block(const at::Tensor& scores, const at::Tensor& values, int max_salient_columns,
                                    bool split_salient = false, bool reference = false);

/// The linear-interpolated q-quantile of sorted values (numpy's default).
double quantile_of_sorted(const std::vector<float>& sorted, double q);

/// BiLLM for one Linear (a QuantizeLinearFn): needs H; options.blocksize is BiLLM's block.
QuantizedLinear quantize_billm(const std::string& name, const at::Tensor& W, at::Tensor H,
                               const LayerQuantSettings& settings, const GptqOptions& options,
                               double reference_energy);

} // namespace pbllm

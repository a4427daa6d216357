#pragma once
// Live previews for the tuning sliders: the quantization error and bits of one Linear at any
// salient ratio / bit-width / binarizer, without error feedback (RTN), in tens of milliseconds
// for a 4096 x 4096 layer. Scores, Hessian factors and norms are computed once per Linear.
#include "core/quant_config.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace pbllm {

struct PreviewResult {
    double salient_ratio = 0.0;       ///< achieved
    float threshold = 0.0f;           ///< saliency score above which a weight is salient
    double weight_error = 0.0;        ///< ||W - Q||_F / ||W||_F
    double hessian_error_diag = -1.0; ///< sum dW^2 H_jj / sum W^2 H_jj (the fast proxy); -1 without H
    double hessian_error = -1.0;      ///< tr(dW H dW^T) / tr(W H W^T), only when asked for (costs a GEMM)
    double headline_bits = 0.0;       ///< b*r + (1 - r)
    double bitmap_bits = 0.0;         ///< headline + 1
    double index_bits = 0.0;          ///< headline + expected Rice-coded index
    double estimated_bits = 0.0;      ///< all bytes the packed file will store for it * 8 / n (estimate)
    std::int64_t estimated_bytes = 0;
    int grid_bits = 0;                ///< bits of a high-precision weight (2 for a block binarizer's salient)
    double seconds = 0.0;
};

struct PreviewOptions {
    double percdamp = 0.01;
    /// 0 = every row. Else about this many weights in evenly spaced rows (at least 8 rows): the
    /// threshold, error, ratio and bits are then estimates for the whole matrix from the sample,
    /// so previews of a 7B model fit in a few hundred MiB and stay fast.
    std::int64_t max_weights = 0;
    /// Keep a float32 copy of H for preview(..., exact_hessian_error = true).
    bool keep_hessian = true;
};

class LayerPreview {
public:
    /// W (d_out, d_in), any dtype (a mapped F16 Linear is read only in the sampled rows);
    /// H (d_in, d_in) may be undefined (magnitude metric only). The Hessian metrics factor H
    /// once here (the expensive part: a Cholesky).
    LayerPreview(std::string name, const at::Tensor& W, const at::Tensor& H, SaliencyMetric metric,
                 const PreviewOptions& options = {});

    /// Error and bits at these settings. Not for concurrent calls on one object (it reuses its
    /// buffers); previews of different Linears may run in parallel.
    PreviewResult preview(double salient_ratio, int salient_bits, Binarizer binarizer, bool exact_hessian_error = false);

    /// Error and bits of a block-binary method (billm, arb, arb-x, arb-rc; settings.method) on
    /// this Linear: the method itself run on the (sampled) rows with the Hessian's diagonal, so
    /// without compensation between blocks (as preview() is without GPTQ's feedback), and its
    /// codes packed to count the bytes. Remembered per value of the settings it reads and block size: a slider
    /// that these methods do not read costs nothing.
    PreviewResult preview_block_binary(const LayerQuantSettings& settings, int blocksize, double percdamp);

    /// Share of salient weights in each of (out_rows x out_cols) blocks of W at this ratio,
    /// row-major: where the salient weights sit, for a heat map.
    std::vector<float> salient_density(double salient_ratio, int out_rows, int out_cols) const;
    /// log10 of the positive saliency scores, as a histogram over `bins` bins in [lo, hi].
    std::vector<double> log10_score_histogram(int bins, double& lo, double& hi) const;

    const std::string& name() const { return name_; }
    std::int64_t rows() const { return full_rows_; } ///< of the whole matrix
    std::int64_t cols() const { return cols_; }
    /// Rows the figures come from: rows() unless built from a sample.
    std::int64_t sampled_rows() const { return rows_; }
    bool sampled() const { return rows_ < full_rows_; }
    SaliencyMetric metric() const { return metric_; }

private:
    float threshold_for(double ratio) const;

    std::string name_;
    SaliencyMetric metric_;
    std::int64_t rows_ = 0, cols_ = 0; ///< of W_ (the sample when sampled)
    std::int64_t full_rows_ = 0;
    at::Tensor W_;      ///< float32 contiguous, dead columns zeroed
    at::Tensor scores_; ///< float32 contiguous
    at::Tensor hdiag_;  ///< float32 (d_in) or undefined
    at::Tensor H_;      ///< float32 or undefined
    at::Tensor dW_;     ///< reused buffer for the exact Hessian error
    std::shared_ptr<const class TopKSelector> selector_; ///< first radix pass of the scores, cached
    double weight_norm2_ = 0.0, weighted_norm2_ = 0.0;
    double hessian_norm_ = -1.0; ///< tr(W H W^T), computed on the first exact request
    std::vector<float> row_min_, row_max_;
    std::map<std::string, PreviewResult> block_binary_results_; ///< by method, options and block size
};

/// The registry's preview functions (MethodInfo::preview): PB-LLM's salient share and
/// binarizer, plain GPTQ's grid (every weight at `bits`), a block binarizer run on the sample.
PreviewResult partial_binary_preview(LayerPreview& p, const LayerQuantSettings& s, int blocksize, double percdamp);
PreviewResult plain_grid_preview(LayerPreview& p, const LayerQuantSettings& s, int blocksize, double percdamp);
PreviewResult block_binary_preview(LayerPreview& p, const LayerQuantSettings& s, int blocksize, double percdamp);

} // namespace pbllm

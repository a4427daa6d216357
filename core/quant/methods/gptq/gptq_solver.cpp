#include "core/quant/methods/gptq/gptq_solver.h"

#include "core/error.h"
#include "core/quant/common/error_measures.h"
#include "core/quant/registry.h"
#include "core/saliency.h"
#include "core/simd.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace pbllm {

namespace {

/// GPTQ's column walk over one block of columns (Frantar et al., 2022): each weight goes through
/// an element quantizer, and with feedback its scaled error updates the rest of the block
/// through U. The method's element quantizer is a policy (see walk_block_rows).
struct ColumnWalk {
    std::int64_t cols = 0, b0 = 0, b1 = 0, nb = 0;
    bool feedback = true;
    const float* U = nullptr; ///< upper Cholesky factor of H^-1 (cols, cols)
    float* out = nullptr;     ///< (rows, cols) the quantized values
    float* err = nullptr;     ///< (rows, nb) the scaled errors, for the lazy update of later blocks
};

/// PB-LLM's elements (pb-gptq and rtn; plain gptq marks every weight salient): a salient weight
/// on its row's grid (or FP16), the rest binarized with its group's statistics. Stores the code
/// and returns the value.
struct PartialBinaryElements {
    int grid_bits = 8, maxq = 255;
    const bool* mask = nullptr;
    const float *grid_scale = nullptr, *grid_zero = nullptr;
    std::int64_t grid_groups = 1, grid_width = 1;
    const float *mu = nullptr, *alpha = nullptr;
    std::int64_t bin_groups = 1, bin_width = 1;
    std::int16_t* codes = nullptr;
    bool* signs = nullptr;

    /// Weight (r, c) with value x; i = r * cols + c.
    PBLLM_ALWAYS_INLINE float operator()(std::int64_t r, std::int64_t c, std::int64_t i, float x) const
    {
        if (mask[i]) {
            if (grid_bits == 16) {
                const c10::Half h(x);
                codes[i] = static_cast<std::int16_t>(h.x);
                return static_cast<float>(h);
            }
            const std::int64_t g = r * grid_groups + c / grid_width;
            const int code = grid_code(x, grid_scale[g], grid_zero[g], maxq);
            codes[i] = static_cast<std::int16_t>(code);
            return grid_value(code, grid_scale[g], grid_zero[g]);
        }
        const std::int64_t g = r * bin_groups + c / bin_width;
        const bool s = binary_sign(x, mu[g]);
        signs[i] = s;
        return binary_value(s, mu[g], alpha[g]);
    }
};

/// Quantizes columns [b0, b1) of rows [r0, r1) of W in place with `quantize` (an element
/// quantizer: (row, column, row * cols + column, value) -> stored value), feeding each column's error into the rest
/// of the block. Rows are independent here, so callers split them across threads.
template <typename ElementQuantizer>
PBLLM_ALWAYS_INLINE void walk_block_rows(const ColumnWalk& k, const ElementQuantizer& quantize, float* W,
                                         std::int64_t r0, std::int64_t r1)
{
    // Locals: the elements' stores (bool, int16) may alias the walk's fields for the compiler.
    const std::int64_t cols = k.cols, b0 = k.b0, b1 = k.b1, nb = k.nb;
    const bool feedback = k.feedback;
    const float* U = k.U;
    float *out = k.out, *err = k.err;
    for (std::int64_t r = r0; r < r1; ++r) {
        float* row = W + r * cols;
        const std::int64_t base = r * cols;
        for (std::int64_t i = 0; i < nb; ++i) {
            const std::int64_t c = b0 + i;
            const float x = row[c];
            const float q = quantize(r, c, base + c, x);
            out[base + c] = q;
            if (!feedback)
                continue;
            const float d = (x - q) / U[c * cols + c];
            err[r * nb + i] = d;
            const float* u = U + c * cols;
#pragma omp simd
            for (std::int64_t j = c + 1; j < b1; ++j)
                row[j] -= d * u[j];
        }
    }
}

/// The walk with PB-LLM's elements, compiled once per instruction set.
PBLLM_MULTIVERSION
void walk_partial_binary_rows(const ColumnWalk& k, const PartialBinaryElements& e, float* W, std::int64_t r0,
                              std::int64_t r1)
{
    walk_block_rows(k, e, W, r0, r1);
}

} // namespace

QuantizedLinear quantize_gptq_family(const std::string& name, const at::Tensor& W_in, at::Tensor H,
                                     const LayerQuantSettings& settings, const GptqOptions& options,
                                     double reference_energy)
{
    const auto start = std::chrono::steady_clock::now();
    const std::int64_t rows = W_in.size(0), cols = W_in.size(1); // checked by quantize_linear
    if (settings.method != QuantMethod::PbGptq && settings.method != QuantMethod::Rtn &&
        settings.method != QuantMethod::Gptq)
        throw Error(name + ": the GPTQ solver does not run " + to_string(settings.method));
    const bool plain_gptq = settings.method == QuantMethod::Gptq;
    const bool feedback = settings.method != QuantMethod::Rtn;
    if (!H.defined() && (feedback || settings.metric != SaliencyMetric::Magnitude))
        throw Error(name + ": " + to_string(settings.method) + " with " + to_string(settings.metric) +
                    " saliency needs calibration data (a Hessian)");
    if (options.act_order && options.groupsize > 0)
        throw Error(name + ": act-order together with a group size is not supported");
    if (options.groupsize > 0 && options.groupsize % options.blocksize != 0)
        throw Error(name + ": groupsize must be a multiple of the blocksize");

    QuantizedLinear q;
    q.name = name;
    q.rows = rows;
    q.cols = cols;
    q.settings = settings;
    q.groupsize = options.groupsize;

    at::Tensor W = W_in.to(at::kCPU, at::kFloat).clone();
    at::Tensor perm;
    HessianFactors factors;
    const bool have_hessian = H.defined();
    if (have_hessian) {
        at::Tensor Hd = H.to(at::kCPU, at::kDouble);
        if (options.act_order) {
            perm = at::argsort(Hd.diagonal(), /*dim=*/0, /*descending=*/true);
            Hd = Hd.index_select(0, perm).index_select(1, perm);
            W = W.index_select(1, perm).contiguous();
        }
        factors = factor_hessian(Hd, options.percdamp, name);
        q.note = factors.note;
        W.masked_fill_(factors.dead.unsqueeze(0), 0.0f);
    }
    // Past the factorisation H is needed only for a product (rtn's output error, or a
    // denominator the caller did not measure). Otherwise this reference goes now: a caller that
    // moved its last one in frees the Hessian (0.97 GB for a 7B down_proj) before the sweep.
    const bool product_needed =
        have_hessian && options.measure_output_error && (!feedback || reference_energy < 0.0);
    if (!product_needed)
        H = at::Tensor();

    // Quantizer parameters from the original W, fixed during GPTQ (METHOD.md sections 1-3).
    const int gbits = q.grid_bits();
    if (plain_gptq) {
        q.salient = at::ones({rows, cols}, at::kBool);
    } else {
        const at::Tensor scores = saliency_scores(W, settings.metric, have_hessian ? &factors : nullptr);
        q.salient = salient_mask(scores, settings.salient_ratio, options.groupsize);
        q.binary = fit_binary_stats(W, q.salient, settings.binarizer, options.groupsize);
    }
    if (gbits != 16)
        q.grid = fit_row_grid(W, gbits, plain_gptq ? options.groupsize : 0);
    q.codes = at::zeros({rows, cols}, at::kShort);
    q.signs = at::zeros({rows, cols}, at::kBool);
    q.dequantized = at::empty({rows, cols}, at::kFloat);

    ColumnWalk k;
    k.cols = cols;
    k.feedback = feedback;
    k.U = factors.upper_inverse.defined() ? factors.upper_inverse.data_ptr<float>() : nullptr;
    k.out = q.dequantized.data_ptr<float>();
    PartialBinaryElements e;
    e.grid_bits = gbits;
    e.maxq = (1 << std::min(gbits, 8)) - 1;
    e.mask = q.salient.data_ptr<bool>();
    if (q.grid.scale.defined()) {
        e.grid_scale = q.grid.scale.data_ptr<float>();
        e.grid_zero = q.grid.zero.data_ptr<float>();
        e.grid_groups = q.grid.scale.size(1);
    }
    e.grid_width = plain_gptq && options.groupsize > 0 ? options.groupsize : cols;
    if (q.binary.mu.defined()) {
        e.mu = q.binary.mu.data_ptr<float>();
        e.alpha = q.binary.alpha.data_ptr<float>();
        e.bin_groups = q.binary.mu.size(1);
    }
    e.bin_width = options.groupsize > 0 ? options.groupsize : cols;
    e.codes = q.codes.data_ptr<std::int16_t>();
    e.signs = q.signs.data_ptr<bool>();
    float* w = W.data_ptr<float>();

    const std::int64_t B = options.blocksize;
    // GPTQ's own losses: quantizing column c with the optimal update of the later columns adds
    // ((w_c - q_c) / U_cc)^2 to tr(dW H' dW^T), H' the damped Hessian, exactly (Frantar et al.,
    // 2022). Their sum is the output error's numerator at no cost beyond one read of each block.
    double damped_loss = 0.0;
    for (std::int64_t b0 = 0; b0 < cols; b0 += B) {
        const std::int64_t b1 = std::min(b0 + B, cols), nb = b1 - b0;
        if (plain_gptq && options.groupsize > 0 && b0 % options.groupsize == 0 && feedback) {
            // Standard GPTQ: a group's grid is fitted to the weights as updated so far.
            const std::int64_t width = std::min<std::int64_t>(options.groupsize, cols - b0);
            const RowGrid g = fit_row_grid(W.narrow(1, b0, width), gbits);
            q.grid.scale.select(1, b0 / options.groupsize).copy_(g.scale.select(1, 0));
            q.grid.zero.select(1, b0 / options.groupsize).copy_(g.zero.select(1, 0));
        }
        at::Tensor err = at::empty({rows, nb}, at::kFloat);
        k.b0 = b0;
        k.b1 = b1;
        k.nb = nb;
        k.err = err.data_ptr<float>();
        at::parallel_for(0, rows, std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(nb, 1)),
                         [&](std::int64_t r0, std::int64_t r1) { walk_partial_binary_rows(k, e, w, r0, r1); });
        if (feedback)
            damped_loss += (err * err).sum(at::kDouble).item<double>();
        if (feedback && b1 < cols) {
            // In place: the strided view is a valid GEMM output (ldc = cols), no temporary.
            at::Tensor rest = W.narrow(1, b1, cols - b1);
            rest.addmm_(err, factors.upper_inverse.narrow(0, b0, nb).narrow(1, b1, cols - b1), /*beta=*/1, /*alpha=*/-1);
        }
    }

    W = at::Tensor(); // the working copy is spent
    if (perm.defined()) {
        const at::Tensor inverse = at::argsort(perm);
        auto unpermute = [&](at::Tensor& t) { t = t.index_select(1, inverse).contiguous(); };
        unpermute(q.dequantized);
        unpermute(q.codes);
        unpermute(q.signs);
        unpermute(q.salient);
    }
    // The errors are measured against W as the quantizer saw it: dead columns zeroed.
    const at::Tensor dead = !have_hessian       ? at::Tensor()
                            : perm.defined() ? factors.dead.index_select(0, at::argsort(perm))
                                             : factors.dead;
    const ErrorSums sums = error_sums(W_in, q.dequantized, dead);
    q.salient_ratio = plain_gptq ? 1.0 : q.salient.to(at::kDouble).mean().item<double>();
    q.weight_error = std::sqrt(sums.error) / std::max(std::sqrt(sums.weights), 1e-30);
    if (have_hessian && options.measure_output_error) {
        // Products with H only where needed: the fed-back path has its numerator from the losses.
        const bool need_den = reference_energy < 0.0;
        const at::Tensor Hf = !feedback || need_den ? H.to(at::kCPU, at::kFloat) : at::Tensor();
        double num = 0.0, den = reference_energy;
        if (feedback) {
            // H' = H + damping on every diagonal entry, + 1 more on dead columns (H_jj = 0 there).
            const double on_dead = sums.per_column.masked_select(dead).sum().item<double>();
            num = std::max(0.0, damped_loss - factors.damping * sums.error - on_dead);
            if (need_den)
                hessian_error_energy(W_in, at::Tensor(), dead, Hf, &den);
        } else {
            num = hessian_error_energy(W_in, q.dequantized, dead, Hf, need_den ? &den : nullptr);
        }
        q.output_error = den > 0 ? num / den : 0.0;
    }
    q.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return q;
}

} // namespace pbllm

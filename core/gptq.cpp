#include "core/gptq.h"

#include "core/error.h"
#include "core/quant/registry.h"
#include "core/saliency.h"
#include "core/simd.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <chrono>
#include <cmath>

namespace pbllm {

int QuantizedLinear::grid_bits() const
{
    if (stores_block_binary(settings.method))
        return 2; // a salient weight's two sign bits: BiLLM's headline counts 2 bits there
    return settings.method == QuantMethod::Gptq ? settings.bits : settings.salient_bits;
}

at::Tensor QuantizedLinear::dequantize() const
{
    if (stores_block_binary(settings.method))
        return block_binary.dequantize(rows, cols);
    const std::int64_t grid_groups = grid.scale.defined() ? grid.scale.size(1) : 1;
    auto expand = [&](const at::Tensor& per_group, std::int64_t groups) {
        // (rows, groups) -> (rows, cols): groups of `groupsize` columns as the quantizers fit
        // them (the last one shorter), or one group per row.
        const std::int64_t width = groups == 1 ? cols : groupsize;
        return per_group.repeat_interleave(width, 1).narrow(1, 0, cols);
    };
    at::Tensor high;
    if (grid_bits() == 16) {
        high = codes.view(at::kHalf).to(at::kFloat);
    } else {
        high = expand(grid.scale, grid_groups) * (codes.to(at::kFloat) - expand(grid.zero, grid_groups));
    }
    if (settings.method == QuantMethod::Gptq)
        return high;
    const std::int64_t groups = binary.mu.size(1);
    const at::Tensor mu = expand(binary.mu, groups), alpha = expand(binary.alpha, groups);
    const at::Tensor low = at::where(signs, mu + alpha, mu - alpha);
    return at::where(salient, high, low);
}

void QuantizedLinear::validate() const
{
    auto fail = [&](const std::string& why) { throw Error(name + ": inconsistent quantized tensor: " + why); };
    auto shaped = [&](const at::Tensor& t, at::IntArrayRef s, const char* what) {
        if (!t.defined() || t.sizes() != s)
            fail(std::string(what) + " has the wrong shape");
    };
    if (rows <= 0 || cols <= 0)
        fail("empty shape");
    if (stores_block_binary(settings.method)) {
        block_binary.validate(rows, cols, name);
        return;
    }
    shaped(salient, {rows, cols}, "salient mask");
    shaped(codes, {rows, cols}, "codes");
    shaped(signs, {rows, cols}, "signs");
    if (grid_bits() != 16) {
        if (!grid.scale.defined() || grid.scale.size(0) != rows || grid.zero.sizes() != grid.scale.sizes())
            fail("grid parameters have the wrong shape");
        if (!(grid.scale > 0).all().item<bool>() || !at::isfinite(grid.scale).all().item<bool>())
            fail("grid scales must be positive and finite");
        const int maxq = (1 << grid_bits()) - 1;
        if ((grid.zero < 0).any().item<bool>() || (grid.zero > maxq).any().item<bool>())
            fail("zero points outside [0, " + std::to_string(maxq) + "]");
        if ((codes < 0).any().item<bool>() || (codes > maxq).any().item<bool>())
            fail("codes outside [0, " + std::to_string(maxq) + "]");
    }
    if (settings.method != QuantMethod::Gptq) {
        if (!binary.mu.defined() || binary.mu.size(0) != rows || binary.alpha.sizes() != binary.mu.sizes())
            fail("binarization statistics have the wrong shape");
        if (!at::isfinite(binary.mu).all().item<bool>() || !at::isfinite(binary.alpha).all().item<bool>() ||
            (binary.alpha < 0).any().item<bool>())
            fail("binarization statistics must be finite, alpha >= 0");
    }
}

namespace {

/// Everything the per-column loop of one block needs, as raw pointers.
struct BlockKernel {
    std::int64_t cols = 0, b0 = 0, b1 = 0, nb = 0;
    bool feedback = true;
    int grid_bits = 8, maxq = 255;
    const float* U = nullptr; ///< upper Cholesky factor of H^-1 (cols, cols)
    const bool* mask = nullptr;
    const float *grid_scale = nullptr, *grid_zero = nullptr;
    std::int64_t grid_groups = 1, grid_width = 1;
    const float *mu = nullptr, *alpha = nullptr;
    std::int64_t bin_groups = 1, bin_width = 1;
    std::int16_t* codes = nullptr;
    bool* signs = nullptr;
    float* out = nullptr;
    float* err = nullptr; ///< (rows, nb)
};

/// tr(A H A^T) with one (rows x cols x cols) product, in float32 with a float64 sum.
double hessian_energy(const at::Tensor& A, const at::Tensor& Hf)
{
    return (at::matmul(A, Hf) * A).sum(at::kDouble).item<double>();
}

/// Sums over dW = W - Q: ||dW||^2, ||W||^2 and dW's squared column norms, in float64, with W's
/// `dead` columns (when defined) zeroed. In chunks of rows: no (rows x cols) temporaries, which
/// for a 7B down_proj would be 180 MB each.
struct ErrorSums {
    double error = 0.0, weights = 0.0;
    at::Tensor per_column; ///< float64 (cols)
};

ErrorSums error_sums(const at::Tensor& W, const at::Tensor& Q, const at::Tensor& dead)
{
    const std::int64_t rows = Q.size(0), cols = Q.size(1);
    const std::int64_t chunk = std::max<std::int64_t>(1, (std::int64_t(1) << 20) / cols);
    ErrorSums s;
    s.per_column = at::zeros({cols}, at::kDouble);
    for (std::int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const std::int64_t n = std::min(chunk, rows - r0);
        at::Tensor w = W.narrow(0, r0, n).to(at::kCPU, at::kDouble, /*non_blocking=*/false, /*copy=*/true);
        if (dead.defined())
            w.masked_fill_(dead.unsqueeze(0), 0.0);
        const at::Tensor d = w - Q.narrow(0, r0, n).to(at::kDouble);
        s.weights += w.pow(2).sum().item<double>();
        s.per_column += d.pow(2).sum(0);
    }
    s.error = s.per_column.sum().item<double>();
    return s;
}

/// Quantizes columns [b0, b1) of rows [r0, r1) of W in place, feeding each column's error into
/// the rest of the block. Rows are independent here, so callers split them across threads.
PBLLM_MULTIVERSION
void quantize_block_rows(const BlockKernel& k, float* W, std::int64_t r0, std::int64_t r1)
{
    for (std::int64_t r = r0; r < r1; ++r) {
        float* row = W + r * k.cols;
        const std::int64_t base = r * k.cols;
        for (std::int64_t i = 0; i < k.nb; ++i) {
            const std::int64_t c = k.b0 + i;
            const float x = row[c];
            float q;
            if (k.mask[base + c]) {
                if (k.grid_bits == 16) {
                    const c10::Half h(x);
                    q = static_cast<float>(h);
                    k.codes[base + c] = static_cast<std::int16_t>(h.x);
                } else {
                    const std::int64_t g = r * k.grid_groups + c / k.grid_width;
                    const int code = grid_code(x, k.grid_scale[g], k.grid_zero[g], k.maxq);
                    q = grid_value(code, k.grid_scale[g], k.grid_zero[g]);
                    k.codes[base + c] = static_cast<std::int16_t>(code);
                }
            } else {
                const std::int64_t g = r * k.bin_groups + c / k.bin_width;
                const bool s = binary_sign(x, k.mu[g]);
                q = binary_value(s, k.mu[g], k.alpha[g]);
                k.signs[base + c] = s;
            }
            k.out[base + c] = q;
            if (!k.feedback)
                continue;
            const float d = (x - q) / k.U[c * k.cols + c];
            k.err[r * k.nb + i] = d;
            const float* u = k.U + c * k.cols;
#pragma omp simd
            for (std::int64_t j = c + 1; j < k.b1; ++j)
                row[j] -= d * u[j];
        }
    }
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

    BlockKernel k;
    k.cols = cols;
    k.feedback = feedback;
    k.grid_bits = gbits;
    k.maxq = (1 << std::min(gbits, 8)) - 1;
    k.U = factors.upper_inverse.defined() ? factors.upper_inverse.data_ptr<float>() : nullptr;
    k.mask = q.salient.data_ptr<bool>();
    if (q.grid.scale.defined()) {
        k.grid_scale = q.grid.scale.data_ptr<float>();
        k.grid_zero = q.grid.zero.data_ptr<float>();
        k.grid_groups = q.grid.scale.size(1);
    }
    k.grid_width = plain_gptq && options.groupsize > 0 ? options.groupsize : cols;
    if (q.binary.mu.defined()) {
        k.mu = q.binary.mu.data_ptr<float>();
        k.alpha = q.binary.alpha.data_ptr<float>();
        k.bin_groups = q.binary.mu.size(1);
    }
    k.bin_width = options.groupsize > 0 ? options.groupsize : cols;
    k.codes = q.codes.data_ptr<std::int16_t>();
    k.signs = q.signs.data_ptr<bool>();
    k.out = q.dequantized.data_ptr<float>();
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
                         [&](std::int64_t r0, std::int64_t r1) { quantize_block_rows(k, w, r0, r1); });
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
        at::Tensor Hf; // made only when a product is needed: the fed-back path needs none
        auto product = [&](const at::Tensor& A) {
            if (!Hf.defined())
                Hf = H.to(at::kCPU, at::kFloat);
            return hessian_energy(A, Hf);
        };
        auto original = [&] {
            at::Tensor o = W_in.to(at::kCPU, at::kFloat).clone();
            if (dead.defined())
                o.masked_fill_(dead.unsqueeze(0), 0.0f);
            return o;
        };
        double num;
        if (feedback) {
            // H' = H + damping on every diagonal entry, + 1 more on dead columns (H_jj = 0 there).
            const double on_dead = sums.per_column.masked_select(dead).sum().item<double>();
            num = std::max(0.0, damped_loss - factors.damping * sums.error - on_dead);
        } else {
            num = product(original() - q.dequantized);
        }
        const double den = reference_energy >= 0.0 ? reference_energy : product(original());
        q.output_error = den > 0 ? num / den : 0.0;
    }
    q.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return q;
}

} // namespace pbllm

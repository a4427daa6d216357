#include "core/packed_runtime.h"

#include "core/bitpack.h"
#include "core/error.h"
#include "core/quant/registry.h"
#include "core/kernels/matvec.h"
#include "core/ptq.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

namespace pbllm {
namespace {

using kernels::kPackedBlock;

/// Parameter groups of a row: binarization-statistics groups, or plain GPTQ's grid groups (the
/// other kind is always one per row).
std::int64_t parameter_groups(const PackedLinear& p)
{
    return method_info(p.method).plain_grid ? p.grid_groups : p.stat_groups;
}

/// Below this many tokens a batched product runs the matvec kernel per token; from it on, a
/// tile of rows is unpacked once (about 1 ns a weight) and multiplied with all the tokens.
constexpr std::int64_t kTiledFromTokens = 16;

constexpr std::uint16_t kHalfOne = 0x3C00; // FP16 bits of 1.0: the scale of FP16 salient values

} // namespace

std::string packed_kernels_unsupported(const PackedLinear& p)
{
    if (stores_block_binary(p.method))
        return "the packed kernels do not run block-binarized (" + to_string(p.method) + ") Linears yet";
    const std::int64_t groups = parameter_groups(p);
    if (groups <= 1)
        return "";
    // Groups of groupsize columns (the last one may be shorter) in whole blocks.
    if (p.groupsize % kPackedBlock != 0)
        return "its parameter groups of " + std::to_string(p.groupsize) + " columns are not whole " +
               std::to_string(kPackedBlock) + "-column blocks of the packed kernels";
    return "";
}

PackedWeightsPtr build_packed_weights(const PackedLinear& p, const std::string& what)
{
    auto fail = [&](const std::string& why) { throw Error(what + ": " + why); };
    validate_packed_fields(p, what);
    if (const std::string why = packed_kernels_unsupported(p); !why.empty())
        fail(why);
    if (p.salient_count > std::numeric_limits<std::uint32_t>::max())
        fail("more salient weights than the runtime layout indexes (2^32)");
    const std::int64_t n = p.weights();
    const std::vector<bool> mask = decode_index(p.index, n, p.salient_count, what);

    auto W = std::make_shared<kernels::PackedWeights>();
    W->rows = p.rows;
    W->cols = p.cols;
    W->blocks = (p.cols + kPackedBlock - 1) / kPackedBlock;
    W->groups = std::max<std::int64_t>(1, parameter_groups(p));
    W->group_blocks = W->groups == 1 ? W->blocks : p.groupsize / kPackedBlock;
    W->code_bits = p.grid_bits;
    W->binarized = !method_info(p.method).plain_grid;

    // Row parameters, one set per (row, group); a per-row kind is repeated over the groups.
    const std::size_t params = static_cast<std::size_t>(p.rows * W->groups);
    W->mu.assign(params, 0);
    W->alpha.assign(params, 0);
    W->scale.assign(params, kHalfOne);
    W->zero.assign(params, 0);
    const int maxq = (1 << std::min(p.grid_bits, 8)) - 1;
    for (std::int64_t r = 0; r < p.rows; ++r)
        for (std::int64_t g = 0; g < W->groups; ++g) {
            const std::size_t slot = static_cast<std::size_t>(r * W->groups + g);
            if (W->binarized) {
                const std::size_t s = static_cast<std::size_t>(r * p.stat_groups + (p.stat_groups > 1 ? g : 0));
                const float mu = kernels::f16_to_float(p.mu[s]), alpha = kernels::f16_to_float(p.alpha[s]);
                if (!std::isfinite(mu) || !std::isfinite(alpha) || alpha < 0.0f)
                    fail("row " + std::to_string(r) + " has a non-finite mean or a negative or non-finite alpha");
                W->mu[slot] = p.mu[s];
                W->alpha[slot] = p.alpha[s];
            }
            if (p.grid_bits != 16) {
                const std::size_t s = static_cast<std::size_t>(r * p.grid_groups + (p.grid_groups > 1 ? g : 0));
                const float scale = kernels::f16_to_float(p.grid_scale[s]);
                if (!(scale > 0.0f) || !std::isfinite(scale))
                    fail("row " + std::to_string(r) + " has a grid scale that is not positive and finite");
                if (p.grid_zero[s] > maxq)
                    fail("row " + std::to_string(r) + " has a zero point above " + std::to_string(maxq));
                W->scale[slot] = p.grid_scale[s];
                W->zero[slot] = p.grid_zero[s];
            }
        }

    const std::int64_t words = W->words_per_row();
    W->signs.assign(static_cast<std::size_t>(p.rows * words), 0u);
    W->row_start.assign(static_cast<std::size_t>(p.rows + 1), 0u);
    W->salient = p.salient_count;
    W->block_count.assign(static_cast<std::size_t>(p.rows * W->blocks), 0);
    const auto entries = static_cast<std::size_t>(p.salient_count + kernels::kPackedEntryPadding);
    W->offsets.reserve(entries);
    if (p.grid_bits == 16)
        W->values16.reserve(entries);
    else
        W->codes.reserve(entries);
    BitReader codes(p.codes.data(), p.codes.size(), what + " (codes)");
    std::int64_t sign_index = 0;
    for (std::int64_t r = 0; r < p.rows; ++r) {
        std::uint32_t* signs = W->signs.data() + r * words;
        for (std::int64_t c = 0; c < p.cols; ++c) {
            const std::int64_t i = r * p.cols + c;
            if (mask[static_cast<std::size_t>(i)]) {
                const auto code = static_cast<std::uint16_t>(codes.get(p.grid_bits));
                if (p.grid_bits == 16 && !std::isfinite(kernels::f16_to_float(code)))
                    fail("the salient weight at row " + std::to_string(r) + ", column " + std::to_string(c) +
                         " is not finite");
                if (p.grid_bits != 16 && code > maxq)
                    fail("a code above " + std::to_string(maxq) + " at row " + std::to_string(r));
                ++W->block_count[static_cast<std::size_t>(r * W->blocks + c / kPackedBlock)]; // at most 128
                W->offsets.push_back(static_cast<std::uint8_t>(c % kPackedBlock));
                if (p.grid_bits == 16)
                    W->values16.push_back(code);
                else
                    W->codes.push_back(static_cast<std::uint8_t>(code));
            } else {
                if ((p.signs[static_cast<std::size_t>(sign_index >> 3)] >> (sign_index & 7)) & 1u)
                    signs[c / 32] |= 1u << (c % 32);
                ++sign_index;
            }
        }
        if (W->offsets.size() > std::numeric_limits<std::uint32_t>::max())
            fail("more salient entries than the runtime layout indexes (2^32)");
        W->row_start[static_cast<std::size_t>(r + 1)] = static_cast<std::uint32_t>(W->offsets.size());
    }
    W->offsets.resize(W->offsets.size() + kernels::kPackedEntryPadding, 0);
    if (p.grid_bits == 16)
        W->values16.resize(W->values16.size() + kernels::kPackedEntryPadding, 0);
    else
        W->codes.resize(W->codes.size() + kernels::kPackedEntryPadding, 0);
    return W;
}

void packed_matvec(const kernels::PackedWeights& W, const float* x, float* y, kernels::PackedInput& scratch,
                   bool reuse_input)
{
    if (!reuse_input || scratch.x.size() != static_cast<std::size_t>(W.padded_cols()) ||
        scratch.group_sums.size() != static_cast<std::size_t>(W.groups))
        kernels::prepare_packed_input(W, x, scratch);
    const int threads = at::get_num_threads();
    // Threads pay off once a matrix is big enough (~64K weights) to outweigh the wake-up cost.
    if (threads <= 1 || W.rows * W.cols < (1 << 16)) {
        kernels::packed_matvec_rows(W, scratch, y, 0, W.rows);
        return;
    }
    // One contiguous run of rows per thread, of equal work: rows with more salient weights cost more.
    const double total = kernels::packed_row_cost(W, W.rows);
    auto row_at = [&](std::int64_t chunk) {
        const double target = total * static_cast<double>(chunk) / threads;
        std::int64_t lo = 0, hi = W.rows;
        while (lo < hi) {
            const std::int64_t mid = (lo + hi) / 2;
            if (kernels::packed_row_cost(W, mid) < target)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    };
    at::parallel_for(0, threads, 1, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t chunk = begin; chunk < end; ++chunk)
            kernels::packed_matvec_rows(W, scratch, y, row_at(chunk), chunk + 1 == threads ? W.rows : row_at(chunk + 1));
    });
}

at::Tensor packed_linear_forward(const kernels::PackedWeights& W, const at::Tensor& x)
{
    if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || x.dim() < 1 || x.size(-1) != W.cols)
        throw Error("packed Linear of " + std::to_string(W.cols) + " columns needs float32 CPU inputs of that width");
    const at::Tensor X = x.reshape({-1, W.cols}).contiguous();
    const std::int64_t T = X.size(0);
    std::vector<std::int64_t> sizes(x.sizes().begin(), x.sizes().end());
    sizes.back() = W.rows;
    at::Tensor out = at::empty({T, W.rows}, at::kFloat);
    if (T < kTiledFromTokens) {
        kernels::PackedInput scratch;
        for (std::int64_t t = 0; t < T; ++t)
            packed_matvec(W, X.data_ptr<float>() + t * W.cols, out.data_ptr<float>() + t * W.rows, scratch);
        return out.view(sizes);
    }
    // About 8 MiB of float32 rows per tile: unpacked once, used by every token.
    const std::int64_t tile = std::min(std::max<std::int64_t>((8ll << 20) / (W.cols * 4), 64), W.rows);
    // Kept between calls: a fresh 8 MiB block each time would be mapped and page-faulted anew.
    thread_local at::Tensor buffer;
    if (!buffer.defined() || buffer.numel() < tile * W.cols)
        buffer = at::empty({tile * W.cols}, at::kFloat);
    for (std::int64_t r0 = 0; r0 < W.rows; r0 += tile) {
        const std::int64_t n = std::min(tile, W.rows - r0);
        float* b = buffer.data_ptr<float>();
        at::parallel_for(0, n, 8, [&](std::int64_t begin, std::int64_t end) {
            kernels::packed_dequantize_rows(W, b + begin * W.cols, r0 + begin, r0 + end);
        });
        out.narrow(1, r0, n).copy_(at::mm(X, buffer.narrow(0, 0, n * W.cols).view({n, W.cols}).t()));
    }
    return out.view(sizes);
}

at::Tensor dense_linear_weight(const DecoderLayer& layer, LinearKind kind)
{
    const kernels::PackedWeights* W = layer.packed_weight(kind);
    if (!W)
        return layer.weight(kind);
    at::Tensor out = at::empty({W->rows, W->cols}, at::kFloat);
    float* o = out.data_ptr<float>();
    at::parallel_for(0, W->rows, 16, [&](std::int64_t begin, std::int64_t end) {
        kernels::packed_dequantize_rows(*W, o + begin * W->cols, begin, end);
    });
    return out;
}

std::int64_t resident_weight_bytes(const Model& model)
{
    std::int64_t bytes = 0;
    for (const NamedTensor& t : model.named_tensors())
        bytes += t.tensor.numel() * static_cast<std::int64_t>(t.tensor.element_size());
    for (const DecoderLayer& layer : model.layers)
        for (const PackedWeightsPtr& W : layer.packed)
            bytes += W ? W->resident_bytes() : 0;
    return bytes;
}

Model packed_runtime_model(const QuantizedModel& q)
{
    Model m = q.model;
    for (const QuantizedLinear& linear : q.linears)
        for (int l = 0; l < static_cast<int>(m.layers.size()); ++l)
            for (LinearKind k : kAllLinearKinds)
                if (linear_name(l, k) == linear.name) {
                    const PackedLinear p = pack_linear(linear);
                    if (const std::string why = packed_kernels_unsupported(p); !why.empty()) {
                        m.notes.push_back(linear.name + ": " + why + "; it runs dequantized");
                        continue;
                    }
                    try {
                        m.layers[l].packed[static_cast<int>(k)] = build_packed_weights(p, linear.name);
                        m.layers[l].weight(k) = at::Tensor();
                    } catch (const Error& e) { // e.g. a grid scale that rounds to 0 in FP16
                        m.notes.push_back(std::string(e.what()) + "; it runs dequantized");
                    }
                }
    return m;
}

double resident_bits_per_weight(const kernels::PackedWeights& W)
{
    return static_cast<double>(W.resident_bytes()) * 8.0 / static_cast<double>(W.rows * W.cols);
}

} // namespace pbllm

#include "core/gptq.h"

#include "core/error.h"
#include "core/quant/registry.h"

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <cmath>

namespace pbllm {

int QuantizedLinear::grid_bits() const
{
    if (stores_block_binary(settings.method))
        return 2; // a salient weight's two sign bits: BiLLM's headline counts 2 bits there
    return method_info(settings.method).plain_grid ? settings.bits : settings.salient_bits;
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
    if (method_info(settings.method).plain_grid)
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
    if (!method_info(settings.method).plain_grid) {
        if (!binary.mu.defined() || binary.mu.size(0) != rows || binary.alpha.sizes() != binary.mu.sizes())
            fail("binarization statistics have the wrong shape");
        if (!at::isfinite(binary.mu).all().item<bool>() || !at::isfinite(binary.alpha).all().item<bool>() ||
            (binary.alpha < 0).any().item<bool>())
            fail("binarization statistics must be finite, alpha >= 0");
    }
}

} // namespace pbllm

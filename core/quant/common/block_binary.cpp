#include "core/quant/common/block_binary.h"

#include "core/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace pbllm {

float log8_value(float base, std::uint8_t code)
{
    return code == 0 ? 0.0f : base * std::exp2(static_cast<float>(static_cast<int>(code) - 255) / 16.0f);
}

std::uint8_t log8_code(float value, float base)
{
    if (!(value > 0.0f) || !(base > 0.0f))
        return 0;
    const double k = 255.0 + 16.0 * std::log2(static_cast<double>(value) / base);
    const int guess = static_cast<int>(std::lround(std::min(255.0, std::max(0.0, k))));
    int best = 0;
    for (int c : {guess - 1, guess, guess + 1}) // the nearest in value among the neighbours and 0
        if (c >= 1 && c <= 255 &&
            std::fabs(log8_value(base, static_cast<std::uint8_t>(c)) - value) <
                std::fabs(log8_value(base, static_cast<std::uint8_t>(best)) - value))
            best = c;
    return static_cast<std::uint8_t>(best);
}

void BlockBinaryCodes::validate(std::int64_t rows, std::int64_t cols, const std::string& what) const
{
    auto fail = [&](const std::string& why) { throw Error(what + ": inconsistent block-binary codes: " + why); };
    if (block < 1)
        fail("block size " + std::to_string(block) + " is not positive");
    auto shaped = [&](const at::Tensor& t, at::IntArrayRef s, at::ScalarType type, const char* name) {
        if (!t.defined() || t.sizes() != s || t.scalar_type() != type)
            fail(std::string(name) + " has the wrong shape or type");
    };
    shaped(salient_cols, {cols}, at::kBool, "column bitmap");
    shaped(sparse, {rows, cols}, at::kBool, "group bitmap");
    shaped(sign1, {rows, cols}, at::kBool, "signs");
    shaped(sign2, {rows, cols}, at::kBool, "second-order signs");
    shaped(params, {rows, blocks(cols), layout.row_params()}, at::kFloat, "row parameters");
    if (!at::isfinite(params).all().item<bool>())
        fail("row parameters are not finite");
    if (layout.row_column) {
        shaped(column_params, {cols, kRcColumnParams}, at::kFloat, "column parameters");
        if (!at::isfinite(column_params).all().item<bool>())
            fail("column parameters are not finite");
        if ((params < 0).any().item<bool>() || (column_params < 0).any().item<bool>())
            fail("a scale is negative");
        if (layout.log8_scales) {
            shaped(scale_bases, {blocks(cols), 2}, at::kFloat, "scale bases");
            if (!at::isfinite(scale_bases).all().item<bool>() || (scale_bases < 0).any().item<bool>())
                fail("a scale base is negative or not finite");
        }
    } else {
        if (layout.log8_scales)
            fail("8-bit scales belong to the row-column layout only");
        if (column_params.defined() && column_params.numel() > 0)
            fail("column parameters belong to the row-column layout only");
        for (int a = kSalientAlpha1; a < layout.row_params(); a += 2) // alphas sit at the even slots
            if ((params.select(2, a) < 0).any().item<bool>())
                fail("a scale (alpha) is negative");
    }
    if (!layout.split_salient && (sparse & salient_cols.unsqueeze(0)).any().item<bool>())
        fail("the group bitmap marks a salient column");
}

at::Tensor BlockBinaryCodes::dequantize(std::int64_t rows, std::int64_t cols) const
{
    at::Tensor out = at::empty({rows, cols}, at::kFloat);
    const at::Tensor sc = salient_cols.contiguous(), sp = sparse.contiguous(), s1 = sign1.contiguous(),
                     s2 = sign2.contiguous(), pr = params.contiguous();
    const at::Tensor cp = layout.row_column ? column_params.contiguous() : at::zeros({cols, kRcColumnParams}, at::kFloat);
    const bool *col = sc.data_ptr<bool>(), *spa = sp.data_ptr<bool>(), *a = s1.data_ptr<bool>(), *b = s2.data_ptr<bool>();
    const float *p = pr.data_ptr<float>(), *cpp = cp.data_ptr<float>();
    float* o = out.data_ptr<float>();
    const std::int64_t nblocks = blocks(cols), np = layout.row_params();
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) {
            const std::int64_t i = r * cols + c;
            o[i] = block_binary_value(layout, col[c], spa[i], a[i], b[i], p + (r * nblocks + c / block) * np,
                                      cpp + c * kRcColumnParams);
        }
    return out;
}

} // namespace pbllm

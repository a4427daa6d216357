#include "core/quant/common/block_binary.h"

#include "core/error.h"

#include <ATen/ATen.h>

#include <cmath>

namespace pbllm {

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
    } else {
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

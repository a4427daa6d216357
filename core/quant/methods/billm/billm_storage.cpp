#include "core/quant/methods/billm/billm_storage.h"

#include "core/bitpack.h"
#include "core/error.h"
#include "core/quant/registry.h"

#include <ATen/ATen.h>
#include <c10/util/Half.h>

namespace pbllm {
namespace {

bool bit(const std::vector<std::uint8_t>& bytes, std::int64_t i)
{
    return (bytes[static_cast<std::size_t>(i >> 3)] >> (i & 7)) & 1u;
}

std::int64_t blocks_of(const PackedLinear& p) { return (p.cols + p.block - 1) / p.block; }

std::int64_t salient_columns(const PackedLinear& p)
{
    std::int64_t n = 0;
    for (std::int64_t c = 0; c < p.cols; ++c)
        n += bit(p.column_bitmap, c);
    return n;
}

/// Column parameters stored for one column, in slot order (see RowColumnColumnParam).
std::vector<int> column_slots(const BlockBinaryLayout& layout, bool salient)
{
    if (!layout.row_column)
        return {};
    if (!salient)
        return {kRcColumn1, kRcColumnSparse1};
    if (!layout.split_salient)
        return {kRcColumn1, kRcColumn2};
    return {kRcColumn1, kRcColumn2, kRcColumnSparse1, kRcColumnSparse2};
}

std::int64_t column_param_count(const PackedLinear& p, const BlockBinaryLayout& layout)
{
    std::int64_t n = 0;
    for (std::int64_t c = 0; c < p.cols; ++c)
        n += layout.column_params(bit(p.column_bitmap, c));
    return n;
}

} // namespace

PackedLinear pack_block_binary(const QuantizedLinear& q)
{
    const BlockBinaryCodes& codes = q.block_binary;
    PackedLinear p;
    p.name = q.name;
    p.rows = q.rows;
    p.cols = q.cols;
    p.method = q.settings.method;
    p.binarizer = q.settings.binarizer;
    p.grid_bits = q.grid_bits();
    p.salient_ratio_requested = q.settings.salient_ratio;
    p.block = codes.block;
    const at::Tensor cols = codes.salient_cols.contiguous(), sparse = codes.sparse.contiguous(),
                     s1 = codes.sign1.contiguous(), s2 = codes.sign2.contiguous();
    const bool* col = cols.data_ptr<bool>();
    const BlockBinaryLayout& layout = codes.layout;
    p.column_bitmap = pack_bits(col, q.cols);
    p.signs = pack_bits(s1.data_ptr<bool>(), q.rows * q.cols);
    BitWriter group, second;
    const bool *spa = sparse.data_ptr<bool>(), *b = s2.data_ptr<bool>();
    for (std::int64_t r = 0; r < q.rows; ++r)
        for (std::int64_t c = 0; c < q.cols; ++c) {
            const std::int64_t i = r * q.cols + c;
            if (col[c]) {
                second.put(b[i], 1);
                ++p.salient_count;
            }
            if (!col[c] || layout.split_salient)
                group.put(spa[i], 1);
        }
    p.group_bitmap = group.take();
    p.signs2 = second.take();
    const at::Tensor params = codes.params.contiguous();
    p.block_params.reserve(static_cast<std::size_t>(params.numel()));
    for (std::int64_t i = 0; i < params.numel(); ++i)
        p.block_params.push_back(c10::Half(params.data_ptr<float>()[i]).x);
    if (layout.row_column) {
        const at::Tensor cp = codes.column_params.contiguous();
        for (std::int64_t c = 0; c < q.cols; ++c)
            for (int slot : column_slots(layout, col[c]))
                p.column_params.push_back(c10::Half(cp.data_ptr<float>()[c * kRcColumnParams + slot]).x);
    }
    return p;
}

void validate_block_binary_fields(const PackedLinear& p, const std::string& what)
{
    auto fail = [&](const std::string& why) { throw Error(what + ": " + why); };
    if (p.rows <= 0 || p.cols <= 0 || p.rows > (1 << 24) || p.cols > (1 << 24))
        fail("implausible shape " + std::to_string(p.rows) + " x " + std::to_string(p.cols));
    if (p.block < 1 || p.block > (1 << 20))
        fail("block size " + std::to_string(p.block) + " is not in 1..2^20");
    const std::string method = to_string(p.method);
    if (p.grid_bits != 2 || p.groupsize != 0)
        fail("a " + method + " Linear stores salient_bits 2 and groupsize 0");
    const BlockBinaryLayout layout = block_layout_of(p.method);
    auto sized = [&](const std::vector<std::uint8_t>& v, std::int64_t bits, const char* name) {
        if (static_cast<std::int64_t>(v.size()) != (bits + 7) / 8)
            fail(std::string(name) + " holds " + std::to_string(v.size()) + " bytes, expected " +
                 std::to_string((bits + 7) / 8));
    };
    sized(p.column_bitmap, p.cols, "column bitmap");
    const std::int64_t salient = p.rows * salient_columns(p), n = p.weights();
    if (p.salient_count != salient)
        fail("salient count " + std::to_string(p.salient_count) + " does not match the column bitmap (" +
             std::to_string(salient) + ")");
    sized(p.signs, n, "signs");
    sized(p.signs2, salient, "second-order signs");
    sized(p.group_bitmap, layout.split_salient ? n : n - salient, "group bitmap");
    if (static_cast<std::int64_t>(p.block_params.size()) != p.rows * blocks_of(p) * layout.row_params())
        fail("block parameters do not match the shape and block size");
    if (static_cast<std::int64_t>(p.column_params.size()) != column_param_count(p, layout))
        fail("column parameters hold " + std::to_string(p.column_params.size()) + " values, expected " +
             std::to_string(column_param_count(p, layout)));
    if (!p.index.bytes.empty() || !p.codes.empty() || !p.grid_scale.empty() || !p.mu.empty() || !p.alpha.empty())
        fail("holds arrays that a block binarizer does not store");
}

QuantizedLinear unpack_block_binary(const PackedLinear& p, const std::string& what)
{
    validate_block_binary_fields(p, what);
    QuantizedLinear q;
    q.name = p.name;
    q.rows = p.rows;
    q.cols = p.cols;
    q.settings.method = p.method;
    q.settings.binarizer = p.binarizer;
    q.settings.salient_ratio = p.salient_ratio_requested;
    BlockBinaryCodes& codes = q.block_binary;
    codes.layout = block_layout_of(p.method);
    codes.block = p.block;
    codes.salient_cols = at::empty({p.cols}, at::kBool);
    codes.sparse = at::zeros({p.rows, p.cols}, at::kBool);
    codes.sign1 = at::empty({p.rows, p.cols}, at::kBool);
    codes.sign2 = at::zeros({p.rows, p.cols}, at::kBool);
    codes.params = at::empty({p.rows, blocks_of(p), codes.layout.row_params()}, at::kFloat);
    bool* col = codes.salient_cols.data_ptr<bool>();
    for (std::int64_t c = 0; c < p.cols; ++c)
        col[c] = bit(p.column_bitmap, c);
    bool *spa = codes.sparse.data_ptr<bool>(), *s1 = codes.sign1.data_ptr<bool>(), *s2 = codes.sign2.data_ptr<bool>();
    std::int64_t salient = 0, rest = 0;
    for (std::int64_t r = 0; r < p.rows; ++r)
        for (std::int64_t c = 0; c < p.cols; ++c) {
            const std::int64_t i = r * p.cols + c;
            s1[i] = bit(p.signs, i);
            if (col[c])
                s2[i] = bit(p.signs2, salient++);
            if (!col[c] || codes.layout.split_salient)
                spa[i] = bit(p.group_bitmap, rest++);
        }
    float* params = codes.params.data_ptr<float>();
    for (std::size_t i = 0; i < p.block_params.size(); ++i)
        params[i] = static_cast<float>(c10::Half(p.block_params[i], c10::Half::from_bits()));
    if (codes.layout.row_column) {
        codes.column_params = at::zeros({p.cols, kRcColumnParams}, at::kFloat);
        float* cp = codes.column_params.data_ptr<float>();
        std::size_t next = 0;
        for (std::int64_t c = 0; c < p.cols; ++c)
            for (int slot : column_slots(codes.layout, col[c]))
                cp[c * kRcColumnParams + slot] = static_cast<float>(c10::Half(p.column_params[next++], c10::Half::from_bits()));
    }
    try {
        q.validate();
    } catch (const Error& e) {
        throw Error(what + ": " + e.what());
    }
    q.dequantized = q.dequantize();
    if (!at::isfinite(q.dequantized).all().item<bool>())
        throw Error(what + ": dequantized weights are not finite");
    q.salient = codes.salient_cols.unsqueeze(0).expand({p.rows, p.cols}).contiguous();
    q.salient_ratio = static_cast<double>(salient) / static_cast<double>(p.weights());
    return q;
}

void write_block_binary(const Writer& w, hid_t g, const PackedLinear& p)
{
    w.attr(g, "rows", p.rows);
    w.attr(g, "cols", p.cols);
    w.attr(g, "method", to_string(p.method));
    w.attr(g, "binarizer", to_string(p.binarizer));
    w.attr(g, "salient_bits", static_cast<std::int64_t>(p.grid_bits));
    w.attr(g, "groupsize", static_cast<std::int64_t>(0));
    w.attr(g, "salient_ratio_requested", p.salient_ratio_requested);
    w.attr(g, "salient_count", p.salient_count);
    w.attr(g, "block", static_cast<std::int64_t>(p.block));
    w.bytes(g, "column_bitmap", p.column_bitmap);
    w.bytes(g, "group_bitmap", p.group_bitmap);
    w.bytes(g, "signs", p.signs);
    w.bytes(g, "signs2", p.signs2);
    const BlockBinaryLayout layout = block_layout_of(p.method);
    w.halves(g, "block_params", p.block_params,
             {static_cast<hsize_t>(p.rows), static_cast<hsize_t>(blocks_of(p) * layout.row_params())});
    if (layout.row_column)
        w.halves(g, "column_params", p.column_params, {static_cast<hsize_t>(p.column_params.size())});
}

void read_block_binary(const Reader& r, hid_t g, PackedLinear& p, const std::string& what)
{
    p.grid_bits = static_cast<int>(r.attr_int(g, "salient_bits"));
    p.groupsize = static_cast<int>(r.attr_int(g, "groupsize"));
    p.salient_ratio_requested = r.attr_double(g, "salient_ratio_requested");
    p.salient_count = r.attr_int(g, "salient_count");
    const std::int64_t block = r.attr_int(g, "block");
    if (block < 1 || block > (1 << 20))
        throw Error(what + ": block size " + std::to_string(block) + " is not in 1..2^20");
    p.block = static_cast<int>(block);
    if (p.grid_bits != 2 || p.groupsize != 0)
        throw Error(what + ": a " + to_string(p.method) + " Linear stores salient_bits 2 and groupsize 0");
    p.column_bitmap = r.bytes(g, "column_bitmap");
    p.group_bitmap = r.bytes(g, "group_bitmap");
    p.signs = r.bytes(g, "signs");
    p.signs2 = r.bytes(g, "signs2");
    if (p.rows <= 0 || p.cols <= 0 || p.rows > (1 << 24) || p.cols > (1 << 24))
        throw Error(what + ": implausible shape " + std::to_string(p.rows) + " x " + std::to_string(p.cols));
    if (static_cast<std::int64_t>(p.column_bitmap.size()) != (p.cols + 7) / 8)
        throw Error(what + ": column bitmap holds " + std::to_string(p.column_bitmap.size()) + " bytes, expected " +
                    std::to_string((p.cols + 7) / 8));
    const BlockBinaryLayout layout = block_layout_of(p.method);
    p.block_params = r.halves(g, "block_params",
                              {static_cast<hsize_t>(p.rows), static_cast<hsize_t>(blocks_of(p) * layout.row_params())});
    if (layout.row_column)
        p.column_params =
            r.halves(g, "column_params", {static_cast<hsize_t>(column_param_count(p, layout))});
    validate_block_binary_fields(p, what);
}

} // namespace pbllm

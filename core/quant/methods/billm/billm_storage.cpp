#include "core/quant/methods/billm/billm_storage.h"

#include "core/bitpack.h"
#include "core/error.h"
#include "core/quant/payload.h"
#include "core/quant/registry.h"

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstring>

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

void pack_block_binary(const QuantizedLinear& q, PackedLinear& p)
{
    const BlockBinaryCodes& codes = q.block_binary;
    p.block = codes.block;
    const at::Tensor cols = codes.salient_cols.contiguous(), sparse = codes.sparse.contiguous(),
                     s1 = codes.sign1.contiguous(), s2 = codes.sign2.contiguous();
    const bool* col = cols.data_ptr<bool>();
    const BlockBinaryLayout& layout = codes.layout;
    p.block_layout = layout;
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
    const float* pr = params.data_ptr<float>();
    const std::int64_t blocks = codes.blocks(q.cols), np = layout.row_params();
    const float* bases = layout.log8_scales ? codes.scale_bases.contiguous().data_ptr<float>() : nullptr;
    if (bases)
        p.scale_bases.assign(bases, bases + blocks * 2);
    for (std::int64_t i = 0; i < params.numel(); ++i) {
        if (bases)
            p.scale_codes.push_back(log8_code(pr[i], bases[(i / np) % blocks * 2]));
        else
            p.block_params.push_back(c10::Half(pr[i]).x);
    }
    if (layout.row_column) {
        const at::Tensor cp = codes.column_params.contiguous();
        for (std::int64_t c = 0; c < q.cols; ++c)
            for (int slot : column_slots(layout, col[c])) {
                const float v = cp.data_ptr<float>()[c * kRcColumnParams + slot];
                if (bases)
                    p.scale_codes.push_back(log8_code(v, bases[c / codes.block * 2 + 1]));
                else
                    p.column_params.push_back(c10::Half(v).x);
            }
    }
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
    const BlockBinaryLayout& layout = p.block_layout;
    if (layout.log8_scales && !layout.row_column)
        fail("8-bit scales belong to the row-column layout (arb-rc) only");
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
    const std::int64_t row_count = p.rows * blocks_of(p) * layout.row_params(),
                       column_count = column_param_count(p, layout);
    auto counted = [&](std::size_t have, std::int64_t want, const char* name) {
        if (static_cast<std::int64_t>(have) != want)
            fail(std::string(name) + " hold " + std::to_string(have) + " values, expected " + std::to_string(want));
    };
    if (layout.log8_scales) {
        counted(p.scale_codes.size(), row_count + column_count, "8-bit scale codes");
        counted(p.scale_bases.size(), 2 * blocks_of(p), "scale bases");
        counted(p.block_params.size() + p.column_params.size(), 0, "FP16 parameters beside 8-bit scales");
        for (float b : p.scale_bases)
            if (!std::isfinite(b) || b < 0.0f)
                fail("a scale base is negative or not finite");
    } else {
        counted(p.block_params.size(), row_count, "block parameters");
        counted(p.column_params.size(), column_count, "column parameters");
        counted(p.scale_codes.size() + p.scale_bases.size(), 0, "8-bit scale codes beside FP16 parameters");
    }
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
    codes.layout = p.block_layout;
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
    const std::int64_t blocks = blocks_of(p), np = codes.layout.row_params(), row_count = codes.params.numel();
    const bool log8 = codes.layout.log8_scales;
    if (log8)
        codes.scale_bases = at::from_blob(const_cast<float*>(p.scale_bases.data()), {blocks, 2}, at::kFloat).clone();
    auto half = [](std::uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); };
    for (std::int64_t i = 0; i < row_count; ++i)
        params[i] = log8 ? log8_value(p.scale_bases[static_cast<std::size_t>((i / np) % blocks * 2)],
                                      p.scale_codes[static_cast<std::size_t>(i)])
                         : half(p.block_params[static_cast<std::size_t>(i)]);
    if (codes.layout.row_column) {
        codes.column_params = at::zeros({p.cols, kRcColumnParams}, at::kFloat);
        float* cp = codes.column_params.data_ptr<float>();
        std::size_t next = 0;
        for (std::int64_t c = 0; c < p.cols; ++c)
            for (int slot : column_slots(codes.layout, col[c])) {
                cp[c * kRcColumnParams + slot] =
                    log8 ? log8_value(p.scale_bases[static_cast<std::size_t>(c / p.block * 2 + 1)],
                                      p.scale_codes[static_cast<std::size_t>(row_count) + next])
                         : half(p.column_params[next]);
                ++next;
            }
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
    w.attr(g, "block", static_cast<std::int64_t>(p.block));
    w.bytes(g, "column_bitmap", p.column_bitmap);
    w.bytes(g, "group_bitmap", p.group_bitmap);
    w.bytes(g, "signs", p.signs);
    w.bytes(g, "signs2", p.signs2);
    const BlockBinaryLayout& layout = p.block_layout;
    // Written only where they differ from the method's preset (absent = the preset).
    const BlockBinaryLayout preset = block_layout_of(p.method);
    if (layout.split_salient != preset.split_salient)
        w.attr(g, "cgb", static_cast<std::int64_t>(layout.split_salient));
    if (layout.log8_scales != preset.log8_scales)
        w.attr(g, "scale_format", std::string(layout.log8_scales ? "log8" : "fp16"));
    if (layout.log8_scales) {
        w.bytes(g, "scale_codes", p.scale_codes);
        w.dataset(g, "scale_bases", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {static_cast<hsize_t>(p.scale_bases.size())},
                  p.scale_bases.data());
        return;
    }
    w.halves(g, "block_params", p.block_params,
             {static_cast<hsize_t>(p.rows), static_cast<hsize_t>(blocks_of(p) * layout.row_params())});
    if (layout.row_column)
        w.halves(g, "column_params", p.column_params, {static_cast<hsize_t>(p.column_params.size())});
}

void read_block_binary(const Reader& r, hid_t g, PackedLinear& p, const std::string& what)
{
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
    // Absent attributes mean the method's preset (files from before these options, and presets).
    BlockBinaryLayout& layout = p.block_layout;
    layout = block_layout_of(p.method);
    if (r.has_attr(g, "cgb")) {
        const std::int64_t cgb = r.attr_int(g, "cgb");
        if (cgb != 0 && cgb != 1)
            throw Error(what + ": attribute cgb is " + std::to_string(cgb) + ", not 0 or 1");
        layout.split_salient = cgb == 1;
    }
    if (r.has_attr(g, "scale_format")) {
        const std::string format = r.attr_string(g, "scale_format");
        if (format != "fp16" && format != "log8")
            throw Error(what + ": scale_format '" + format + "' is not one of fp16, log8");
        layout.log8_scales = format == "log8";
    }
    if (layout.log8_scales && !layout.row_column)
        throw Error(what + ": 8-bit scales belong to the row-column layout (arb-rc) only");
    const std::int64_t row_count = p.rows * blocks_of(p) * layout.row_params(),
                       column_count = column_param_count(p, layout);
    if (layout.log8_scales) {
        const std::vector<hsize_t> codes_shape{static_cast<hsize_t>(row_count + column_count)},
            bases_shape{static_cast<hsize_t>(2 * blocks_of(p))};
        p.scale_codes = r.read_raw(g, "scale_codes", H5T_NATIVE_UINT8, 1, &codes_shape);
        const std::vector<std::uint8_t> raw = r.read_raw(g, "scale_bases", H5T_NATIVE_FLOAT, 4, &bases_shape);
        p.scale_bases.resize(raw.size() / 4);
        std::memcpy(p.scale_bases.data(), raw.data(), raw.size());
    } else {
        p.block_params = r.halves(g, "block_params",
                                  {static_cast<hsize_t>(p.rows), static_cast<hsize_t>(blocks_of(p) * layout.row_params())});
        if (layout.row_column)
            p.column_params = r.halves(g, "column_params", {static_cast<hsize_t>(column_count)});
    }
    validate_block_binary_fields(p, what);
}

namespace {

BitsPerWeight block_binary_conventions(const LinearBits& l)
{
    // BiLLM's headline: 2 bits per salient weight, 1 for the rest; its bitmaps are its index, so
    // with_bitmap counts them as stored.
    BitsPerWeight b;
    const double r = static_cast<double>(l.salient_count) / static_cast<double>(l.weights);
    b.headline = l.grid_bits * r + (1.0 - r);
    b.with_bitmap = b.with_index = b.headline + 8.0 * static_cast<double>(l.index_bytes) / static_cast<double>(l.weights);
    return b;
}

double block_binary_bound(const LayerQuantSettings& s, std::int64_t rows, std::int64_t cols, int blocksize, int)
{
    // A sign per weight, the group bitmap at most per weight, second-order signs at most per
    // weight; row parameters per row and block, column parameters and the column bit per column.
    const BlockBinaryLayout layout = block_layout_of(s.method, s.block_binary);
    const double param_bits = layout.log8_scales ? 8.0 : 16.0;
    const double blocks_per_column = std::ceil(static_cast<double>(cols) / blocksize) / static_cast<double>(cols);
    return 3.0 + param_bits * layout.row_params() * blocks_per_column +
           (1.0 + param_bits * layout.column_params(true)) / static_cast<double>(rows) +
           (layout.log8_scales ? 64.0 * blocks_per_column / static_cast<double>(rows) : 0.0) + // two float bases per block
           64.0 / static_cast<double>(rows * cols); // a byte of padding for each of the few arrays
}

} // namespace

const PackedPayload& block_binary_payload()
{
    static const PackedPayload payload{pack_block_binary,  validate_block_binary_fields, unpack_block_binary,
                                       write_block_binary, read_block_binary,            block_binary_conventions,
                                       block_binary_bound};
    return payload;
}

} // namespace pbllm

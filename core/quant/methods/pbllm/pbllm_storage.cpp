#include "core/quant/methods/pbllm/pbllm_storage.h"

#include "core/bitpack.h"
#include "core/error.h"
#include "core/packed_hdf5.h"
#include "core/quant/payload.h"
#include "core/quant/registry.h"

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <cmath>

namespace pbllm {
namespace {

std::uint16_t half_bits(float v) { return c10::Half(v).x; }
float half_value(std::uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }

} // namespace

void pack_partial_binary(const QuantizedLinear& q, PackedLinear& p)
{
    p.groupsize = q.groupsize;
    const at::Tensor mask = q.salient.contiguous();
    const at::Tensor codes = q.codes.contiguous();
    const at::Tensor signs = q.signs.contiguous();
    const bool* m = mask.data_ptr<bool>();
    const std::int16_t* c = codes.data_ptr<std::int16_t>();
    const bool* s = signs.data_ptr<bool>();
    const std::int64_t n = q.rows * q.cols;
    p.index = encode_index(m, n);
    BitWriter code_bits;
    std::vector<bool> sign_bits;
    std::vector<std::uint8_t> sign_bytes;
    std::int64_t nonsalient = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        if (m[i]) {
            ++p.salient_count;
            code_bits.put(static_cast<std::uint16_t>(c[i]), p.grid_bits);
        } else {
            if (nonsalient % 8 == 0)
                sign_bytes.push_back(0);
            if (s[i])
                sign_bytes.back() |= static_cast<std::uint8_t>(1u << (nonsalient % 8));
            ++nonsalient;
        }
    }
    p.codes = code_bits.take();
    p.signs = std::move(sign_bytes);
    if (p.grid_bits != 16) {
        p.grid_groups = q.grid.scale.size(1);
        const at::Tensor scale = q.grid.scale.contiguous(), zero = q.grid.zero.contiguous();
        for (std::int64_t i = 0; i < scale.numel(); ++i) {
            p.grid_scale.push_back(half_bits(scale.data_ptr<float>()[i]));
            p.grid_zero.push_back(static_cast<std::uint8_t>(zero.data_ptr<float>()[i]));
        }
    }
    if (!method_info(p.method).plain_grid) {
        p.stat_groups = q.binary.mu.size(1);
        const at::Tensor mu = q.binary.mu.contiguous(), alpha = q.binary.alpha.contiguous();
        for (std::int64_t i = 0; i < mu.numel(); ++i) {
            p.mu.push_back(half_bits(mu.data_ptr<float>()[i]));
            p.alpha.push_back(half_bits(alpha.data_ptr<float>()[i]));
        }
    }
}

void validate_partial_binary_fields(const PackedLinear& p, const std::string& what)
{
    auto fail = [&](const std::string& why) { throw Error(what + ": " + why); };
    if (!((p.grid_bits >= 2 && p.grid_bits <= 8) || p.grid_bits == 16))
        fail("salient bit-width " + std::to_string(p.grid_bits) + " is not 2..8 or 16");
    if (method_info(p.method).plain_grid && p.grid_bits == 16)
        fail("plain GPTQ cannot store FP16 codes");
    const std::int64_t n = p.weights();
    if (p.salient_count < 0 || p.salient_count > n)
        fail("salient count " + std::to_string(p.salient_count) + " is outside [0, " + std::to_string(n) + "]");
    const std::int64_t nonsalient = n - p.salient_count;
    if (static_cast<std::int64_t>(p.codes.size()) != (p.salient_count * p.grid_bits + 7) / 8)
        fail("codes hold " + std::to_string(p.codes.size()) + " bytes, expected " +
             std::to_string((p.salient_count * p.grid_bits + 7) / 8));
    if (static_cast<std::int64_t>(p.signs.size()) != (nonsalient + 7) / 8)
        fail("signs hold " + std::to_string(p.signs.size()) + " bytes, expected " + std::to_string((nonsalient + 7) / 8));
    auto groups_for = [&](int width) { return width > 0 ? (p.cols + width - 1) / width : 1; };
    if (p.grid_bits != 16) {
        const std::int64_t expect = groups_for(method_info(p.method).plain_grid ? p.groupsize : 0);
        if (p.grid_groups != expect || static_cast<std::int64_t>(p.grid_scale.size()) != p.rows * expect ||
            static_cast<std::int64_t>(p.grid_zero.size()) != p.rows * expect)
            fail("grid parameters do not match the shape and group size");
    }
    if (!method_info(p.method).plain_grid) {
        const std::int64_t expect = groups_for(p.groupsize);
        if (p.stat_groups != expect || static_cast<std::int64_t>(p.mu.size()) != p.rows * expect ||
            static_cast<std::int64_t>(p.alpha.size()) != p.rows * expect)
            fail("binarization statistics do not match the shape and group size");
    }
}

QuantizedLinear unpack_partial_binary(const PackedLinear& p, const std::string& what)
{
    auto fail = [&](const std::string& why) { throw Error(what + ": " + why); };
    const std::int64_t n = p.weights();
    const std::vector<bool> mask = decode_index(p.index, n, p.salient_count, what);

    QuantizedLinear q;
    q.name = p.name;
    q.rows = p.rows;
    q.cols = p.cols;
    q.groupsize = p.groupsize;
    q.settings.method = p.method;
    q.settings.binarizer = p.binarizer;
    q.settings.salient_ratio = p.salient_ratio_requested;
    if (method_info(p.method).plain_grid)
        q.settings.bits = p.grid_bits;
    else
        q.settings.salient_bits = p.grid_bits;
    q.salient = at::empty({p.rows, p.cols}, at::kBool);
    q.codes = at::zeros({p.rows, p.cols}, at::kShort);
    q.signs = at::zeros({p.rows, p.cols}, at::kBool);
    bool* m = q.salient.data_ptr<bool>();
    std::int16_t* c = q.codes.data_ptr<std::int16_t>();
    bool* s = q.signs.data_ptr<bool>();
    BitReader codes(p.codes.data(), p.codes.size(), what + " (codes)");
    std::int64_t j = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        m[i] = mask[static_cast<std::size_t>(i)];
        if (m[i]) {
            c[i] = static_cast<std::int16_t>(static_cast<std::uint16_t>(codes.get(p.grid_bits)));
        } else {
            s[i] = (p.signs[static_cast<std::size_t>(j >> 3)] >> (j & 7)) & 1u;
            ++j;
        }
    }
    auto halves = [&](const std::vector<std::uint16_t>& bits, std::int64_t groups) {
        at::Tensor t = at::empty({p.rows, groups}, at::kFloat);
        for (std::size_t i = 0; i < bits.size(); ++i)
            t.data_ptr<float>()[i] = half_value(bits[i]);
        return t;
    };
    if (p.grid_bits != 16) {
        q.grid.bits = p.grid_bits;
        q.grid.scale = halves(p.grid_scale, p.grid_groups);
        q.grid.zero = at::empty({p.rows, p.grid_groups}, at::kFloat);
        for (std::size_t i = 0; i < p.grid_zero.size(); ++i)
            q.grid.zero.data_ptr<float>()[i] = p.grid_zero[i];
    }
    if (!method_info(p.method).plain_grid) {
        q.binary.mu = halves(p.mu, p.stat_groups);
        q.binary.alpha = halves(p.alpha, p.stat_groups);
    }
    try {
        q.validate();
    } catch (const Error& e) {
        fail(e.what());
    }
    q.dequantized = q.dequantize();
    if (!at::isfinite(q.dequantized).all().item<bool>())
        fail("dequantized weights are not finite");
    q.salient_ratio = method_info(p.method).plain_grid ? 1.0 : static_cast<double>(p.salient_count) / static_cast<double>(n);
    return q;
}

void write_partial_binary(const Writer& w, hid_t group, const PackedLinear& p)
{
    w.attr(group, "index_encoding", to_string(p.index.encoding));
    w.attr(group, "rice_k", static_cast<std::int64_t>(p.index.rice_k));
    w.bytes(group, "index", p.index.bytes);
    w.bytes(group, "codes", p.codes);
    w.bytes(group, "signs", p.signs);
    if (p.grid_bits != 16) {
        w.halves(group, "grid_scale", p.grid_scale, {static_cast<hsize_t>(p.rows), static_cast<hsize_t>(p.grid_groups)});
        w.dataset(group, "grid_zero", H5T_STD_U8LE, H5T_NATIVE_UINT8,
                  {static_cast<hsize_t>(p.rows), static_cast<hsize_t>(p.grid_groups)}, p.grid_zero.data());
    }
    if (!method_info(p.method).plain_grid) {
        w.halves(group, "mu", p.mu, {static_cast<hsize_t>(p.rows), static_cast<hsize_t>(p.stat_groups)});
        w.halves(group, "alpha", p.alpha, {static_cast<hsize_t>(p.rows), static_cast<hsize_t>(p.stat_groups)});
    }
}

void read_partial_binary(const Reader& r, hid_t group, PackedLinear& p, const std::string& what)
{
    const std::string enc = r.attr_string(group, "index_encoding");
    p.index.encoding = enc == "rice" ? IndexEncoding::Rice : enc == "all" ? IndexEncoding::All : IndexEncoding::Bitmap;
    if (enc != "rice" && enc != "all" && enc != "bitmap")
        throw Error(what + ": unknown index encoding '" + enc + "'");
    p.index.rice_k = static_cast<int>(r.attr_int(group, "rice_k"));
    p.index.bytes = r.bytes(group, "index");
    p.codes = r.bytes(group, "codes");
    p.signs = r.bytes(group, "signs");
    if (p.grid_bits != 16) {
        std::vector<hsize_t> gshape;
        r.read_raw(group, "grid_zero", H5T_NATIVE_UINT8, 1, nullptr, &gshape);
        if (gshape.size() != 2 || gshape[0] != static_cast<hsize_t>(p.rows))
            throw Error(what + ": grid parameters do not match the shape");
        p.grid_groups = static_cast<std::int64_t>(gshape[1]);
        p.grid_scale = r.halves(group, "grid_scale", gshape);
        p.grid_zero = r.read_raw(group, "grid_zero", H5T_NATIVE_UINT8, 1, &gshape);
    }
    if (!method_info(p.method).plain_grid) {
        std::vector<hsize_t> sshape;
        const Hid t = half_type();
        r.read_raw(group, "mu", t.get(), 2, nullptr, &sshape);
        if (sshape.size() != 2 || sshape[0] != static_cast<hsize_t>(p.rows))
            throw Error(what + ": binarization statistics do not match the shape");
        p.stat_groups = static_cast<std::int64_t>(sshape[1]);
        p.mu = r.halves(group, "mu", sshape);
        p.alpha = r.halves(group, "alpha", sshape);
    }
}

namespace {

BitsPerWeight partial_binary_conventions(const LinearBits& l)
{
    BitsPerWeight b;
    const double r = static_cast<double>(l.salient_count) / static_cast<double>(l.weights);
    if (method_info(l.method).plain_grid) { // every weight on the grid: no bitmap to count
        b.headline = b.with_bitmap = l.grid_bits;
    } else {
        b.headline = l.grid_bits * r + (1.0 - r);
        b.with_bitmap = b.headline + 1.0;
    }
    b.with_index = b.headline + 8.0 * static_cast<double>(l.index_bytes) / static_cast<double>(l.weights);
    return b;
}

double partial_binary_bound(const LayerQuantSettings& s, std::int64_t rows, std::int64_t cols, int, int groupsize)
{
    // Per row: the grid's FP16 scale and 8-bit zero per grid group (plain GPTQ's groups, else
    // one), FP16 mu and alpha per statistics group (PB-LLM's groups); a byte of padding for each
    // of the few arrays.
    const double groups = groupsize > 0 ? std::ceil(static_cast<double>(cols) / groupsize) : 1.0;
    const double padding = 64.0 / static_cast<double>(rows * cols);
    const bool plain = method_info(s.method).plain_grid;
    const double params = (plain ? 24.0 * groups : 24.0 + 32.0 * groups) / static_cast<double>(cols) + padding;
    if (plain)
        return s.bits + params;
    // The grid's codes for the salient share (the threshold never keeps more than asked), a sign
    // for the rest, the index at most a bitmap.
    const double r = s.salient_ratio;
    return s.salient_bits * r + (1.0 - r) + 1.0 + params;
}

} // namespace

const PackedPayload& partial_binary_payload()
{
    static const PackedPayload payload{pack_partial_binary,  validate_partial_binary_fields, unpack_partial_binary,
                                       write_partial_binary, read_partial_binary,            partial_binary_conventions,
                                       partial_binary_bound};
    return payload;
}

} // namespace pbllm

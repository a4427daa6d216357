#include "core/bitpack.h"

#include "core/error.h"

#include <cmath>

namespace pbllm {

void BitWriter::put(std::uint64_t value, int bits)
{
    for (int i = 0; i < bits; ++i) {
        if (bits_ % 8 == 0)
            bytes_.push_back(0);
        if ((value >> i) & 1u)
            bytes_.back() |= static_cast<std::uint8_t>(1u << (bits_ % 8));
        ++bits_;
    }
}

void BitWriter::put_unary(std::uint64_t count)
{
    for (std::uint64_t i = 0; i < count; ++i)
        put(1, 1);
    put(0, 1);
}

BitReader::BitReader(const std::uint8_t* data, std::size_t bytes, std::string what)
    : data_(data), size_bits_(static_cast<std::uint64_t>(bytes) * 8), what_(std::move(what))
{
}

void BitReader::overrun() const { throw Error(what_ + ": bit stream ends early (corrupt or truncated data)"); }

std::uint64_t BitReader::get(int bits)
{
    if (pos_ + static_cast<std::uint64_t>(bits) > size_bits_)
        overrun();
    std::uint64_t v = 0;
    for (int i = 0; i < bits; ++i, ++pos_)
        v |= static_cast<std::uint64_t>((data_[pos_ >> 3] >> (pos_ & 7)) & 1u) << i;
    return v;
}

std::uint64_t BitReader::get_unary(std::uint64_t limit)
{
    std::uint64_t count = 0;
    while (true) {
        if (pos_ >= size_bits_)
            overrun();
        const bool one = (data_[pos_ >> 3] >> (pos_ & 7)) & 1u;
        ++pos_;
        if (!one)
            return count;
        if (++count > limit)
            throw Error(what_ + ": a gap in the sparse index exceeds the tensor (corrupt data)");
    }
}

std::vector<std::uint8_t> pack_bits(const bool* bits, std::int64_t n)
{
    std::vector<std::uint8_t> out(static_cast<std::size_t>((n + 7) / 8), 0);
    for (std::int64_t i = 0; i < n; ++i)
        if (bits[i])
            out[static_cast<std::size_t>(i >> 3)] |= static_cast<std::uint8_t>(1u << (i & 7));
    return out;
}

std::string to_string(IndexEncoding e)
{
    switch (e) {
    case IndexEncoding::Bitmap: return "bitmap";
    case IndexEncoding::Rice: return "rice";
    case IndexEncoding::All: return "all";
    }
    return "?";
}

EncodedIndex encode_index(const bool* mask, std::int64_t n)
{
    std::vector<std::uint64_t> gaps;
    std::uint64_t run = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        if (mask[i]) {
            gaps.push_back(run);
            run = 0;
        } else {
            ++run;
        }
    }
    EncodedIndex out;
    if (static_cast<std::int64_t>(gaps.size()) == n) {
        out.encoding = IndexEncoding::All;
        return out;
    }
    // Rice parameter with the smallest exact size.
    std::uint64_t best_bits = UINT64_MAX;
    for (int k = 0; k < 40; ++k) {
        std::uint64_t bits = 0;
        for (std::uint64_t g : gaps)
            bits += (g >> k) + 1 + static_cast<std::uint64_t>(k);
        if (bits < best_bits) {
            best_bits = bits;
            out.rice_k = k;
        }
    }
    // Rice with k = 0 never exceeds a bitmap (it is unary gap coding); keep the simpler bitmap
    // unless Rice saves at least 1%.
    if (static_cast<double>(best_bits) < 0.99 * static_cast<double>(n)) {
        out.encoding = IndexEncoding::Rice;
        BitWriter w;
        for (std::uint64_t g : gaps) {
            w.put_unary(g >> out.rice_k);
            w.put(g & ((std::uint64_t(1) << out.rice_k) - 1), out.rice_k);
        }
        out.bytes = w.take();
    } else {
        out.encoding = IndexEncoding::Bitmap;
        out.rice_k = 0;
        out.bytes = pack_bits(mask, n);
    }
    return out;
}

std::vector<bool> decode_index(const EncodedIndex& index, std::int64_t n, std::int64_t count, const std::string& what)
{
    std::vector<bool> mask(static_cast<std::size_t>(n), false);
    if (count < 0 || count > n)
        throw Error(what + ": salient count " + std::to_string(count) + " is outside [0, " + std::to_string(n) + "]");
    switch (index.encoding) {
    case IndexEncoding::All:
        if (count != n)
            throw Error(what + ": index says every weight is salient but the count is " + std::to_string(count));
        mask.assign(static_cast<std::size_t>(n), true);
        return mask;
    case IndexEncoding::Bitmap: {
        if (static_cast<std::int64_t>(index.bytes.size()) != (n + 7) / 8)
            throw Error(what + ": bitmap has " + std::to_string(index.bytes.size()) + " bytes, expected " +
                        std::to_string((n + 7) / 8));
        std::int64_t ones = 0;
        for (std::int64_t i = 0; i < n; ++i) {
            mask[static_cast<std::size_t>(i)] = (index.bytes[static_cast<std::size_t>(i >> 3)] >> (i & 7)) & 1u;
            ones += mask[static_cast<std::size_t>(i)];
        }
        if (ones != count)
            throw Error(what + ": bitmap marks " + std::to_string(ones) + " salient weights, expected " +
                        std::to_string(count));
        return mask;
    }
    case IndexEncoding::Rice: {
        if (index.rice_k < 0 || index.rice_k > 40)
            throw Error(what + ": Rice parameter " + std::to_string(index.rice_k) + " is out of range");
        BitReader r(index.bytes.data(), index.bytes.size(), what + " (sparse index)");
        std::int64_t pos = -1;
        for (std::int64_t i = 0; i < count; ++i) {
            const std::uint64_t q = r.get_unary(static_cast<std::uint64_t>(n));
            const std::uint64_t gap = (q << index.rice_k) | r.get(index.rice_k);
            pos += static_cast<std::int64_t>(gap) + 1;
            if (gap > static_cast<std::uint64_t>(n) || pos >= n)
                throw Error(what + ": sparse index points past the end of the tensor");
            mask[static_cast<std::size_t>(pos)] = true;
        }
        return mask;
    }
    }
    throw Error(what + ": unknown index encoding");
}

double expected_index_bits_per_weight(double ratio)
{
    if (ratio <= 0.0 || ratio >= 1.0)
        return 0.0;
    // Gaps are geometric with P(gap >= j) = q^j, q = 1 - r: E[floor(g / 2^k)] = q^m / (1 - q^m).
    const double q = 1.0 - ratio;
    double best = 1.0; // a bitmap
    for (int k = 0; k < 30; ++k) {
        const double qm = std::pow(q, std::ldexp(1.0, k));
        best = std::min(best, ratio * (k + 1 + qm / (1.0 - qm)));
    }
    return best;
}

} // namespace pbllm

#pragma once
// Bit-level codecs of the packed checkpoint: LSB-first bit streams, fixed-width codes, and the
// sparse index of salient positions (a bitmap or Rice-coded gaps, whichever is smaller).
#include <cstdint>
#include <string>
#include <vector>

namespace pbllm {

class BitWriter {
public:
    void put(std::uint64_t value, int bits); ///< low `bits` bits of value, LSB first
    void put_unary(std::uint64_t count);     ///< `count` ones, then a zero
    std::uint64_t bit_count() const { return bits_; }
    std::vector<std::uint8_t> take() { return std::move(bytes_); }

private:
    std::vector<std::uint8_t> bytes_;
    std::uint64_t bits_ = 0;
};

class BitReader {
public:
    /// `what` names the stream in errors ("signs of model.layers.0.self_attn.q_proj").
    BitReader(const std::uint8_t* data, std::size_t bytes, std::string what);
    std::uint64_t get(int bits);
    /// Counts ones up to the next zero; Error when more than `limit` or past the end.
    std::uint64_t get_unary(std::uint64_t limit);

private:
    [[noreturn]] void overrun() const;
    const std::uint8_t* data_;
    std::uint64_t size_bits_;
    std::uint64_t pos_ = 0;
    std::string what_;
};

/// One bit per element.
std::vector<std::uint8_t> pack_bits(const bool* bits, std::int64_t n);

/// How salient positions are stored.
enum class IndexEncoding { Bitmap, Rice, All };
std::string to_string(IndexEncoding e);

struct EncodedIndex {
    IndexEncoding encoding = IndexEncoding::Bitmap;
    int rice_k = 0;
    std::vector<std::uint8_t> bytes;
};

/// Encodes the positions of true entries of mask (n entries, row-major). Rice coding of gaps
/// costs about log2(1/r) + 2 bits per salient weight at ratio r (0.47 bits/weight at r = 0.1,
/// near the mask's entropy) against 1 bit/weight for a bitmap; the smaller one is kept.
EncodedIndex encode_index(const bool* mask, std::int64_t n);
/// Inverse of encode_index; validates that exactly `count` positions < n come out.
std::vector<bool> decode_index(const EncodedIndex& index, std::int64_t n, std::int64_t count, const std::string& what);

/// Expected Rice-coded index bits per weight for uniformly scattered salient weights at ratio
/// r (for previews, before any mask exists).
double expected_index_bits_per_weight(double ratio);

} // namespace pbllm

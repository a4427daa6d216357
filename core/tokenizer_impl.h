#pragma once
// The two tokenizer back ends behind Tokenizer (private to core): SentencePiece through its
// plugin (tokenizer.cpp) and byte-level BPE from a Hugging Face tokenizer.json (bpe_tokenizer.cpp).
#include "core/tokenizer.h"

namespace pbllm {

struct Tokenizer::Impl {
    virtual ~Impl() = default;

    std::string bytes;  ///< what model_bytes() returns: enough to rebuild this tokenizer
    std::size_t file_begin = 0; ///< bytes from here are the tokenizer's own file (after any embedded header)
    std::string origin;
    std::string kind;   ///< "sentencepiece" or "bpe", for display
    int vocab = 0, bos = -1, eos = -1;
    std::vector<int> stops; ///< see Tokenizer::stop_ids: eos (when >= 0) first
    /// Whether decoding drops the space a text's first word carries after BOS (SentencePiece's
    /// dummy prefix); byte-level BPE adds none, so it keeps every byte.
    bool strips_leading_space = false;
    std::vector<std::string> token_bytes; ///< see Tokenizer::token_bytes

    virtual std::vector<int> encode(std::string_view text) const = 0;
    virtual std::string decode(const std::vector<int>& ids) const = 0;
    virtual std::string piece(int id) const = 0;
    virtual float score(int id) const = 0;
};

/// Builds the BPE back end from tokenizer.json text (see bpe_tokenizer.cpp for the accepted forms).
std::shared_ptr<const Tokenizer::Impl> make_bpe_tokenizer(std::string bytes, const std::string& origin,
                                                         const std::string& folder);

} // namespace pbllm

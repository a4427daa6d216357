#pragma once
// Byte-level BPE from a Hugging Face tokenizer.json (GPT-2, GPT-NeoX, Llama 3, Qwen2, SmolLM): the
// parts of the tokenizers library's pipeline these files use, written from its documented behaviour.
// Reached through Tokenizer (tokenizer.h); the pre-tokenizer is public on its own for tests and tools.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pbllm {

/// A tokenizer.json "pre_tokenizer": splits (normalized) text into the pieces BPE merges within.
/// Supports Sequence, Split (Regex or String pattern; behaviours Isolated, Removed,
/// MergedWithPrevious, MergedWithNext, Contiguous; invert), ByteLevel (add_prefix_space, use_regex)
/// and Digits; anything else is refused with its type named.
class BpePreTokenizer {
public:
    /// From the JSON text of the "pre_tokenizer" value ("null": the whole text is one piece).
    /// `where` names the file for messages.
    static BpePreTokenizer from_json(std::string_view json, const std::string& where);
    ~BpePreTokenizer();
    BpePreTokenizer(BpePreTokenizer&&) noexcept;
    BpePreTokenizer& operator=(BpePreTokenizer&&) noexcept;

    /// The pieces of `text`, in order, as UTF-8 (before the byte-to-character mapping).
    std::vector<std::string> split(std::string_view text) const;
    /// Whether a ByteLevel step is present (the vocabulary then spells bytes as characters).
    bool byte_level() const;

    struct Steps;

private:
    explicit BpePreTokenizer(std::unique_ptr<Steps> steps);
    std::unique_ptr<Steps> steps_;
};

} // namespace pbllm

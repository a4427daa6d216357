#pragma once
// Tokenizers: SentencePiece (.model, reached through the dlopen'ed plugin, never linked: see
// spm_plugin.h) and byte-level BPE from a Hugging Face tokenizer.json (bpe_tokenizer.h).
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pbllm {

class Tokenizer {
public:
    /// Loads a SentencePiece .model or a tokenizer.json (BOS/EOS then also from tokenizer_config.json
    /// and generation_config.json beside it); throws Error naming the file (or the plugin) on failure.
    static Tokenizer from_file(const std::string& path);
    /// Loads what model_bytes() returned (e.g. embedded in a checkpoint).
    static Tokenizer from_bytes(std::string bytes, const std::string& origin);

    /// Token ids of `text` as the tokenizer's own library encodes it (SentencePiece, or Hugging Face
    /// tokenizers with add_special_tokens=False), optionally preceded by BOS (when it has one).
    std::vector<int> encode(std::string_view text, bool add_bos = false) const;
    /// Text of ids as the tokenizer's library decodes them; throws Error for ids outside the vocabulary.
    std::string decode(const std::vector<int>& ids) const;

    int vocab_size() const;
    /// The BOS the model expects before a text, or -1 when its tokenizer adds none (GPT-2, SmolLM).
    int bos_id() const;
    int eos_id() const;
    /// Every id that ends a generation: EOS first, then the further stop tokens a
    /// generation_config.json lists (Llama 3.1 Instruct: <|end_of_text|>, <|eom_id|>, <|eot_id|>).
    const std::vector<int>& stop_ids() const;
    bool is_stop(int id) const;
    /// Bytes token `id` stands for: U+2581 turned into a space, <0xNN> byte pieces and byte-level
    /// BPE characters into their bytes, control and special tokens into nothing. A token may hold
    /// part of a longer UTF-8 character.
    const std::string& token_bytes(int id) const;
    /// The raw piece text (with U+2581), for display.
    std::string piece(int id) const;
    /// The piece's score in the model (log-probability for unigram, merge rank for BPE).
    float score(int id) const;

    const std::string& model_bytes() const; ///< serialized model, for embedding elsewhere
    /// The tokenizer's own file as its library writes it: the .model protobuf, or tokenizer.json's text
    /// (model_bytes() without the line that carries BOS, EOS and stop ids).
    std::string_view file_bytes() const;
    const std::string& origin() const;      ///< file or description it came from
    const std::string& kind() const;        ///< "sentencepiece" or "bpe"
    /// Whether decoding drops the space the first word carries after BOS (SentencePiece's dummy prefix).
    bool strips_leading_space() const;

    struct Impl;

private:
    explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
    std::shared_ptr<const Impl> impl_;
};

/// Turns a stream of token ids into whole UTF-8 characters as they complete, dropping the
/// leading space SentencePiece adds after BOS (as SentencePiece's own decoder does).
class StreamingDetokenizer {
public:
    explicit StreamingDetokenizer(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
    /// Text that became complete with `id` (possibly empty while a multi-byte character is open).
    std::string push(int id);
    /// Whatever incomplete bytes remain.
    std::string flush();

private:
    const Tokenizer& tokenizer_;
    std::string pending_;
    bool at_start_ = true;
};

/// The tokenizer that belongs to `model_path`: tokenizer.model in its folder, else the only *.model
/// file there, else tokenizer.json; "" when there is none (or several *.model).
std::string find_tokenizer_beside(const std::string& model_path);

/// Copies the tokenizer at `tokenizer_path` into folder `dir` under its conventional name:
/// tokenizer.model, or tokenizer.json with the tokenizer_config.json and generation_config.json
/// found beside it (they name BOS and EOS).
void copy_tokenizer_files(const std::string& tokenizer_path, const std::string& dir);

/// Writes `tokenizer` (e.g. one embedded in a packed checkpoint) into folder `dir` as the files
/// copy_tokenizer_files would have copied: tokenizer.model, or tokenizer.json with a
/// tokenizer_config.json and generation_config.json naming its BOS, EOS and stop tokens, so that
/// from_file on the result gives the same tokenizer.
void write_tokenizer_files(const Tokenizer& tokenizer, const std::string& dir);

/// Path of the plugin that will be loaded (for diagnostics); throws Error listing where it looked.
std::string spm_plugin_path();

} // namespace pbllm

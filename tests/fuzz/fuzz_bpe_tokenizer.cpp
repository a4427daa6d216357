// tokenizer.json (byte-level BPE): input = u16 little-endian length of the tokenizer.json text, the
// text, then a text to encode. Any JSON must load or be refused with pbllm::Error; a tokenizer that
// loads must encode any text to ids inside its vocabulary, decode them, stream them, and rebuild
// itself from its embedded form (header line: BOS, EOS, stop ids).
#include "core/error.h"
#include "core/tokenizer.h"

#include <cstdint>
#include <cstdlib>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size < 2)
        return 0;
    const std::size_t json_len = std::min<std::size_t>(data[0] | (data[1] << 8), size - 2);
    const std::string json(reinterpret_cast<const char*>(data) + 2, json_len);
    const std::string text(reinterpret_cast<const char*>(data) + 2 + json_len, size - 2 - json_len);
    try {
        const pbllm::Tokenizer tok = pbllm::Tokenizer::from_bytes(json, "fuzz");
        const std::vector<int> ids = tok.encode(text, true);
        for (int id : ids)
            if (id < 0 || id >= tok.vocab_size())
                std::abort(); // an id outside the vocabulary would index past the embedding
        (void)tok.decode(ids);
        pbllm::StreamingDetokenizer stream(tok);
        for (int id : ids)
            (void)stream.push(id);
        (void)stream.flush();
        const pbllm::Tokenizer again = pbllm::Tokenizer::from_bytes(tok.model_bytes(), "fuzz (embedded)");
        if (again.encode(text, true) != ids || again.stop_ids() != tok.stop_ids() || again.bos_id() != tok.bos_id())
            std::abort(); // the embedded form must rebuild the same tokenizer
        for (int id : tok.stop_ids())
            if (id < 0 || id >= tok.vocab_size())
                std::abort(); // a stop id the model cannot produce, or one past the vocabulary
    } catch (const pbllm::Error&) {
    }
    return 0;
}

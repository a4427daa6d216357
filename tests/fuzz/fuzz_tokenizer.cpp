// The tokenizer plugin's model loading (SentencePiece protobuf) through its C interface: any
// bytes must load or be refused with a reason; a loaded model must encode, decode and list its
// pieces. Linked with the plugin's source and SentencePiece only (no libtorch, whose protobuf
// SentencePiece would bind to), so that the plugin's own code runs instrumented; the plugin
// module that sanitizer builds of core load is built without sanitizers (core/CMakeLists.txt).
#include "core/spm_plugin/spm_plugin.h"

#include <cstdlib>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    char error[512];
    PbllmSpm* spm = pbllm_spm_load(reinterpret_cast<const char*>(data), size, error, sizeof error);
    if (!spm)
        return 0;
    const std::string text = "Once upon a time, a fuzzer met a tokenizer.";
    std::vector<std::int32_t> ids;
    auto collect = [](void* ctx, const std::int32_t* p, std::size_t n) {
        static_cast<std::vector<std::int32_t>*>(ctx)->insert(static_cast<std::vector<std::int32_t>*>(ctx)->end(), p, p + n);
    };
    std::string out;
    auto append = [](void* ctx, const char* p, std::size_t n) { static_cast<std::string*>(ctx)->append(p, n); };
    if (pbllm_spm_encode(spm, text.data(), text.size(), collect, &ids, error, sizeof error) == 0)
        pbllm_spm_decode(spm, ids.data(), ids.size(), append, &out, error, sizeof error);
    const std::int32_t vocab = pbllm_spm_vocab_size(spm);
    for (std::int32_t id = 0; id < vocab && id < 64; ++id) {
        pbllm_spm_piece(spm, id, append, &out);
        (void)pbllm_spm_score(spm, id);
        (void)pbllm_spm_piece_type(spm, id);
    }
    pbllm_spm_free(spm);
    return 0;
}

// The only translation unit that sees SentencePiece (see spm_plugin.h for why it is separate).
#include "spm_plugin.h"

#include <sentencepiece_processor.h>

#include <cstring>
#include <string>
#include <vector>

struct PbllmSpm {
    sentencepiece::SentencePieceProcessor processor;
};

namespace {

void copy_error(const std::string& message, char* error, size_t error_size)
{
    if (error && error_size > 0) {
        const size_t n = std::min(message.size(), error_size - 1);
        std::memcpy(error, message.data(), n);
        error[n] = '\0';
    }
}

} // namespace

extern "C" {

int pbllm_spm_abi_version(void) { return PBLLM_SPM_ABI_VERSION; }

PbllmSpm* pbllm_spm_load(const char* bytes, size_t size, char* error, size_t error_size)
{
    auto* spm = new PbllmSpm;
    const auto status = spm->processor.LoadFromSerializedProto(std::string_view(bytes, size));
    if (!status.ok()) {
        copy_error(status.ToString(), error, error_size);
        delete spm;
        return nullptr;
    }
    return spm;
}

void pbllm_spm_free(PbllmSpm* spm) { delete spm; }

int32_t pbllm_spm_vocab_size(const PbllmSpm* spm) { return spm->processor.GetPieceSize(); }

int32_t pbllm_spm_special_id(const PbllmSpm* spm, int which)
{
    switch (which) {
    case 0: return spm->processor.unk_id();
    case 1: return spm->processor.bos_id();
    case 2: return spm->processor.eos_id();
    case 3: return spm->processor.pad_id();
    default: return -1;
    }
}

void pbllm_spm_piece(const PbllmSpm* spm, int32_t id, PbllmSpmByteSink sink, void* ctx)
{
    const std::string& piece = spm->processor.IdToPiece(id);
    sink(ctx, piece.data(), piece.size());
}

float pbllm_spm_score(const PbllmSpm* spm, int32_t id) { return spm->processor.GetScore(id); }

int pbllm_spm_piece_type(const PbllmSpm* spm, int32_t id)
{
    if (spm->processor.IsByte(id)) return 6;
    if (spm->processor.IsUnused(id)) return 5;
    if (spm->processor.IsControl(id)) return 3;
    if (spm->processor.IsUnknown(id)) return 2;
    return 1;
}

int pbllm_spm_encode(const PbllmSpm* spm, const char* text, size_t size, PbllmSpmIdSink sink, void* ctx,
                     char* error, size_t error_size)
{
    std::vector<int> ids;
    const auto status = spm->processor.Encode(std::string_view(text, size), &ids);
    if (!status.ok()) {
        copy_error(status.ToString(), error, error_size);
        return 1;
    }
    std::vector<int32_t> out(ids.begin(), ids.end());
    sink(ctx, out.data(), out.size());
    return 0;
}

int pbllm_spm_decode(const PbllmSpm* spm, const int32_t* ids, size_t count, PbllmSpmByteSink sink, void* ctx,
                     char* error, size_t error_size)
{
    std::vector<int> in(ids, ids + count);
    for (int id : in) {
        if (id < 0 || id >= spm->processor.GetPieceSize()) {
            copy_error("token id " + std::to_string(id) + " is outside the vocabulary", error, error_size);
            return 1;
        }
    }
    std::string text;
    const auto status = spm->processor.Decode(in, &text);
    if (!status.ok()) {
        copy_error(status.ToString(), error, error_size);
        return 1;
    }
    sink(ctx, text.data(), text.size());
    return 0;
}

} // extern "C"

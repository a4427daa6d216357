/* C interface of the SentencePiece plugin (libpbllm_spm.so).
 * SentencePiece and libtorch must never share a binary (Debian's libsentencepiece carries its
 * own protobuf), so core loads this module with dlopen(RTLD_LOCAL | RTLD_DEEPBIND), or into a
 * link-map namespace of its own in sanitizer builds, and talks to it only through these plain C
 * functions. No memory allocated on one side is freed on the other. */
#ifndef PBLLM_SPM_PLUGIN_H
#define PBLLM_SPM_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PBLLM_SPM_ABI_VERSION 1

typedef struct PbllmSpm PbllmSpm;
/* Receives output in pieces; ctx is passed through unchanged. */
typedef void (*PbllmSpmIdSink)(void* ctx, const int32_t* ids, size_t count);
typedef void (*PbllmSpmByteSink)(void* ctx, const char* bytes, size_t count);

int pbllm_spm_abi_version(void);
/* Loads a serialized SentencePiece model; on failure returns NULL and writes a reason to error. */
PbllmSpm* pbllm_spm_load(const char* bytes, size_t size, char* error, size_t error_size);
void pbllm_spm_free(PbllmSpm* spm);
int32_t pbllm_spm_vocab_size(const PbllmSpm* spm);
/* which: 0 unk, 1 bos, 2 eos, 3 pad (-1 when the model has none). */
int32_t pbllm_spm_special_id(const PbllmSpm* spm, int which);
/* Piece text of id (UTF-8, with U+2581 for spaces) and its score and type
 * (type: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte). */
void pbllm_spm_piece(const PbllmSpm* spm, int32_t id, PbllmSpmByteSink sink, void* ctx);
float pbllm_spm_score(const PbllmSpm* spm, int32_t id);
int pbllm_spm_piece_type(const PbllmSpm* spm, int32_t id);
/* Returns 0 on success, non-zero (and writes error) on failure. */
int pbllm_spm_encode(const PbllmSpm* spm, const char* text, size_t size, PbllmSpmIdSink sink, void* ctx,
                     char* error, size_t error_size);
int pbllm_spm_decode(const PbllmSpm* spm, const int32_t* ids, size_t count, PbllmSpmByteSink sink, void* ctx,
                     char* error, size_t error_size);

#ifdef __cplusplus
}
#endif

#endif

#pragma once
// Shared by the fuzz targets: the tiny model shape their seeds use, and a scratch file that
// the path-based readers read each input from.
#include "core/model.h"
#include "core/quant_config.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace pbllm::fuzz {

/// dim 16, hidden 32, 1 layer, 2 heads, vocab 32, context 16: seeds stay a few KB.
ModelConfig tiny_config();

/// The interrupted run fuzz_resume continues: a 2-layer tiny model quantized by PB-GPTQ over fixed
/// windows with one thread (the thread count is part of a run's identity).
struct ResumeRun {
    Model model;
    std::vector<std::vector<int>> windows;
    QuantPlan plan;
};
const ResumeRun& resume_run();

/// The three files of OUT.partial that a resumed run reads, in one fuzz input. The layer file is
/// trusted only with the checksum state.json records: a state that holds kLayerChecksum gets the
/// layer bytes' real SHA-256 there, so mutations reach the layer file's reader too.
struct ResumeFiles {
    std::string state, layer, stream; ///< state.json, layer-0000.h5, stream-0001.bin
};
inline constexpr const char* kLayerChecksum = "@LAYER-0000-SHA256@";
/// Two little-endian u32 lengths, then state, layer and stream (the rest of the input).
std::string pack_resume_files(const ResumeFiles& files);
ResumeFiles unpack_resume_files(const std::uint8_t* data, std::size_t size);

/// Writes bytes to a per-process scratch file (in $TMPDIR or /tmp) and returns its path.
std::string scratch_file(const std::uint8_t* data, std::size_t size, const std::string& suffix);

} // namespace pbllm::fuzz

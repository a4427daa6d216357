#pragma once
// Calibration results on disk (HDF5, documented in the README):
//   /            attributes: format = "pbllm-calibration", format_version, seed, seqlen,
//                text_sha256, model_sha256, model_config (JSON)
//   /windows     int32 (nsamples, seqlen): the calibration token windows
//   /hessians/layer.<i>/<input>   float64 (d, d): H = 2/N sum x x^T of the full-precision model,
//                for input in attention_input, attention_output, mlp_input, mlp_hidden
#include "core/calibration.h"

#include <string>

namespace pbllm {

/// Writes atomically; Error names the file.
void write_calibration_file(const CalibrationData& data, const ModelConfig& config, const std::string& path);
/// Reads and validates against `config` (layer count, Hessian shapes); Error names the file.
/// Without `hessians`, only the windows and attributes (what a quantizer replays): a 7B model's
/// Hessians are 1.4 GB a layer.
CalibrationData read_calibration_file(const std::string& path, const ModelConfig& config, bool hessians = true);

} // namespace pbllm

#pragma once
// Calibration results on disk (HDF5, documented in the README):
//   /            attributes: format = "pbllm-calibration", format_version, seed, seqlen,
//                text_sha256, model_sha256, model_config (JSON)
//   /windows     int32 (nsamples, seqlen): the calibration token windows
//   /hessians/layer.<i>/<input>   (d, d): H = 2/N sum x x^T of the full-precision model,
//                for input in attention_input, attention_output, mlp_input, mlp_hidden;
//                float64 (format_version 1, write_calibration_file) or float32
//                (format_version 2, calibrate_to_file: summed in float64, rounded once)
#include "core/calibration.h"
#include "core/progress.h"

#include <string>

namespace pbllm {

/// Writes atomically; Error names the file.
void write_calibration_file(const CalibrationData& data, const ModelConfig& config, const std::string& path);

/// `pbllm calibrate` for a model of any size: for_each_layer_hessians, each layer's Hessians
/// written to `path` as soon as they are made, in float32 (a 7B model's are 0.69 GB a layer),
/// the file renamed into place only when complete. What is held: the windows' residual streams,
/// one layer in float32 and its Hessians (calibration_working_bytes). `data` gives the windows
/// and the attributes (seed, text and model SHA-256); its hessians are not used. Refuses before
/// starting, with the figures, when the memory or the free disk space would not do.
void calibrate_to_file(const Model& model, const CalibrationData& data, const std::string& path,
                       const ProgressFn& progress = {});

/// What read_calibration_file does with the Hessians: skip them (what a quantizer replays is the
/// windows), read them all, or check them (names, shapes, types) and leave them on disk for
/// calibration_hessian to read one at a time.
enum class HessianLoading { None, All, OnDemand };

/// Reads and validates against `config` (layer count, Hessian shapes); Error names the file.
CalibrationData read_calibration_file(const std::string& path, const ModelConfig& config,
                                      HessianLoading hessians = HessianLoading::All);

/// The Hessian of `input` in decoder layer `layer`, float64: from data.hessians when they were
/// read, else from data.hessian_file (Error names the file, the dataset and the reason).
at::Tensor calibration_hessian(const CalibrationData& data, int layer, LinearInput input);

} // namespace pbllm

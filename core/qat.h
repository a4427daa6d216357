#pragma once
// Quantization-aware training of a partially binarized model (METHOD.md section 5).
#include "core/model.h"
#include "core/progress.h"
#include "core/ptq.h"
#include "core/quant_config.h"

#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace pbllm {

/// Every knob of a QAT run; defaults follow the authors' code where the paper is silent.
struct QatSettings {
    double salient_ratio = 0.1; ///< magnitude-initialised runs: top ratio of |W| per Linear
    int salient_bits = 8;       ///< frozen salient weights on the row grid (2..8)
    Binarizer binarizer = Binarizer::Xnor; ///< xnor (mean shift) or sign
    bool per_layer_scale = false; ///< alpha (and mu) per Linear instead of per row, as the authors' code
    bool clip_ste = false;      ///< gradient of sign passes only where |w| <= 1
    int steps = 200;
    double lr = 1e-4;
    double weight_decay = 0.0;
    double warmup = 0.05;       ///< fraction of steps of linear warm-up before the cosine decay
    int batch = 2;              ///< windows per micro-batch
    int accum = 4;              ///< micro-batches per optimizer step
    int seqlen = 0;             ///< 0 = the model's context
    double grad_clip = 1.0;     ///< max global gradient norm; 0 = off
    double kd = 0.0;            ///< loss = (1 - kd) * CE + kd * KL(p_fp || p_q); 0 = CE only
    std::uint64_t seed = 0;
    int eval_every = 0;         ///< steps between held-out evaluations (0 = never)
    int eval_windows = 20;      ///< windows of the held-out text per evaluation
    int checkpoint_every = 0;   ///< steps between resumable checkpoints (0 = never)
    std::string checkpoint_path; ///< where checkpoints go

    void validate() const;
    std::string to_json() const;
};

/// A snapshot the progress callback receives after every optimizer step.
struct QatProgress {
    int step = 0, steps = 0;
    double loss = 0.0;          ///< mean loss of this step's micro-batches
    double lr = 0.0;
    double tokens_per_second = 0.0;
    std::optional<double> eval_ppl; ///< set on evaluation steps
};
/// Returning false stops training at the end of the current step (the checkpoint, if any, stays).
using QatProgressFn = std::function<bool(const QatProgress&)>;

struct QatResult {
    QuantizedModel quantized;    ///< the trained model in packed form (ready for write_packed_checkpoint)
    std::vector<QatProgress> history;
    int steps_done = 0;
    bool stopped_early = false;
    double seconds = 0.0;
};

/// One Linear under training: frozen salient values and a latent full-precision weight.
struct PbTrainLinear {
    std::string name;
    at::Tensor salient;   ///< bool (rows, cols), frozen
    at::Tensor codes;     ///< int16 grid codes of the salient weights, frozen
    RowGrid grid;         ///< the salient row grid, FP16 parameters
    at::Tensor frozen;    ///< float32: grid values at salient positions, 0 elsewhere
    at::Tensor latent;    ///< float32 (rows, cols), requires grad; only non-salient entries matter

    /// W_eff = where(salient, frozen, alpha * sign(latent - mu) + mu) with a straight-through
    /// gradient (identity, or clipped to |w| <= 1) into the non-salient latent entries.
    at::Tensor effective(Binarizer binarizer, bool per_layer_scale, bool clip_ste) const;
    /// alpha and mu (rows, 1) from the latent weights, without gradient (optimal: alpha = mean |w - mu|).
    std::pair<at::Tensor, at::Tensor> scale_and_mean(Binarizer binarizer, bool per_layer_scale) const;
    /// The packed form of the current state (FP16 statistics, exact dequantization).
    QuantizedLinear freeze(Binarizer binarizer, bool per_layer_scale) const;
};

/// Builds the training Linear from a full-precision weight: top `ratio` of |W| salient, frozen on
/// the row grid of `bits`; latent = W.
PbTrainLinear make_train_linear_magnitude(const std::string& name, const at::Tensor& W, double ratio, int bits);
/// From a quantized Linear (PB-GPTQ result): same mask, salient codes and signs; latent = its
/// dequantized weights (mean and scale are then re-fitted to those signs, as every step does).
PbTrainLinear make_train_linear_from(const QuantizedLinear& q);

/// Trains `model` (float32, CPU) on `train_tokens`. `init` = a PB-GPTQ result to start from
/// (mask, salient codes, binarized state), or nullopt for magnitude initialisation.
/// `eval_tokens` is the held-out text for periodic perplexity. `resume_path` continues a run from
/// its checkpoint; the result is the same as an uninterrupted run with the same settings.
QatResult train_qat(const Model& model, const std::vector<int>& train_tokens, const QatSettings& settings,
                    const std::optional<QuantizedModel>& init, const std::vector<int>& eval_tokens = {},
                    const std::string& resume_path = {}, const QatProgressFn& progress = {});

} // namespace pbllm

#pragma once
// Every knob of PB-LLM quantization in one struct, with the defaults of ../shared/docs/METHOD.md,
// and a QuantPlan that overrides them per Linear (what the studio's sliders edit).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace pbllm {

/// How salient weights are scored (METHOD.md section 1).
enum class SaliencyMetric {
    Magnitude,      ///< |W_ij|
    Hessian,        ///< W_ij^2 / U_jj^2, U the upper Cholesky factor of H^-1 (the authors' code)
    HessianInvDiag, ///< W_ij^2 / [H^-1]_jj^2 (the paper's formula)
};

/// How non-salient weights are binarized (METHOD.md section 3).
enum class Binarizer {
    Xnor,     ///< alpha * sign(w - mu) + mu, mu and alpha over the row's non-salient entries
    XnorCode, ///< as the authors' code: statistics over the whole row with salient entries zeroed
    Sign,     ///< alpha * sign(w), alpha = mean |w| (XNOR-Net, no mean shift)
};

enum class QuantMethod {
    PbGptq, ///< partial binarization with GPTQ error feedback (default)
    Rtn,    ///< the same quantizers without error feedback
    Gptq,   ///< plain GPTQ at `bits` for every weight (baseline)
    Qat,    ///< partial binarization learned by quantization-aware training (stored like pb-gptq)
    Billm,  ///< BiLLM: residual binarization of salient columns, split binarization of the rest
    Arb,    ///< BiLLM's pipeline with ARB-LLM's alternating refined binarization of every group
    ArbX,   ///< ARB-LLM_X: ARB, then its scales refined in the Hessian's metric, with CGB
    ArbRc,  ///< ARB-LLM_RC: row and column scales without means, with CGB
};

/// What BiLLM's searches score a candidate on (the paper and the authors' code differ).
enum class BillmSearch {
    Scores,  ///< binarize the saliency scores S, error measured on S (the authors' code; default)
    Weights, ///< binarize W, error measured on W (the paper's description)
};

/// How BiLLM carries a block's error into the later columns.
enum class BillmCompensation {
    Diagonal, ///< E = (W - Q) / U_jj per column (the authors' code and METHODS-BEYOND.md; default)
    Exact,    ///< E with (W - Q)_block = E U_block,block: GPTQ's column walk with Q fixed
};

/// Whether the group bitmap splits the salient columns too (ARB-LLM's CGB).
enum class CgbChoice {
    Preset, ///< as the method's preset: on for arb-x and arb-rc, off for billm and arb
    On,
    Off,
};

/// How ARB-RC stores its row and column scales.
enum class ScaleFormat {
    Fp16, ///< FP16, as the paper
    Log8, ///< 8-bit codes: 0, or the block's largest scale times 2^(-k/16), k = 0..254
};

/// The options of the block-binary methods (billm, arb, arb-x, arb-rc). Each has a row in
/// layer_settings() (core/quant/settings.h): plan key, flag, help and choices.
struct BlockBinaryOptions {
    BillmSearch search = BillmSearch::Scores;
    BillmCompensation compensation = BillmCompensation::Diagonal;
    CgbChoice cgb = CgbChoice::Preset;
    ScaleFormat scale_format = ScaleFormat::Fp16;
};

/// Settings for one Linear (or the global defaults).
struct LayerQuantSettings {
    double salient_ratio = 0.1;  ///< fraction of weights kept at high precision, [0, 1]
    int salient_bits = 8;        ///< 2..8, or 16 = keep salient weights as FP16
    int bits = 4;                ///< plain GPTQ bit-width (method gptq), 2..8
    SaliencyMetric metric = SaliencyMetric::Hessian;
    Binarizer binarizer = Binarizer::Xnor;
    QuantMethod method = QuantMethod::PbGptq;
    bool skip = false;           ///< keep this Linear in full precision
    BlockBinaryOptions block_binary; ///< billm, arb, arb-x, arb-rc
};

/// Everything a PTQ run depends on. defaults() spells out METHOD.md's defaults.
struct QuantConfig {
    LayerQuantSettings layer;    ///< global defaults, overridden per Linear by QuantPlan rules
    int blocksize = 128;         ///< GPTQ lazy-batch block B
    int groupsize = 0;           ///< columns per salient threshold/statistics group; 0 = whole row
    double percdamp = 0.01;      ///< damping lambda = percdamp * mean(diag H)
    bool act_order = false;      ///< GPTQ columns by decreasing diag H
    int nsamples = 128;          ///< calibration windows
    int seqlen = 0;              ///< calibration window length; 0 = the model's context
    std::uint64_t seed = 0;      ///< calibration sampling seed
    bool quantize_head = false;  ///< also quantize the output head (not tied embeddings)

    static QuantConfig defaults() { return {}; }
    /// Throws Error naming the setting when a value is impossible.
    void validate() const;
};

/// One override: Linears whose name matches `pattern` (glob: * and ?) take the settings named in
/// `keys` (layer_settings() keys, core/quant/settings.h) from `values`.
struct PlanRule {
    std::string pattern;
    LayerQuantSettings values;     ///< only the settings named in `keys` count
    std::vector<std::string> keys; ///< in the order they were set

    explicit PlanRule(std::string glob = {}) : pattern(std::move(glob)) {}
    bool sets(const std::string& key) const;
    /// Marks `key` as set by this rule (its value is read from `values`); returns *this.
    PlanRule& mark(const std::string& key);
    /// Sets `key` to the setting's value encoding (number, choice index, 1/0) and marks it.
    PlanRule& set(const std::string& key, double value);
    /// Clears `key`.
    void unset(const std::string& key);
    /// Applies the rule's settings to `s`.
    void apply(LayerQuantSettings& s) const;
};

/// Global defaults plus ordered per-Linear rules (later rules win).
struct QuantPlan {
    QuantConfig config = QuantConfig::defaults();
    std::vector<PlanRule> rules;

    /// Settings for the Linear called `linear_name` ("model.layers.0.mlp.down_proj").
    LayerQuantSettings settings_for(const std::string& linear_name) const;
    void validate() const;

    std::string to_json() const;
    /// Parses a plan; unknown keys and bad values raise Error naming `origin` and the key.
    static QuantPlan from_json(const std::string& json, const std::string& origin);
    static QuantPlan from_file(const std::string& path);
};

std::string to_string(SaliencyMetric m);
std::string to_string(Binarizer b);
std::string to_string(QuantMethod m);
SaliencyMetric parse_metric(const std::string& s);
Binarizer parse_binarizer(const std::string& s);
QuantMethod parse_method(const std::string& s);

/// Glob match with * (any run) and ? (one character).
bool glob_match(const std::string& pattern, const std::string& text);

} // namespace pbllm

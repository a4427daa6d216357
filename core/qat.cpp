#include "core/qat.h"

#include "core/error.h"
#include "core/evaluation.h"
#include "core/llama.h"
#include "core/quant/settings.h"
#include "core/quantizers.h"
#include "core/saliency.h"

#include <QJsonDocument>
#include <QJsonObject>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

namespace pbllm {

void QatSettings::validate() const
{
    auto fail = [](const std::string& why) { throw Error("QAT setting " + why); };
    if (!(salient_ratio >= 0.0 && salient_ratio < 1.0)) fail("salient ratio must be in [0, 1)");
    if (salient_bits < 2 || salient_bits > 8) fail("salient bits must be 2..8");
    if (binarizer == Binarizer::XnorCode) fail("binarizer xnor-code is for reproducing PTQ numbers; use xnor or sign");
    if (steps < 1) fail("steps must be at least 1");
    if (!(lr > 0.0 && lr < 1.0)) fail("lr must be in (0, 1)");
    if (!(weight_decay >= 0.0)) fail("weight decay must be >= 0");
    if (!(warmup >= 0.0 && warmup < 1.0)) fail("warmup must be a fraction in [0, 1)");
    if (batch < 1 || accum < 1) fail("batch and accum must be at least 1");
    if (seqlen < 0 || seqlen == 1) fail("seqlen must be 0 (the model's context) or at least 2");
    if (!(grad_clip >= 0.0)) fail("gradient clipping must be >= 0");
    if (!(kd >= 0.0 && kd <= 1.0)) fail("kd weight must be in [0, 1]");
    if (checkpoint_every > 0 && checkpoint_path.empty()) fail("checkpoint_every needs a checkpoint path");
}

std::string QatSettings::to_json() const
{
    // Only what determines the trained weights (a resumed run must match on all of these).
    return QJsonDocument(QJsonObject{{"salient_ratio", salient_ratio},
                                     {"salient_bits", salient_bits},
                                     {"binarizer", QString::fromStdString(to_string(binarizer))},
                                     {"per_layer_scale", per_layer_scale},
                                     {"clip_ste", clip_ste},
                                     {"steps", steps},
                                     {"lr", lr},
                                     {"weight_decay", weight_decay},
                                     {"warmup", warmup},
                                     {"batch", batch},
                                     {"accum", accum},
                                     {"seqlen", seqlen},
                                     {"grad_clip", grad_clip},
                                     {"kd", kd},
                                     {"seed", QString::number(seed)}})
        .toJson(QJsonDocument::Compact)
        .toStdString();
}

// ---- the training Linear -----------------------------------------------------------------------

std::pair<at::Tensor, at::Tensor> PbTrainLinear::scale_and_mean(Binarizer binarizer, bool per_layer_scale) const
{
    at::NoGradGuard no_grad;
    const at::Tensor w = latent.detach();
    const at::Tensor keep = (~salient).to(at::kFloat);
    const std::vector<std::int64_t> dims = per_layer_scale ? std::vector<std::int64_t>{0, 1} : std::vector<std::int64_t>{1};
    const at::Tensor count = keep.sum(dims, /*keepdim=*/true).clamp_min(1.0);
    const at::Tensor mu = binarizer == Binarizer::Sign ? at::zeros_like(count) : (w * keep).sum(dims, true) / count;
    const at::Tensor alpha = ((w - mu).abs() * keep).sum(dims, true) / count;
    return {alpha.expand({w.size(0), 1}), mu.expand({w.size(0), 1})};
}

at::Tensor PbTrainLinear::effective(Binarizer binarizer, bool per_layer_scale, bool clip_ste) const
{
    const auto [alpha, mu] = scale_and_mean(binarizer, per_layer_scale);
    const at::Tensor w = latent.detach();
    const at::Tensor value = at::where(w - mu >= 0, mu + alpha, mu - alpha);
    // Straight-through: the forward value is the binarized weight, the gradient passes to the
    // latent weight unchanged (or only where |w| <= 1).
    const at::Tensor pass = clip_ste ? (w.abs() <= 1.0).to(at::kFloat) : at::ones_like(w);
    const at::Tensor ste = value + (latent - w) * pass;
    return at::where(salient, frozen, ste);
}

QuantizedLinear PbTrainLinear::freeze(Binarizer binarizer, bool per_layer_scale) const
{
    at::NoGradGuard no_grad;
    QuantizedLinear q;
    q.name = name;
    q.rows = latent.size(0);
    q.cols = latent.size(1);
    q.settings.method = QuantMethod::Qat;
    q.settings.binarizer = binarizer;
    q.settings.salient_bits = grid.scale.defined() ? grid.bits : 16;
    q.salient = salient;
    q.codes = codes;
    q.grid = grid;
    const at::Tensor w = latent.detach().contiguous();
    if (per_layer_scale) {
        const auto [alpha, mu] = scale_and_mean(binarizer, true);
        q.binary.mu = round_to_fp16(mu.contiguous());
        q.binary.alpha = round_to_fp16(alpha.contiguous());
    } else {
        q.binary = fit_binary_stats(w, salient, binarizer);
    }
    q.signs = w - q.binary.mu >= 0;
    q.dequantized = q.dequantize();
    q.salient_ratio = salient.to(at::kDouble).mean().item<double>();
    q.settings.salient_ratio = q.salient_ratio;
    return q;
}

PbTrainLinear make_train_linear_magnitude(const std::string& name, const at::Tensor& W_in, double ratio, int bits)
{
    const at::Tensor W = W_in.to(at::kCPU, at::kFloat).contiguous();
    PbTrainLinear t;
    t.name = name;
    t.salient = salient_mask(W.abs(), ratio);
    t.grid = fit_row_grid(W, bits);
    const float maxq = static_cast<float>((1 << bits) - 1);
    const at::Tensor codes = (at::round(W / t.grid.scale) + t.grid.zero).clamp(0.0, maxq);
    t.codes = at::where(t.salient, codes, at::zeros_like(codes)).to(at::kShort);
    t.frozen = at::where(t.salient, t.grid.scale * (codes - t.grid.zero), at::zeros_like(W));
    t.latent = W.clone().set_requires_grad(true);
    return t;
}

PbTrainLinear make_train_linear_from(const QuantizedLinear& q)
{
    if (q.settings.method == QuantMethod::Gptq)
        throw Error(q.name + ": a plain GPTQ layer has no binarized part to train");
    if (q.settings.method != QuantMethod::PbGptq && q.settings.method != QuantMethod::Rtn &&
        q.settings.method != QuantMethod::Qat)
        throw Error(q.name + ": QAT trains PB-LLM's layout; a " + to_string(q.settings.method) +
                    " Linear cannot be its starting point");
    // Copies: a PTQ result is made under InferenceMode, and autograd cannot save such tensors.
    PbTrainLinear t;
    t.name = q.name;
    t.salient = q.salient.clone();
    t.codes = q.codes.clone();
    t.grid = q.grid;
    if (q.grid.scale.defined()) {
        t.grid.scale = q.grid.scale.clone();
        t.grid.zero = q.grid.zero.clone();
    }
    const at::Tensor w = q.dequantized.clone();
    t.frozen = at::where(t.salient, w, at::zeros_like(w));
    t.latent = w.clone().set_requires_grad(true);
    return t;
}

// ---- training ----------------------------------------------------------------------------------

namespace {

double learning_rate(const QatSettings& s, int step)
{
    const int warm = static_cast<int>(std::round(s.warmup * s.steps));
    if (step < warm)
        return s.lr * (step + 1) / warm;
    const double progress = static_cast<double>(step - warm) / std::max(1, s.steps - warm);
    return s.lr * 0.5 * (1.0 + std::cos(M_PI * progress));
}

/// The windows of micro-batch `micro` of step `step`: a pure function of (seed, step, micro), so
/// a resumed run sees exactly the data an uninterrupted one would.
at::Tensor batch_of(const std::vector<int>& tokens, const QatSettings& s, int seqlen, int step, int micro)
{
    std::mt19937_64 rng(s.seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(step) * 1000003ull +
                        static_cast<std::uint64_t>(micro));
    const std::uint64_t offsets = tokens.size() - static_cast<std::size_t>(seqlen) + 1;
    at::Tensor ids = at::empty({s.batch, seqlen}, at::kLong);
    for (int b = 0; b < s.batch; ++b) {
        const std::size_t start = static_cast<std::size_t>(rng() % offsets);
        for (int t = 0; t < seqlen; ++t)
            ids[b][t] = tokens[start + static_cast<std::size_t>(t)];
    }
    return ids;
}

Model with_weights(const Model& base, const std::vector<at::Tensor>& linears)
{
    Model m = base;
    for (int l = 0; l < base.config.n_layers; ++l)
        for (int k = 0; k < kLinearKindCount; ++k)
            m.layers[l].linear[k] = linears[static_cast<std::size_t>(l * kLinearKindCount + k)];
    return m;
}

at::Tensor logits_of(const Model& m, const at::Tensor& ids, const RopeTables& rope)
{
    at::Tensor x = embed_tokens(m, ids);
    for (const DecoderLayer& layer : m.layers)
        x = decoder_layer_forward(m.config, layer, x, rope);
    return output_logits(m, x);
}

void save_checkpoint(const std::string& path, int step, const std::vector<PbTrainLinear>& linears,
                     torch::optim::AdamW& optimizer, const std::string& settings_json)
{
    torch::serialize::OutputArchive archive;
    archive.write("format", c10::IValue(std::string("pbllm-qat-checkpoint-1")));
    archive.write("settings", c10::IValue(settings_json));
    archive.write("step", c10::IValue(static_cast<std::int64_t>(step)));
    for (std::size_t i = 0; i < linears.size(); ++i) {
        const std::string n = std::to_string(i);
        archive.write("latent." + n, linears[i].latent.detach());
        archive.write("salient." + n, linears[i].salient);
        archive.write("codes." + n, linears[i].codes);
        archive.write("frozen." + n, linears[i].frozen);
        if (linears[i].grid.scale.defined()) {
            archive.write("grid_scale." + n, linears[i].grid.scale);
            archive.write("grid_zero." + n, linears[i].grid.zero);
        }
    }
    torch::serialize::OutputArchive opt;
    optimizer.save(opt);
    archive.write("optimizer", opt);
    const std::string tmp = path + ".partial";
    try {
        archive.save_to(tmp);
    } catch (const std::exception& e) {
        std::remove(tmp.c_str());
        throw Error(path + ": cannot write the QAT checkpoint: " + e.what());
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw Error(path + ": cannot move the QAT checkpoint into place");
    }
}

} // namespace

QatResult train_qat(const Model& model_in, const std::vector<int>& train_tokens, const QatSettings& s,
                    const std::optional<QuantizedModel>& init, const std::vector<int>& eval_tokens,
                    const std::string& resume_path, const QatProgressFn& progress)
{
    s.validate();
    const auto start_time = std::chrono::steady_clock::now();
    const Model teacher = model_in.to(at::kCPU, at::kFloat);
    const ModelConfig& c = teacher.config;
    const int seqlen = s.seqlen > 0 ? s.seqlen : c.usable_context();
    if (seqlen > c.max_seq_len)
        throw Error("QAT seqlen " + std::to_string(seqlen) + " exceeds the model's context of " + std::to_string(c.max_seq_len));
    if (static_cast<int>(train_tokens.size()) < seqlen)
        throw Error("the training text has " + std::to_string(train_tokens.size()) + " tokens, fewer than one window of " +
                    std::to_string(seqlen));

    // The student: FP16 non-Linear tensors (as the packed file stores them), PB Linears.
    Model student = with_fp16_full_precision(teacher, /*head_quantized=*/false);
    std::vector<PbTrainLinear> linears;
    for (int l = 0; l < c.n_layers; ++l) {
        for (LinearKind k : kAllLinearKinds) {
            const std::string name = linear_name(l, k);
            if (init) {
                const auto it = std::find_if(init->linears.begin(), init->linears.end(),
                                             [&](const QuantizedLinear& q) { return q.name == name; });
                if (it == init->linears.end())
                    throw Error("the initial quantized model has no quantized Linear '" + name + "'");
                linears.push_back(make_train_linear_from(*it));
            } else {
                linears.push_back(make_train_linear_magnitude(name, teacher.layers[l].weight(k), s.salient_ratio,
                                                              s.salient_bits));
            }
        }
    }
    std::vector<at::Tensor> params;
    for (PbTrainLinear& t : linears)
        params.push_back(t.latent);
    torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(s.lr).weight_decay(s.weight_decay));

    int first_step = 0;
    const std::string settings_json = s.to_json();
    if (!resume_path.empty()) {
        torch::serialize::InputArchive archive;
        try {
            archive.load_from(resume_path);
        } catch (const std::exception& e) {
            throw Error(resume_path + ": not a readable QAT checkpoint (" + std::string(e.what()).substr(0, 200) + ")");
        }
        c10::IValue v;
        if (!archive.try_read("format", v) || !v.isString() || v.toStringRef() != "pbllm-qat-checkpoint-1")
            throw Error(resume_path + ": not a PB-LLM QAT checkpoint");
        archive.read("settings", v);
        if (v.toStringRef() != settings_json)
            throw Error(resume_path + ": was written with other training settings (" + v.toStringRef() +
                        "); resume with the same settings");
        archive.read("step", v);
        first_step = static_cast<int>(v.toInt());
        at::NoGradGuard no_grad;
        for (std::size_t i = 0; i < linears.size(); ++i) {
            const std::string n = std::to_string(i);
            at::Tensor t;
            archive.read("latent." + n, t);
            if (t.sizes() != linears[i].latent.sizes())
                throw Error(resume_path + ": latent weight " + n + " does not match this model");
            linears[i].latent.copy_(t);
            archive.read("salient." + n, linears[i].salient);
            archive.read("codes." + n, linears[i].codes);
            archive.read("frozen." + n, linears[i].frozen);
            if (linears[i].grid.scale.defined()) {
                archive.read("grid_scale." + n, linears[i].grid.scale);
                archive.read("grid_zero." + n, linears[i].grid.zero);
            }
        }
        torch::serialize::InputArchive opt;
        archive.read("optimizer", opt);
        optimizer.load(opt);
    }

    const RopeTables rope = make_rope_tables(c, seqlen);
    QatResult result;
    result.steps_done = first_step;
    for (int step = first_step; step < s.steps; ++step) {
        const auto t0 = std::chrono::steady_clock::now();
        const double lr = learning_rate(s, step);
        for (auto& group : optimizer.param_groups())
            static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
        optimizer.zero_grad();
        double step_loss = 0.0;
        for (int micro = 0; micro < s.accum; ++micro) {
            const at::Tensor ids = batch_of(train_tokens, s, seqlen, step, micro);
            std::vector<at::Tensor> weights;
            for (const PbTrainLinear& t : linears)
                weights.push_back(t.effective(s.binarizer, s.per_layer_scale, s.clip_ste));
            const at::Tensor logits = logits_of(with_weights(student, weights), ids, rope).narrow(1, 0, seqlen - 1);
            const at::Tensor targets = ids.narrow(1, 1, seqlen - 1);
            const at::Tensor logp = at::log_softmax(logits, -1);
            at::Tensor loss = at::nll_loss(logp.reshape({-1, c.vocab_size}), targets.reshape({-1}));
            if (s.kd > 0.0) {
                at::Tensor teacher_logp;
                {
                    at::NoGradGuard no_grad;
                    teacher_logp = at::log_softmax(logits_of(teacher, ids, rope).narrow(1, 0, seqlen - 1), -1);
                }
                const at::Tensor kl = (teacher_logp.exp() * (teacher_logp - logp)).sum(-1).mean();
                loss = (1.0 - s.kd) * loss + s.kd * kl;
            }
            (loss / s.accum).backward();
            step_loss += loss.item<double>() / s.accum;
        }
        if (s.grad_clip > 0.0)
            torch::nn::utils::clip_grad_norm_(params, s.grad_clip);
        optimizer.step();

        QatProgress p;
        p.step = step + 1;
        p.steps = s.steps;
        p.loss = step_loss;
        p.lr = lr;
        p.tokens_per_second = static_cast<double>(s.batch) * s.accum * seqlen /
                              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (s.eval_every > 0 && !eval_tokens.empty() && (p.step % s.eval_every == 0 || p.step == s.steps)) {
            at::NoGradGuard no_grad;
            std::vector<at::Tensor> frozen;
            for (const PbTrainLinear& t : linears)
                frozen.push_back(t.freeze(s.binarizer, s.per_layer_scale).dequantized);
            PerplexitySettings ps;
            ps.max_windows = s.eval_windows;
            p.eval_ppl = evaluate_perplexity(with_weights(student, frozen), eval_tokens, ps).ppl;
        }
        result.history.push_back(p);
        result.steps_done = p.step;
        const bool keep_going = !progress || progress(p);
        if (!s.checkpoint_path.empty() &&
            ((s.checkpoint_every > 0 && p.step % s.checkpoint_every == 0) || !keep_going))
            save_checkpoint(s.checkpoint_path, p.step, linears, optimizer, settings_json);
        if (!keep_going) {
            result.stopped_early = true;
            break;
        }
    }

    QuantizedModel& q = result.quantized;
    std::vector<at::Tensor> final_weights;
    for (const PbTrainLinear& t : linears) {
        q.linears.push_back(t.freeze(s.binarizer, s.per_layer_scale));
        final_weights.push_back(q.linears.back().dequantized);
    }
    q.model = with_weights(student, final_weights);
    set_default_method(q.plan, QuantMethod::Qat);
    q.plan.config.layer.salient_ratio = init ? init->salient_ratio() : s.salient_ratio;
    q.plan.config.layer.salient_bits = s.salient_bits;
    q.plan.config.layer.binarizer = s.binarizer;
    q.plan.config.layer.metric = SaliencyMetric::Magnitude;
    q.plan.config.seed = s.seed;
    if (init) {
        q.plan = init->plan;
        set_default_method(q.plan, QuantMethod::Qat);
        q.calibration_sha256 = init->calibration_sha256;
        q.source_sha256 = init->source_sha256;
    }
    QJsonObject training = QJsonDocument::fromJson(QByteArray::fromStdString(settings_json)).object();
    training.insert("init", init ? "pb-gptq" : "magnitude");
    training.insert("steps_done", result.steps_done);
    if (!result.history.empty())
        training.insert("final_loss", result.history.back().loss);
    q.training_json = QJsonDocument(training).toJson(QJsonDocument::Compact).toStdString();
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
    q.seconds = result.seconds;
    return result;
}

} // namespace pbllm

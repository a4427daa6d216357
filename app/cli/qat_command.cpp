// pbllm qat: quantization-aware training into a packed checkpoint.
#include "app/cli/cli_common.h"

#include "core/error.h"
#include "core/evaluation.h"
#include "core/packed_checkpoint.h"
#include "core/qat.h"
#include "core/system.h"
#include "core/tokenizer.h"

#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>

#include <algorithm>
#include <cstdio>

namespace pbllm::cli {

int run_qat(const QStringList& args)
{
    CommandLine cl("qat", "Quantization-aware training of a partially binarized model (PB-LLM QAT).", "[MODEL]");
    cl.parser().addOption({"train", "Training text (UTF-8).", "FILE"});
    cl.parser().addOption({{"o", "output"}, "Output packed checkpoint.", "OUT.pbllm.h5"});
    cl.parser().addOption({"tokenizer", "Tokenizer: tokenizer.model or tokenizer.json (default: found beside the model).", "TOK"});
    cl.parser().addOption({"init", "Start from this PB-GPTQ result (mask, salient codes, signs) instead of magnitude.", "PTQ.pbllm.h5"});
    cl.parser().addOption({"salient", "Salient ratio for magnitude initialisation.", "R", "0.1"});
    cl.parser().addOption({"salient-bits", "Bits of the frozen salient weights (2..8).", "B", "8"});
    cl.parser().addOption({"binarizer", "xnor (mean shift, default) or sign.", "B", "xnor"});
    cl.parser().addOption({"per-layer-scale", "One alpha per Linear (the authors' code) instead of per row."});
    cl.parser().addOption({"clip-ste", "Straight-through gradient only where |w| <= 1."});
    cl.parser().addOption({"steps", "Optimizer steps.", "N", "200"});
    cl.parser().addOption({"lr", "Peak learning rate (AdamW).", "LR", "1e-4"});
    cl.parser().addOption({"weight-decay", "AdamW weight decay.", "WD", "0"});
    cl.parser().addOption({"batch", "Windows per micro-batch.", "B", "2"});
    cl.parser().addOption({"accum", "Micro-batches per step (gradient accumulation).", "A", "4"});
    cl.parser().addOption({"seqlen", "Window length (default: the model's context).", "N", "0"});
    cl.parser().addOption({"warmup", "Warm-up fraction of the steps (then cosine decay).", "F", "0.05"});
    cl.parser().addOption({"grad-clip", "Max gradient norm (0 = off).", "G", "1"});
    cl.parser().addOption({"kd", "Weight of KL distillation from the full-precision model (0 = CE only).", "W", "0"});
    cl.parser().addOption({"eval", "Held-out text for perplexity.", "TEXT"});
    cl.parser().addOption({"eval-every", "Steps between evaluations (0 = only at the end).", "N", "0"});
    cl.parser().addOption({"eval-windows", "Windows per periodic evaluation.", "N", "20"});
    cl.parser().addOption({"checkpoint", "Resumable checkpoint file.", "CKPT"});
    cl.parser().addOption({"checkpoint-every", "Steps between checkpoints.", "N", "0"});
    cl.parser().addOption({"resume", "Continue the run saved in this checkpoint.", "CKPT"});
    cl.parser().addOption({"seed", "Data sampling seed.", "S", "0"});
    cl.parser().addOption({"force", "Overwrite an existing output file."});
    cl.parse(args);
    if (!cl.is_set("train") || !cl.is_set("o"))
        throw UsageError{"--train FILE and -o OUT.pbllm.h5 are required"};
    const std::string out = cl.value("o").toStdString();
    if (QFileInfo::exists(QString::fromStdString(out)) && !cl.is_set("force"))
        throw Error(out + ": exists; refusing to overwrite (use --force)");

    QatSettings s;
    s.salient_ratio = cl.double_value("salient", 0.0, 0.999);
    s.salient_bits = cl.int_value("salient-bits", 2, 8);
    try {
        s.binarizer = parse_binarizer(cl.value("binarizer").toStdString());
    } catch (const Error& e) {
        throw UsageError{std::string("--binarizer: ") + e.what()};
    }
    s.per_layer_scale = cl.is_set("per-layer-scale");
    s.clip_ste = cl.is_set("clip-ste");
    s.steps = cl.int_value("steps", 1, 1 << 24);
    s.lr = cl.double_value("lr", 1e-12, 0.999);
    s.weight_decay = cl.double_value("weight-decay", 0.0, 10.0);
    s.batch = cl.int_value("batch", 1, 4096);
    s.accum = cl.int_value("accum", 1, 4096);
    s.seqlen = cl.int_value("seqlen", 0, 1 << 20);
    s.warmup = cl.double_value("warmup", 0.0, 0.999);
    s.grad_clip = cl.double_value("grad-clip", 0.0, 1e9);
    s.kd = cl.double_value("kd", 0.0, 1.0);
    s.eval_every = cl.int_value("eval-every", 0, 1 << 24);
    s.eval_windows = cl.int_value("eval-windows", 1, 1 << 20);
    s.checkpoint_every = cl.int_value("checkpoint-every", 0, 1 << 24);
    bool seed_ok = false;
    s.seed = cl.value("seed").toULongLong(&seed_ok);
    if (!seed_ok)
        throw UsageError{"--seed must be a non-negative integer"};
    s.checkpoint_path = cl.is_set("checkpoint") ? cl.value("checkpoint").toStdString()
                                                : cl.is_set("resume") ? cl.value("resume").toStdString() : std::string();
    try {
        s.validate();
    } catch (const Error& e) {
        throw UsageError{e.what()};
    }

    const Model m = cl.load_model();
    const Tokenizer tok = cl.load_tokenizer(m);
    const std::vector<int> train = tok.encode(read_text_file(cl.value("train").toStdString()));
    std::vector<int> eval;
    if (cl.is_set("eval"))
        eval = tok.encode(read_text_file(cl.value("eval").toStdString()));
    std::optional<QuantizedModel> init;
    if (cl.is_set("init")) {
        PackedCheckpoint ck = read_packed_checkpoint(cl.value("init").toStdString());
        if (ck.quantized.model.config.dim != m.config.dim || ck.quantized.model.config.n_layers != m.config.n_layers)
            throw Error(cl.value("init").toStdString() + ": was quantized from a different model");
        init = std::move(ck.quantized);
    }
    if (s.eval_every == 0 && !eval.empty())
        s.eval_every = s.steps; // one evaluation at the end
    const bool json = cl.json();
    QatResult r = train_qat(m, train, s, init, eval, cl.is_set("resume") ? cl.value("resume").toStdString() : "",
                            [&](const QatProgress& p) {
                                if (!json && (p.step == 1 || p.step % 10 == 0 || p.eval_ppl || p.step == p.steps)) {
                                    std::fprintf(stderr, "step %d/%d  loss %.4f  lr %.2e  %.0f tok/s", p.step, p.steps,
                                                 p.loss, p.lr, p.tokens_per_second);
                                    if (p.eval_ppl)
                                        std::fprintf(stderr, "  held-out ppl %.4f", *p.eval_ppl);
                                    std::fputc('\n', stderr);
                                }
                                return true;
                            });
    r.quantized.tokenizer_bytes = tok.model_bytes();
    if (!init)
        r.quantized.source_sha256 = QFileInfo(QString::fromStdString(m.source_path)).isFile() ? sha256_of_file(m.source_path) : "";
    write_packed_checkpoint(r.quantized, out);
    const PackedCheckpoint written = read_packed_checkpoint(out);
    const BitsPerWeight bits = bits_per_weight(written.packed);

    QJsonObject report{{"output", QString::fromStdString(out)},
                       {"steps", r.steps_done},
                       {"seconds", r.seconds},
                       {"salient_ratio", written.quantized.salient_ratio()},
                       {"bits_per_weight", bits_json(bits)},
                       {"training", QJsonDocument::fromJson(QByteArray::fromStdString(r.quantized.training_json)).object()}};
    std::vector<double> rates;
    QJsonArray history;
    for (const QatProgress& p : r.history) {
        rates.push_back(p.tokens_per_second);
        QJsonObject o{{"step", p.step}, {"loss", p.loss}, {"lr", p.lr}, {"tokens_per_second", p.tokens_per_second}};
        if (p.eval_ppl)
            o.insert("eval_ppl", *p.eval_ppl);
        history.append(o);
    }
    std::sort(rates.begin(), rates.end());
    if (!rates.empty())
        report.insert("tokens_per_second", rates[rates.size() / 2]);
    if (!r.history.empty())
        report.insert("final_loss", r.history.back().loss);
    if (!eval.empty()) {
        const EvalResult after = evaluate_perplexity(written.quantized.model, eval, {});
        report.insert("ppl_after", after.ppl);
        report.insert("eval_windows", static_cast<double>(after.windows));
    }
    report.insert("history", history);
    if (json) {
        print_json(report);
    } else {
        std::printf("wrote %s after %d steps in %.1f s (median %.0f training tokens/s)\n", out.c_str(), r.steps_done,
                    r.seconds, report["tokens_per_second"].toDouble());
        std::printf("bits per weight: headline %.3f, measured %.3f\n", bits.headline, bits.measured);
        if (report.contains("ppl_after"))
            std::printf("perplexity on the held-out text: %.4f (%lld windows)\n", report["ppl_after"].toDouble(),
                        static_cast<long long>(report["eval_windows"].toDouble()));
    }
    return 0;
}

} // namespace pbllm::cli

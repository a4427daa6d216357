// pbllm calibrate / saliency / quantize: the PB-LLM engine from the command line.
#include "app/cli/cli_common.h"

#include "core/calibration.h"
#include "core/calibration_file.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/model.h"
#include "core/packed_checkpoint.h"
#include "core/ptq.h"
#include "core/quant/registry.h"
#include "core/quant/settings.h"
#include "core/saliency.h"
#include "core/streamed_ptq.h"
#include "core/system.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>
#include <QDir>
#include <QFile>
#include <QFileInfo>
#include <QTemporaryDir>
#include <QJsonArray>
#include <QJsonDocument>

#include <algorithm>
#include <csignal>
#include <cstdio>

namespace pbllm::cli {

QJsonObject bits_json(const BitsPerWeight& b)
{
    return QJsonObject{{"headline", b.headline},
                       {"with_bitmap", b.with_bitmap},
                       {"with_index", b.with_index},
                       {"measured", b.measured}};
}

namespace {

/// " (read by billm, arb, ...)" for a setting that not every method reads.
std::string readers(const SettingInfo& s)
{
    std::string names;
    bool all = true;
    for (const MethodInfo& m : methods()) {
        if (m.reads(s.key))
            names += (names.empty() ? "" : ", ") + std::string(m.name);
        else
            all = false;
    }
    return all ? std::string() : "; read by " + names;
}

/// Windows from a calibration text or a calibration file, with the text's SHA-256.
struct Calibration {
    std::vector<std::vector<int>> windows;
    std::string text_sha256;
    CalibrationData data; ///< only when read from a calibration file
    bool from_file = false;
};

/// The windows only: what every caller replays (saliency reads the Hessians itself).
Calibration calibration_input(const CommandLine& cl, const Model& model, const Tokenizer& tok, int nsamples, int seqlen,
                              std::uint64_t seed)
{
    const std::string path = cl.value("calib").toStdString();
    Calibration c;
    if (has_hdf5_signature(path)) {
        c.data = read_calibration_file(path, model.config, HessianLoading::None);
        c.windows = c.data.windows;
        c.text_sha256 = c.data.text_sha256;
        c.from_file = true;
        return c;
    }
    const std::string text = read_text_file(path);
    c.text_sha256 = sha256_of_bytes(text);
    c.windows = sample_calibration_windows(tok.encode(text), nsamples, seqlen > 0 ? seqlen : model.config.usable_context(), seed);
    return c;
}

std::uint64_t seed_value(const CommandLine& cl)
{
    bool ok = false;
    const std::uint64_t seed = cl.value("seed").toULongLong(&ok);
    if (!ok)
        throw UsageError{"--seed must be a non-negative integer"};
    return seed;
}

std::string model_sha256(const Model& m)
{
    return QFileInfo(QString::fromStdString(m.source_path)).isFile() ? sha256_of_file(m.source_path) : std::string();
}

QJsonObject histogram_json(const Histogram& h)
{
    QJsonArray counts;
    for (std::int64_t c : h.counts)
        counts.append(static_cast<double>(c));
    return QJsonObject{{"lo", h.lo}, {"hi", h.hi}, {"counts", counts}};
}

} // namespace

int run_calibrate(const QStringList& args)
{
    CommandLine cl("calibrate", "Collect calibration windows and full-precision Hessians into an HDF5 file.", "[MODEL]");
    cl.parser().addOption({"calib", "Calibration text (UTF-8).", "FILE"});
    cl.parser().addOption({{"o", "output"}, "Output calibration file (.h5).", "CALIB.h5"});
    cl.parser().addOption({"tokenizer", "Tokenizer: tokenizer.model or tokenizer.json (default: found beside the model).", "TOK"});
    cl.parser().addOption({"nsamples", "Calibration windows.", "N", "128"});
    cl.parser().addOption({"seqlen", "Window length (default: the model's context).", "N", "0"});
    cl.parser().addOption({"seed", "Sampling seed.", "S", "0"});
    cl.parse(args);
    if (!cl.is_set("calib") || !cl.is_set("o"))
        throw UsageError{"--calib FILE and -o CALIB.h5 are required"};
    const int nsamples = cl.int_value("nsamples", 1, 1 << 20);
    const int seqlen = cl.int_value("seqlen", 0, 1 << 20);
    const std::uint64_t seed = seed_value(cl);
    const Model m = cl.load_model(/*mapped=*/true); // one layer in float32 at a time
    const Tokenizer tok = cl.load_tokenizer(m);
    Calibration input = calibration_input(cl, m, tok, nsamples, seqlen, seed);
    CalibrationData data;
    data.windows = std::move(input.windows);
    data.seqlen = static_cast<int>(data.windows.front().size());
    data.seed = seed;
    data.text_sha256 = input.text_sha256;
    data.model_sha256 = model_sha256(m);
    const std::string out = cl.value("o").toStdString();
    calibrate_to_file(m, data, out, print_progress); // one layer's Hessians in memory at a time
    if (cl.json())
        print_json(QJsonObject{{"output", QString::fromStdString(out)},
                               {"windows", static_cast<double>(data.windows.size())},
                               {"seqlen", data.seqlen},
                               {"tokens", static_cast<double>(data.tokens())},
                               {"text_sha256", QString::fromStdString(data.text_sha256)}});
    else
        std::printf("wrote %s: %zu windows of %d tokens, Hessians of %d layers\n", out.c_str(), data.windows.size(),
                    data.seqlen, m.config.n_layers);
    return 0;
}

int run_saliency(const QStringList& args)
{
    CommandLine cl("saliency", "Saliency statistics of every Linear (or one) from a calibration file.", "[MODEL]");
    cl.parser().addOption({"calib", "Calibration file from 'pbllm calibrate' (needed for Hessian metrics).", "CALIB.h5"});
    cl.parser().addOption({"layer", "Only this Linear (e.g. model.layers.0.mlp.down_proj).", "NAME"});
    cl.parser().addOption({"salient", "Salient ratio for the threshold.", "R", "0.1"});
    cl.parser().addOption({"metric", "hessian, hessian-inv-diag or magnitude.", "M", "hessian"});
    cl.parser().addOption({"percdamp", "Damping of the Hessian.", "P", "0.01"});
    cl.parser().addOption({"bins", "Histogram bins (JSON).", "N", "64"});
    cl.parse(args);
    const double ratio = cl.double_value("salient", 0.0, 1.0);
    const double percdamp = cl.double_value("percdamp", 1e-9, 10.0);
    const int bins = cl.int_value("bins", 1, 100000);
    SaliencyMetric metric;
    try {
        metric = parse_metric(cl.value("metric").toStdString());
    } catch (const Error& e) {
        throw UsageError{std::string("--metric: ") + e.what()};
    }
    const Model m = cl.load_model(/*mapped=*/true); // each Linear converted when its statistics are made
    CalibrationData calib;
    const bool have_calib = cl.is_set("calib");
    if (have_calib)
        calib = read_calibration_file(cl.value("calib").toStdString(), m.config, HessianLoading::OnDemand);
    else if (metric != SaliencyMetric::Magnitude)
        throw UsageError{"--calib CALIB.h5 is required for the " + to_string(metric) + " metric"};
    const std::string only = cl.value("layer").toStdString();
    QJsonArray layers;
    if (!cl.json())
        std::printf("%-34s %-11s %8s %11s %8s %8s %6s %8s %8s\n", "linear", "shape", "salient", "threshold", "kurtosis",
                    "outliers", "dead", "max row", "max col");
    bool found = false;
    at::Tensor H; // read from the calibration file one at a time
    int held_layer = -1;
    LinearInput held_input = LinearInput::Attention;
    for (int l = 0; l < m.config.n_layers; ++l) {
        for (LinearKind k : kAllLinearKinds) {
            const std::string name = linear_name(l, k);
            if (!only.empty() && name != only)
                continue;
            found = true;
            if (have_calib && (held_layer != l || held_input != input_of(k))) { // Q/K/V share one, gate/up too
                H = calibration_hessian(calib, l, input_of(k));
                held_layer = l;
                held_input = input_of(k);
            }
            const SaliencyStats s =
                saliency_stats(name, m.layers[l].weight(k), have_calib ? &H : nullptr, metric, ratio, percdamp, bins);
            if (cl.json()) {
                layers.append(QJsonObject{{"name", QString::fromStdString(name)},
                                          {"rows", static_cast<double>(s.rows)},
                                          {"cols", static_cast<double>(s.cols)},
                                          {"salient_ratio", s.achieved_ratio},
                                          {"threshold", s.threshold},
                                          {"kurtosis", s.kurtosis},
                                          {"outliers", static_cast<double>(s.outliers)},
                                          {"dead_columns", static_cast<double>(s.dead_columns)},
                                          {"max_row_share", s.max_row_share},
                                          {"max_column_share", s.max_column_share},
                                          {"hessian_trace", s.hessian_trace},
                                          {"weights_histogram", histogram_json(s.weights)},
                                          {"log10_saliency_histogram", histogram_json(s.log10_scores)}});
            } else {
                std::printf("%-34s %4lld x %-4lld %7.3f%% %11.4g %8.2f %8lld %6lld %7.1f%% %7.1f%%\n",
                            name.substr(6).c_str(), static_cast<long long>(s.rows), static_cast<long long>(s.cols),
                            100.0 * s.achieved_ratio, s.threshold, s.kurtosis, static_cast<long long>(s.outliers),
                            static_cast<long long>(s.dead_columns), 100.0 * s.max_row_share, 100.0 * s.max_column_share);
            }
        }
    }
    if (!found)
        throw Error("no Linear named '" + only + "' (names look like model.layers.0.mlp.down_proj)");
    if (cl.json())
        print_json(QJsonObject{{"metric", QString::fromStdString(to_string(metric))},
                               {"requested_ratio", ratio},
                               {"layers", layers}});
    return 0;
}

int run_methods(const QStringList& args)
{
    CommandLine cl("methods", "The quantization methods (the registry): name, summary, settings, bit convention.", "");
    cl.parse(args);
    QJsonArray rows;
    for (const MethodInfo& m : methods()) {
        QJsonArray settings;
        for (const char* key : m.settings)
            settings.append(key);
        rows.append(QJsonObject{{"name", m.name},
                                {"summary", m.summary},
                                {"settings", settings},
                                {"needs_calibration", m.needs_hessian},
                                {"post_training", m.quantize != nullptr},
                                {"headline_bits", m.headline_convention}});
        if (!cl.json()) {
            std::string keys;
            for (const char* key : m.settings)
                keys += (keys.empty() ? "" : ", ") + std::string(key);
            std::printf("%-8s %s\n         settings: %s; %s%s\n         headline bits: %s\n", m.name, m.summary,
                        keys.c_str(), m.needs_hessian ? "needs calibration" : "calibration only for Hessian saliency",
                        m.quantize ? "" : "; a training method (pbllm qat)", m.headline_convention);
        }
    }
    QJsonArray settings;
    if (!cl.json())
        std::printf("\nsettings (plan key, --flag; rules may set any of them per Linear):\n");
    for (const SettingInfo& s : layer_settings()) {
        settings.append(QJsonObject{{"key", s.key},
                                    {"flag", s.on_command_line ? QString("--") + s.flag : QString()},
                                    {"accepts", QString::fromStdString(s.accepts())},
                                    {"default", QString::fromStdString(s.format(s.default_value()))},
                                    {"help", s.help}});
        if (!cl.json())
            std::printf("  %-19s %-21s %s%s\n", s.key, s.on_command_line ? (std::string("--") + s.flag).c_str() : "",
                        s.describe().c_str(), readers(s).c_str());
    }
    if (cl.json())
        print_json(QJsonObject{{"methods", rows}, {"settings", settings}});
    return 0;
}

int run_quantize(const QStringList& args)
{
    CommandLine cl("quantize", "PB-LLM post-training quantization into a packed .pbllm.h5 checkpoint.", "[MODEL]");
    cl.parser().addOption({"calib", "Calibration text, or a calibration file from 'pbllm calibrate'.", "FILE|CALIB.h5"});
    cl.parser().addOption({{"o", "output"}, "Output packed checkpoint.", "OUT.pbllm.h5"});
    cl.parser().addOption({"tokenizer", "Tokenizer: tokenizer.model or tokenizer.json (default: found beside the model).", "TOK"});
    for (const SettingInfo& s : layer_settings()) // the per-Linear settings, from their table
        if (s.on_command_line)
            cl.parser().addOption({s.flag, QString::fromStdString(s.describe() + readers(s) + "."), "X"});
    cl.parser().addOption({"nsamples", "Calibration windows (default 128).", "N"});
    cl.parser().addOption({"seqlen", "Calibration window length (default: the model's context).", "N"});
    cl.parser().addOption({"blocksize", "GPTQ block size (default 128).", "N"});
    cl.parser().addOption({"groupsize", "Columns per threshold/statistics group (default 0 = row).", "N"});
    cl.parser().addOption({"percdamp", "Hessian damping (default 0.01).", "P"});
    cl.parser().addOption({"act-order", "GPTQ columns by decreasing Hessian diagonal."});
    cl.parser().addOption({"quantize-head", "Also quantize the (untied) output head."});
    cl.parser().addOption({"seed", "Calibration sampling seed (default 0).", "S"});
    cl.parser().addOption({"plan", "QuantPlan JSON (defaults and per-layer rules); flags override its defaults.", "PLAN.json"});
    cl.parser().addOption({"eval", "Text for perplexity before and after.", "TEXT"});
    cl.parser().addOption({"eval-windows", "Evaluate only the first N windows (0 = all).", "N", "0"});
    cl.parser().addOption({"force", "Overwrite an existing output file (and discard an interrupted run of it)."});
    cl.parser().addOption({"resume", "Continue an interrupted run of the same output (OUT.pbllm.h5.partial): same "
                                     "model, plan and calibration, or it is refused."});
    cl.parse(args);
    if (!cl.is_set("calib") || !cl.is_set("o"))
        throw UsageError{"--calib FILE and -o OUT.pbllm.h5 are required"};
    if (cl.is_set("resume") && cl.is_set("force"))
        throw UsageError{"--resume continues an interrupted run and --force discards it: choose one"};
    const std::string out = cl.value("o").toStdString();
    if (QFileInfo::exists(QString::fromStdString(out)) && !cl.is_set("force"))
        throw Error(out + ": exists; refusing to overwrite (use --force)");

    QuantPlan plan = cl.is_set("plan") ? QuantPlan::from_file(cl.value("plan").toStdString()) : QuantPlan{};
    QuantConfig& c = plan.config;
    auto parse = [&](const char* name, auto parser) {
        try {
            return parser(cl.value(name).toStdString());
        } catch (const Error& e) {
            throw UsageError{std::string("--") + name + ": " + e.what()};
        }
    };
    // The method first: it drops the plan's options none of its methods reads now, and the
    // options given here then apply over it.
    if (cl.is_set("method"))
        set_default_method(plan, parse("method", parse_method));
    for (const SettingInfo& s : layer_settings())
        if (s.on_command_line && std::string(s.key) != "method" && cl.is_set(s.flag))
            s.set(c.layer, parse(s.flag, [&](const std::string& text) { return s.parse(text); }));
    try { // an option asked for on the command line must mean something
        check_strict_settings_are_read(c.layer, plan_methods(plan));
    } catch (const Error& e) {
        throw UsageError{e.what()};
    }
    if (cl.is_set("nsamples")) c.nsamples = cl.int_value("nsamples", 1, 1 << 20);
    if (cl.is_set("seqlen")) c.seqlen = cl.int_value("seqlen", 2, 1 << 20);
    if (cl.is_set("blocksize")) c.blocksize = cl.int_value("blocksize", 1, 4096);
    if (cl.is_set("groupsize")) c.groupsize = cl.int_value("groupsize", 0, 1 << 20);
    if (cl.is_set("percdamp")) c.percdamp = cl.double_value("percdamp", 1e-9, 10.0);
    if (cl.is_set("act-order")) c.act_order = true;
    if (cl.is_set("quantize-head")) c.quantize_head = true;
    if (cl.is_set("seed")) c.seed = seed_value(cl);
    try {
        plan.validate();
    } catch (const Error& e) {
        throw UsageError{e.what()};
    }

    // F16/BF16 weights stay mapped: the quantizer converts one decoder layer at a time.
    const Model m = cl.load_model(/*mapped=*/true);
    const Tokenizer tok = cl.load_tokenizer(m);
    // Only the windows of a calibration file: the quantizer recomputes each layer's Hessians from
    // the quantized layers before it.
    const Calibration calib = calibration_input(cl, m, tok, c.nsamples, c.seqlen, c.seed);
    if (calib.from_file) {
        c.seed = calib.data.seed;
        c.nsamples = static_cast<int>(calib.windows.size());
        c.seqlen = calib.data.seqlen;
    }
    QuantizeToFileOptions options;
    options.output = out;
    options.resume = cl.is_set("resume");
    options.overwrite = cl.is_set("force");
    options.model_fingerprint = model_fingerprint(m);
    options.header.source_sha256 = model_sha256(m);
    options.header.calibration_sha256 = calib.text_sha256;
    options.header.tokenizer_bytes = tok.model_bytes();
    options.layer_done = [&](const LayerReport& r) {
        // One line per layer whether or not stderr is a terminal: long runs are watched in logs.
        const std::string what = r.layer < m.config.n_layers
                                     ? "layer " + std::to_string(r.layer + 1) + "/" + std::to_string(m.config.n_layers)
                                     : std::string("lm_head");
        if (r.resumed)
            std::fprintf(stderr, "%s: done by the interrupted run\n", what.c_str());
        else if (r.gflop > 0)
            std::fprintf(stderr,
                         "%s: %.1f s (%.0f GFLOP, %.1f GFLOP/s; forward + Hessians %.1f s, quantizers %.1f s, "
                         "quantized forward %.1f s), peak memory %s\n",
                         what.c_str(), r.seconds, r.gflop, r.gflop / std::max(r.seconds, 1e-9), r.hessian_seconds,
                         r.quantize_seconds, r.output_seconds, human_bytes(r.peak_anonymous_bytes).c_str());
        else
            std::fprintf(stderr, "%s: %.1f s, peak memory %s\n", what.c_str(), r.seconds,
                         human_bytes(r.peak_anonymous_bytes).c_str());
        std::fflush(stderr);
        // Fault injection for the tests: die as a crash or the OOM killer would, after this layer.
        static const int kill_after = qEnvironmentVariableIntValue("PBLLM_KILL_AFTER_LAYER");
        if (kill_after > 0 && r.layer + 1 == kill_after && !r.resumed)
            ::raise(SIGKILL);
    };
    const QuantizeToFileResult q = quantize_to_file(m, calib.windows, plan, options, print_progress);
    const BitsPerWeight& bits = q.bits;

    QJsonObject report{{"output", QString::fromStdString(out)},
                       {"file_bytes", static_cast<double>(q.file_bytes)},
                       {"salient_ratio", q.salient_ratio},
                       {"bits_per_weight", bits_json(bits)},
                       {"quantized_weights", static_cast<double>(q.quantized_weights)},
                       {"method", QString::fromStdString(to_string(c.layer.method))},
                       {"seconds", q.seconds},
                       {"resumed_layers", q.resumed_layers},
                       {"peak_resident_bytes", static_cast<double>(q.peak_resident_bytes)},
                       {"peak_anonymous_bytes", static_cast<double>(q.peak_anonymous_bytes)},
                       {"planned_working_bytes", static_cast<double>(q.working_bytes)},
                       {"plan", QJsonDocument::fromJson(QByteArray::fromStdString(plan.to_json())).object()}};
    QJsonArray layer_times;
    for (const LayerReport& r : q.layers)
        layer_times.append(QJsonObject{{"layer", r.layer < m.config.n_layers ? QJsonValue(r.layer) : QJsonValue("lm_head")},
                                       {"seconds", r.seconds},
                                       {"gflop", r.gflop},
                                       {"resumed", r.resumed},
                                       {"hessian_seconds", r.hessian_seconds},
                                       {"quantize_seconds", r.quantize_seconds},
                                       {"output_seconds", r.output_seconds},
                                       {"resident_bytes", static_cast<double>(r.resident_bytes)},
                                       {"peak_anonymous_bytes", static_cast<double>(r.peak_anonymous_bytes)}});
    report.insert("layer_times", layer_times);
    QJsonArray layers;
    for (const LinearReport& l : q.linears) {
        layers.append(QJsonObject{{"name", QString::fromStdString(l.name)},
                                  {"rows", static_cast<double>(l.rows)},
                                  {"cols", static_cast<double>(l.cols)},
                                  {"salient_ratio", l.salient_ratio},
                                  {"weight_error", l.weight_error},
                                  {"output_error", l.output_error},
                                  {"bits_per_weight", bits_json(bits_per_weight(std::vector<LinearBits>{l.bits}))},
                                  {"index_encoding", QString::fromStdString(l.index_encoding)},
                                  {"seconds", l.seconds},
                                  {"note", QString::fromStdString(l.note)}});
    }
    report.insert("layers", layers);
    if (cl.is_set("eval")) {
        PerplexitySettings ps;
        ps.max_windows = cl.int_value("eval-windows", 0, 1 << 30);
        const std::vector<int> tokens = tok.encode(read_text_file(cl.value("eval").toStdString()));
        const EvalResult before = evaluate_perplexity(m, tokens, ps, print_progress);
        const EvalResult after = evaluate_perplexity(read_packed_checkpoint(out).quantized.model, tokens, ps, print_progress);
        report.insert("ppl_before", before.ppl);
        report.insert("ppl_after", after.ppl);
        report.insert("eval_windows", static_cast<double>(after.windows));
    }
    if (cl.json()) {
        print_json(report);
        return 0;
    }
    std::printf("%-36s %8s %9s %9s %7s %8s\n", "linear", "salient", "W error", "out error", "bits", "index");
    for (const QJsonValue& v : layers) {
        const QJsonObject o = v.toObject();
        std::printf("%-36s %7.3f%% %9.4f %9.4f %7.3f %8s\n", qPrintable(o["name"].toString().mid(6)),
                    100.0 * o["salient_ratio"].toDouble(), o["weight_error"].toDouble(), o["output_error"].toDouble(),
                    o["bits_per_weight"].toObject()["measured"].toDouble(), qPrintable(o["index_encoding"].toString()));
    }
    std::printf("\nwrote %s (%s) in %.1f s%s\n", out.c_str(), human_bytes(q.file_bytes).c_str(), q.seconds,
                q.resumed_layers > 0 ? (", resuming after " + std::to_string(q.resumed_layers) + " layers").c_str() : "");
    std::printf("salient ratio %.4f; bits per weight: headline %.3f, with bitmap %.3f, with index %.3f, measured %.3f\n",
                q.salient_ratio, bits.headline, bits.with_bitmap, bits.with_index, bits.measured);
    if (q.peak_anonymous_bytes > 0)
        std::printf("peak memory %s (planned %s; mapped model pages apart, peak resident with them %s)\n",
                    human_bytes(q.peak_anonymous_bytes).c_str(), human_bytes(q.working_bytes).c_str(),
                    human_bytes(q.peak_resident_bytes).c_str());
    if (report.contains("ppl_before"))
        std::printf("perplexity before %.4f, after %.4f (%lld windows)\n", report["ppl_before"].toDouble(),
                    report["ppl_after"].toDouble(), static_cast<long long>(report["eval_windows"].toDouble()));
    return 0;
}

namespace {

/// One point of a sweep: a method and the values of the settings it reads.
struct SweepPoint {
    QuantPlan plan;
    std::string label; ///< "salient_ratio=0.1", "bits=3", "billm_search=weights"
};

QStringList list_option(const CommandLine& cl, const char* name)
{
    QStringList items = cl.value(name).split(',', Qt::SkipEmptyParts);
    for (QString& item : items)
        item = item.trimmed();
    if (items.isEmpty())
        throw UsageError{std::string("--") + name + " needs at least one value"};
    return items;
}

/// The values a setting's list flag names (each parsed by the setting), or the base plan's when
/// the flag is absent and has no default list.
std::vector<double> setting_values(const CommandLine& cl, const SettingInfo& s, const LayerQuantSettings& base)
{
    if (!cl.is_set(s.flag) && cl.value(s.flag).isEmpty())
        return {s.get(base)};
    std::vector<double> values;
    for (const QString& item : list_option(cl, s.flag)) {
        try {
            values.push_back(s.parse(item.toStdString()));
        } catch (const Error& e) {
            throw UsageError{std::string("--") + s.flag + ": " + e.what()};
        }
    }
    return values;
}

/// Every combination of the swept values of the settings each method reads (the rest stay at the
/// base plan). Settings with a list (given, or salient's and bits' defaults) appear in the labels.
std::vector<SweepPoint> sweep_points(const CommandLine& cl, const QuantPlan& base)
{
    // A strict setting's list must mean something to one of the swept methods.
    for (const SettingInfo& s : layer_settings()) {
        if (!s.strict || !cl.is_set(s.flag))
            continue;
        bool read = false;
        for (const QString& name : list_option(cl, "methods"))
            if (const MethodInfo* m = find_method(name.toStdString()))
                read |= m->reads(s.key);
        if (!read)
            throw UsageError{std::string("--") + s.flag + ": none of the swept methods reads it (only " +
                             [&] {
                                 std::string names;
                                 for (const MethodInfo& m : methods())
                                     if (m.reads(s.key))
                                         names += (names.empty() ? "" : ", ") + std::string(m.name);
                                 return names;
                             }() +
                             ")"};
    }
    std::vector<SweepPoint> points;
    for (const QString& name : list_option(cl, "methods")) {
        const MethodInfo* m = find_method(name.toStdString());
        if (!m || !m->quantize)
            throw UsageError{"--methods: '" + name.toStdString() + "' is not one of " + method_names(true)};
        SweepPoint p{base, ""};
        set_default_method(p.plan, m->id);
        std::vector<SweepPoint> expanded{p};
        for (const SettingInfo& s : layer_settings()) {
            if (!s.on_command_line || std::string(s.key) == "method" || !m->reads(s.key))
                continue;
            const bool labelled = !cl.value(s.flag).isEmpty();
            std::vector<SweepPoint> next;
            for (const SweepPoint& q : expanded)
                for (double v : setting_values(cl, s, p.plan.config.layer)) {
                    SweepPoint r = q;
                    s.set(r.plan.config.layer, v);
                    if (labelled)
                        r.label += (r.label.empty() ? "" : " ") + std::string(s.key) + "=" + s.format(v);
                    next.push_back(r);
                }
            expanded = next;
        }
        points.insert(points.end(), expanded.begin(), expanded.end());
    }
    return points;
}

} // namespace

int run_sweep(const QStringList& args)
{
    CommandLine cl("sweep", "Quantize with each method and setting, evaluate each result, and write one table of "
                            "quality against measured bits (the Pareto view).", "[MODEL]");
    cl.parser().addOption({"calib", "Calibration text, or a calibration file from 'pbllm calibrate'.", "FILE|CALIB.h5"});
    cl.parser().addOption({"eval", "Text for perplexity.", "TEXT"});
    cl.parser().addOption({"tokenizer", "Tokenizer (default: found beside the model).", "TOK"});
    cl.parser().addOption({"methods", "Comma-separated methods (" + QString::fromStdString(method_names(true)) + ").",
                           "LIST", "pb-gptq,rtn,billm"});
    // Every per-Linear setting but the method takes a list of values to vary, for the methods
    // that read it; salient ratio and bits vary by default.
    for (const SettingInfo& s : layer_settings()) {
        if (!s.on_command_line || std::string(s.key) == "method")
            continue;
        const std::string key = s.key;
        const QString list = key == "salient_ratio" ? "0.05,0.1,0.2" : key == "bits" ? "2,3,4" : "";
        cl.parser().addOption({s.flag,
                               QString::fromStdString("Values to vary (" + s.accepts() + "; default " +
                                                      (list.isEmpty() ? "the plan's" : list.toStdString()) + readers(s) +
                                                      "). " + s.help + "."),
                               "LIST", list});
    }
    cl.parser().addOption({"plan", "Base QuantPlan JSON: what the sweep does not vary.", "PLAN.json"});
    cl.parser().addOption({"nsamples", "Calibration windows (default 128).", "N"});
    cl.parser().addOption({"seqlen", "Calibration window length (default: the model's context).", "N"});
    cl.parser().addOption({"seed", "Calibration sampling seed (default 0).", "S"});
    cl.parser().addOption({"eval-windows", "Evaluate only the first N windows (0 = all).", "N", "0"});
    cl.parser().addOption({{"o", "output"}, "Write the table: .csv, .md or .json by extension.", "TABLE"});
    cl.parser().addOption({"keep", "Keep each packed checkpoint in this folder (default: deleted after its row).", "DIR"});
    cl.parse(args);
    if (!cl.is_set("calib") || !cl.is_set("eval"))
        throw UsageError{"--calib FILE and --eval TEXT are required"};
    const QString table_path = cl.value("o");
    const QString format = QFileInfo(table_path).suffix().toLower();
    if (!table_path.isEmpty() && format != "csv" && format != "md" && format != "json")
        throw UsageError{"-o: the table's extension must be .csv, .md or .json"};

    QuantPlan base = cl.is_set("plan") ? QuantPlan::from_file(cl.value("plan").toStdString()) : QuantPlan{};
    if (cl.is_set("nsamples")) base.config.nsamples = cl.int_value("nsamples", 1, 1 << 20);
    if (cl.is_set("seqlen")) base.config.seqlen = cl.int_value("seqlen", 2, 1 << 20);
    if (cl.is_set("seed")) base.config.seed = seed_value(cl);
    const std::vector<SweepPoint> points = sweep_points(cl, base);
    for (const SweepPoint& p : points) {
        try {
            p.plan.validate();
        } catch (const Error& e) {
            throw UsageError{to_string(p.plan.config.layer.method) + " " + p.label + ": " + e.what()};
        }
    }

    const Model m = cl.load_model(/*mapped=*/true);
    const Tokenizer tok = cl.load_tokenizer(m);
    const Calibration calib = calibration_input(cl, m, tok, base.config.nsamples, base.config.seqlen, base.config.seed);
    PerplexitySettings ps;
    ps.max_windows = cl.int_value("eval-windows", 0, 1 << 30);
    const std::vector<int> tokens = tok.encode(read_text_file(cl.value("eval").toStdString()));
    QTemporaryDir scratch;
    const QString dir = cl.is_set("keep") ? cl.value("keep") : scratch.path();
    if (!QDir().mkpath(dir))
        throw Error(dir.toStdString() + ": cannot create the folder for the checkpoints");

    struct Row {
        std::string method, settings;
        BitsPerWeight bits;
        std::int64_t file_bytes = 0;
        double ppl = 0.0, seconds = 0.0;
        bool pareto = false;
    };
    std::vector<Row> rows;
    const EvalResult reference = evaluate_perplexity(m, tokens, ps, print_progress);
    std::fprintf(stderr, "full precision: perplexity %.4f (%lld windows)\n", reference.ppl,
                 static_cast<long long>(reference.windows));
    for (std::size_t i = 0; i < points.size(); ++i) {
        const SweepPoint& p = points[i];
        const std::string method = to_string(p.plan.config.layer.method);
        QuantizeToFileOptions options;
        options.output = (dir + QString("/%1-%2.pbllm.h5").arg(i, 2, 10, QChar('0')).arg(QString::fromStdString(method)))
                             .toStdString();
        options.overwrite = true;
        options.model_fingerprint = model_fingerprint(m);
        options.header.source_sha256 = model_sha256(m);
        options.header.calibration_sha256 = calib.text_sha256;
        options.header.tokenizer_bytes = tok.model_bytes();
        const QuantizeToFileResult q = quantize_to_file(m, calib.windows, p.plan, options, print_progress);
        const EvalResult e = evaluate_perplexity(read_packed_checkpoint(options.output).quantized.model, tokens, ps, print_progress);
        rows.push_back({method, p.label, q.bits, q.file_bytes, e.ppl, q.seconds});
        std::fprintf(stderr, "%zu/%zu %s %s: perplexity %.4f at %.3f measured bits/weight (%.1f s)\n", i + 1,
                     points.size(), method.c_str(), p.label.c_str(), e.ppl, q.bits.measured, q.seconds);
        if (!cl.is_set("keep"))
            QFile::remove(QString::fromStdString(options.output));
    }
    // Quality against measured bits: a row is on the Pareto front when no other row has no more
    // bits and a lower perplexity.
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.bits.measured < b.bits.measured; });
    for (Row& r : rows)
        r.pareto = std::none_of(rows.begin(), rows.end(), [&](const Row& o) {
            return &o != &r && o.bits.measured <= r.bits.measured && o.ppl < r.ppl;
        });

    QJsonArray json_rows;
    QString csv = "method,settings,headline_bits,with_index_bits,measured_bits,file_bytes,ppl,seconds,pareto\n";
    QString md = QString("Full precision: perplexity %1 over %2 windows.\n\n").arg(reference.ppl, 0, 'f', 4).arg(reference.windows) +
                 "| method | settings | bits: headline | with index | measured | file | PPL | time | Pareto |\n"
                 "|---|---|---|---|---|---|---|---|---|\n";
    for (const Row& r : rows) {
        const QString method = QString::fromStdString(r.method), settings = QString::fromStdString(r.settings);
        json_rows.append(QJsonObject{{"method", method},
                                     {"settings", settings},
                                     {"bits_per_weight", bits_json(r.bits)},
                                     {"file_bytes", static_cast<double>(r.file_bytes)},
                                     {"ppl", r.ppl},
                                     {"seconds", r.seconds},
                                     {"pareto", r.pareto}});
        csv += QString("%1,%2,%3,%4,%5,%6,%7,%8,%9\n").arg(method, settings).arg(r.bits.headline, 0, 'f', 4)
                   .arg(r.bits.with_index, 0, 'f', 4).arg(r.bits.measured, 0, 'f', 4).arg(r.file_bytes)
                   .arg(r.ppl, 0, 'f', 4).arg(r.seconds, 0, 'f', 1).arg(r.pareto ? "yes" : "no");
        md += QString("| %1 | %2 | %3 | %4 | %5 | %6 KiB | %7 | %8 s | %9 |\n").arg(method, settings)
                  .arg(r.bits.headline, 0, 'f', 3).arg(r.bits.with_index, 0, 'f', 3).arg(r.bits.measured, 0, 'f', 3)
                  .arg(static_cast<double>(r.file_bytes) / 1024.0, 0, 'f', 0).arg(r.ppl, 0, 'f', 2)
                  .arg(r.seconds, 0, 'f', 1).arg(r.pareto ? "*" : "");
    }
    const QJsonObject report{{"reference_ppl", reference.ppl},
                             {"eval_windows", static_cast<double>(reference.windows)},
                             {"calibration", QString("%1 windows x %2 tokens").arg(calib.windows.size())
                                                 .arg(calib.windows.empty() ? 0 : calib.windows.front().size())},
                             {"rows", json_rows}};
    if (!table_path.isEmpty()) {
        const QByteArray bytes = format == "csv" ? csv.toUtf8()
                                 : format == "md" ? md.toUtf8()
                                                  : QJsonDocument(report).toJson(QJsonDocument::Indented);
        write_file_atomically(table_path.toStdString(), bytes.toStdString());
    }
    if (cl.json())
        print_json(report);
    else
        std::fputs(md.toUtf8().constData(), stdout);
    return 0;
}

} // namespace pbllm::cli

// pbllm info / eval / generate / convert.
#include "app/cli/cli_common.h"

#include "core/architecture.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/generation.h"
#include "core/hf_model.h"
#include "core/llama2c.h"
#include "core/model.h"
#include "core/model_io.h"
#include "core/packed_checkpoint.h"
#include "core/synthetic.h"
#include "core/system.h"
#include "core/tensor_stats.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>

#include <cstdio>
#include <optional>

namespace pbllm::cli {
namespace {

} // namespace

int run_info(const QStringList& args)
{
    CommandLine cl("info", "Describe a model: format, architecture, tensors (statistics with --stats).", "[MODEL]");
    cl.parser().addOption({"tokenizer", "Tokenizer to report: tokenizer.model or tokenizer.json (default: found beside the model).", "TOK"});
    cl.parser().addOption({"stats", "Also compute each tensor's mean, std, max and kurtosis (reads every weight "
                                    "once; without it only the headers are read)."});
    cl.parse(args);
    const bool with_stats = cl.is_set("stats");
    const std::string path = cl.model_path();
    std::optional<PackedCheckpoint> packed;
    if (has_hdf5_signature(path))
        packed = read_packed_checkpoint(path);
    // Headers only: the weights stay mapped and unread unless statistics are asked for.
    const Model m = packed ? packed->quantized.model : cl.load_model_at(path, /*mapped=*/true, /*check_finite=*/false);
    const ModelConfig& c = m.config;

    QJsonArray tensors;
    const std::vector<NamedTensor> named = m.named_tensors();
    std::int64_t done = 0;
    for (const NamedTensor& t : named) {
        QJsonArray shape;
        for (std::int64_t d : t.tensor.sizes())
            shape.append(static_cast<double>(d));
        QJsonObject o{{"name", QString::fromStdString(t.name)},
                      {"shape", shape},
                      {"dtype", QString::fromStdString(c10::toString(t.tensor.scalar_type()))},
                      {"parameters", static_cast<double>(t.tensor.numel())}};
        if (with_stats) {
            const TensorStats s = tensor_stats(t.tensor);
            o.insert("mean", s.mean);
            o.insert("std", s.std);
            o.insert("abs_max", s.abs_max);
            o.insert("kurtosis", s.kurtosis);
            done += t.tensor.numel();
            print_progress(static_cast<double>(done) / static_cast<double>(c.parameter_count()), "statistics");
        }
        tensors.append(o);
    }
    int tokenizer_vocab = 0;
    if (!m.tokenizer_path.empty() || !m.embedded_tokenizer.empty())
        tokenizer_vocab = cl.load_tokenizer(m).vocab_size();
    QJsonObject quant;
    if (packed) {
        const BitsPerWeight bits = bits_per_weight(packed->packed);
        std::int64_t packed_bytes = 0, index_bytes = 0;
        for (const PackedLinear& p : packed->packed) {
            packed_bytes += p.bytes();
            index_bytes += p.index_bytes();
        }
        quant = QJsonObject{{"salient_ratio", packed->quantized.salient_ratio()},
                            {"bits_per_weight", bits_json(bits)},
                            {"quantized_linears", static_cast<double>(packed->packed.size())},
                            {"quantized_weights", static_cast<double>(packed->quantized.quantized_weights())},
                            {"quantized_bytes", static_cast<double>(packed_bytes)},
                            {"index_bytes", static_cast<double>(index_bytes)},
                            {"fp16_bytes", static_cast<double>(c.parameter_count() * 2)},
                            {"plan", QJsonDocument::fromJson(QByteArray::fromStdString(packed->quantized.plan.to_json())).object()},
                            {"source_sha256", QString::fromStdString(packed->quantized.source_sha256)},
                            {"calibration_sha256", QString::fromStdString(packed->quantized.calibration_sha256)},
                            {"program_version", QString::fromStdString(packed->program_version)},
                            {"created", QString::fromStdString(packed->created)}};
    }

    if (cl.json()) {
        QJsonObject o{{"path", QString::fromStdString(m.source_path)},
                               {"format", QString::fromStdString(std::string(to_string(m.format)))},
                               {"file_bytes", static_cast<double>(m.file_bytes)},
                               {"file_dtype", QString::fromStdString(m.file_dtype)},
                               {"synthetic", QString::fromStdString(m.synthetic)},
                               {"config", QJsonDocument::fromJson(QByteArray::fromStdString(c.to_json())).object()},
                               {"parameters", static_cast<double>(c.parameter_count())},
                               {"tokenizer", QString::fromStdString(m.tokenizer_path.empty() && !m.embedded_tokenizer.empty() ? std::string("(embedded)") : m.tokenizer_path)},
                               {"tokenizer_vocab", tokenizer_vocab},
                               {"tensors", tensors}};
        for (auto it = quant.begin(); it != quant.end(); ++it)
            o.insert(it.key(), it.value());
        print_json(o);
        return 0;
    }
    std::printf("model         %s\n", m.source_path.c_str());
    std::printf("format        %s, %s, %s on disk\n", std::string(to_string(m.format)).c_str(), m.file_dtype.c_str(),
                human_bytes(m.file_bytes).c_str());
    std::printf("architecture  %s: dim %d, %d layers, %d heads (%d KV heads%s), head dim %d, hidden %d,\n"
                "              vocab %d, context %d, %s head\n",
                architecture_details(c).c_str(), c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.n_kv_heads < c.n_heads ? ", grouped-query" : "",
                c.head_dim(), c.hidden_dim, c.vocab_size, c.max_seq_len, c.tied_embeddings ? "tied" : "separate");
    std::printf("parameters    %lld\n", static_cast<long long>(c.parameter_count()));
    if (!m.synthetic.empty())
        std::printf("SYNTHETIC     %s\n", m.synthetic.c_str());
    std::printf("tokenizer     %s\n",
                !m.tokenizer_path.empty() ? (m.tokenizer_path + " (" + std::to_string(tokenizer_vocab) + " pieces)").c_str()
                : !m.embedded_tokenizer.empty() ? ("embedded in the file (" + std::to_string(tokenizer_vocab) + " pieces)").c_str()
                                                : "(none found beside the model)");
    if (packed) {
        const QJsonObject b = quant["bits_per_weight"].toObject();
        std::printf("quantized     %lld Linears, %lld weights, salient ratio %.4f\n",
                    static_cast<long long>(quant["quantized_linears"].toDouble()),
                    static_cast<long long>(quant["quantized_weights"].toDouble()), quant["salient_ratio"].toDouble());
        std::printf("bits/weight   headline %.3f | with bitmap %.3f | with index %.3f | measured %.3f (all stored bytes)\n",
                    b["headline"].toDouble(), b["with_bitmap"].toDouble(), b["with_index"].toDouble(),
                    b["measured"].toDouble());
        std::printf("compression   file %s vs FP16 %s (%.2fx)\n", human_bytes(m.file_bytes).c_str(),
                    human_bytes(c.parameter_count() * 2).c_str(),
                    static_cast<double>(c.parameter_count() * 2) / static_cast<double>(m.file_bytes));
    }
    std::printf("\n%-46s %-13s %-9s", "tensor", "shape", "dtype");
    std::printf(with_stats ? " %10s %10s %9s %9s\n" : "\n", "mean", "std", "abs max", "kurtosis");
    for (const QJsonValue& v : tensors) {
        const QJsonObject o = v.toObject();
        QStringList dims;
        for (const QJsonValue& d : o["shape"].toArray())
            dims << QString::number(d.toInteger());
        std::printf("%-46s %-13s %-9s", qPrintable(o["name"].toString()), qPrintable(dims.join(" x ")),
                    qPrintable(o["dtype"].toString()));
        if (with_stats)
            std::printf(" %10.5f %10.5f %9.4f %9.2f", o["mean"].toDouble(), o["std"].toDouble(),
                        o["abs_max"].toDouble(), o["kurtosis"].toDouble());
        std::printf("\n");
    }
    return 0;
}

int run_eval(const QStringList& args)
{
    CommandLine cl("eval", "Perplexity on a text file (GPTQ protocol: non-overlapping windows, no BOS).", "[MODEL]");
    cl.parser().addOption({"text", "UTF-8 text file to evaluate on.", "FILE"});
    cl.parser().addOption({"tokenizer", "Tokenizer: tokenizer.model or tokenizer.json (default: found beside the model).", "TOK"});
    cl.parser().addOption({"seqlen", "Window length in tokens (default: the model's context).", "N", "0"});
    cl.parser().addOption({"max-windows", "Evaluate only the first N windows (quick mode).", "N", "0"});
    cl.parser().addOption({"batch", "Windows per forward pass (default: chosen from memory).", "N", "0"});
    cl.add_packed_option();
    cl.parse(args);
    if (!cl.is_set("text"))
        throw UsageError{"--text FILE is required"};
    PerplexitySettings settings;
    settings.seqlen = cl.int_value("seqlen", 0, 1 << 20);
    settings.max_windows = cl.int_value("max-windows", 0, 1 << 30);
    settings.batch = cl.int_value("batch", 0, 4096);
    const std::string text_path = cl.value("text").toStdString();
    const Model m = cl.load_model(/*mapped=*/true);
    const Tokenizer tok = cl.load_tokenizer(m);
    const std::string text = read_text_file(text_path);
    const std::vector<int> tokens = tok.encode(text);
    const EvalResult r = evaluate_perplexity(m, tokens, settings, print_progress);
    if (cl.json()) {
        print_json(QJsonObject{{"ppl", r.ppl},
                               {"mean_nll", r.mean_nll},
                               {"windows", static_cast<double>(r.windows)},
                               {"tokens", static_cast<double>(r.tokens)},
                               {"seqlen", r.seqlen},
                               {"seconds", r.seconds},
                               {"tokens_per_second", r.tokens_per_second},
                               {"peak_resident_bytes", static_cast<double>(peak_resident_bytes())},
                               {"packed", m.has_packed_linears()},
                               {"text", QString::fromStdString(text_path)},
                               {"text_sha256", QString::fromStdString(sha256_of_bytes(text))}});
    } else {
        std::printf("perplexity %.4f  (mean NLL %.5f nats) over %lld windows of %d tokens, %lld predictions, "
                    "%.2f s, %.0f tokens/s\n",
                    r.ppl, r.mean_nll, static_cast<long long>(r.windows), r.seqlen, static_cast<long long>(r.tokens),
                    r.seconds, r.tokens_per_second);
    }
    return 0;
}

int run_generate(const QStringList& args)
{
    CommandLine cl("generate", "Generate text from a prompt (streams to stdout).", "[MODEL]");
    cl.parser().addOption({"prompt", "Prompt text.", "TEXT", ""});
    cl.parser().addOption({"tokenizer", "Tokenizer: tokenizer.model or tokenizer.json (default: found beside the model).", "TOK"});
    cl.parser().addOption({{"n", "max-new-tokens"}, "Tokens to generate (default 256).", "N", "256"});
    cl.parser().addOption({"temperature", "0 = greedy (default), else sampling temperature.", "T", "0"});
    cl.parser().addOption({"top-k", "Sample among the K most likely tokens (0 = all).", "K", "0"});
    cl.parser().addOption({"top-p", "Nucleus sampling threshold in (0, 1] (1 = off).", "P", "1"});
    cl.parser().addOption({"seed", "Sampler seed.", "S", "0"});
    cl.parser().addOption({"backend", "Decoder: auto, cpu (plain loops) or torch (libtorch ops).", "B", "auto"});
    cl.add_packed_option();
    cl.parser().addOption({"activations", "Packed kernels: f32 (exact, default) or int8 (activations rounded to int8 "
                                          "per 128 columns for the 1-bit part, to int16 for the salient codes: faster; "
                                          "effect in README).", "A", "f32"});
    cl.parser().addOption({"head", "Output head in the CPU decoder: f16 (as stored, default) or int8 (rows rounded to "
                                   "int8: half the bytes; effect in README).", "H", "f16"});
    cl.parse(args);
    GenerationSettings s;
    s.max_new_tokens = cl.int_value("n", 0, 1 << 20);
    s.sampler.temperature = static_cast<float>(cl.double_value("temperature", 0.0, 1e6));
    s.sampler.top_k = cl.int_value("top-k", 0, 1 << 24);
    s.sampler.top_p = static_cast<float>(cl.double_value("top-p", 1e-9, 1.0));
    bool seed_ok = false;
    s.sampler.seed = cl.value("seed").toULongLong(&seed_ok);
    if (!seed_ok)
        throw UsageError{"--seed must be a non-negative integer"};
    const QString backend = cl.value("backend");
    if (backend == "cpu") s.backend = DecoderBackend::Cpu;
    else if (backend == "torch") s.backend = DecoderBackend::Torch;
    else if (backend != "auto") throw UsageError{"--backend must be auto, cpu or torch"};
    const QString activations = cl.value("activations");
    if (activations == "int8") s.decoder.activations = kernels::PackedActivations::Int8;
    else if (activations != "f32") throw UsageError{"--activations must be f32 or int8"};
    const QString head = cl.value("head");
    if (head == "int8") s.decoder.int8_head = true;
    else if (head != "f16") throw UsageError{"--head must be f16 or int8"};

    Model m = cl.load_model(/*mapped=*/s.backend != DecoderBackend::Torch);
    if (m.format == ModelFormat::HuggingFace && m.tok_embeddings.device().is_cpu()) {
        // Every token reads every weight: huge pages in memory beat the page-cache mapping when
        // the model fits; a model that does not fit runs from the mapping.
        try {
            m = resident_copy(m);
        } catch (const Error&) {
        }
    }
    const Tokenizer tok = cl.load_tokenizer(m);
    const std::string prompt = cl.value("prompt").toStdString();
    const bool stream = !cl.json();
    if (stream) {
        std::fputs(prompt.empty() ? "" : tok.decode(tok.encode(prompt)).c_str(), stdout);
        std::fflush(stdout);
    }
    const GenerationResult r = generate(m, tok, prompt, s, [&](int, std::string_view text) {
        if (stream) {
            std::fwrite(text.data(), 1, text.size(), stdout);
            std::fflush(stdout);
        }
        return true;
    });
    if (cl.json()) {
        print_json(QJsonObject{{"text", QString::fromStdString(r.text)},
                               {"completion", QString::fromStdString(r.completion)},
                               {"tokens", static_cast<double>(r.tokens.size())},
                               {"prompt_tokens", static_cast<double>(r.prompt_tokens.size())},
                               {"tokens_per_second", r.tokens_per_second},
                               {"time_to_first_token", r.time_to_first_token},
                               {"peak_resident_bytes", static_cast<double>(peak_resident_bytes())},
                               {"packed", m.has_packed_linears()},
                               {"seconds", r.seconds}});
    } else {
        std::fprintf(stderr, "\n[%zu tokens, %.1f tokens/s, first token after %.1f ms]\n", r.tokens.size(),
                     r.tokens_per_second, r.time_to_first_token * 1e3);
    }
    return 0;
}

int run_synth(const QStringList& args)
{
    CommandLine cl("synth", "Write a SYNTHETIC Hugging Face model (random weights of a real model's shape) for "
                            "speed and memory benchmarks. Its outputs mean nothing.", "");
    QStringList shapes;
    for (const NamedShape& shape : synthetic_shapes())
        shapes << QString::fromStdString(shape.name);
    cl.parser().addOption({"shape", "Model shape: " + shapes.join(", ") + ".", "NAME"});
    cl.parser().addOption({"dtype", "Stored precision: f16 (default), bf16 or f32.", "DTYPE", "f16"});
    cl.parser().addOption({"layers", "Decoder layers (default: the shape's; fewer make a quick stand-in).", "N", "0"});
    cl.parser().addOption({"seed", "Random seed.", "S", "0"});
    cl.parser().addOption({"tokenizer", "Tokenizer to copy in (tokenizer.model or tokenizer.json; no more tokens "
                                        "than the shape's vocabulary).", "TOK"});
    cl.parser().addOption({{"o", "output"}, "Output folder (must be empty or new).", "DIR"});
    cl.parse(args);
    if (!cl.is_set("shape") || !cl.is_set("o"))
        throw UsageError{"--shape NAME and -o DIR are required"};
    SyntheticHfSpec spec;
    spec.shape_name = cl.value("shape").toStdString();
    spec.config = synthetic_shape(spec.shape_name);
    if (const int layers = cl.int_value("layers", 0, 1024); layers > 0)
        spec.config.n_layers = layers;
    const QString dtype = cl.value("dtype");
    if (dtype == "f16") spec.dtype = at::kHalf;
    else if (dtype == "bf16") spec.dtype = at::kBFloat16;
    else if (dtype == "f32") spec.dtype = at::kFloat;
    else throw UsageError{"--dtype must be f16, bf16 or f32 (got '" + dtype.toStdString() + "')"};
    spec.seed = static_cast<std::uint64_t>(cl.int_value("seed", 0, 1 << 30));
    if (cl.is_set("tokenizer")) {
        spec.tokenizer_path = cl.value("tokenizer").toStdString();
        const Tokenizer tok = Tokenizer::from_file(spec.tokenizer_path);
        if (tok.vocab_size() > spec.config.vocab_size) // as tokenizer_for: padded embeddings are fine
            throw Error(spec.tokenizer_path + ": tokenizer has " + std::to_string(tok.vocab_size()) +
                        " tokens but the " + spec.shape_name + " shape has a vocabulary of " +
                        std::to_string(spec.config.vocab_size));
    }
    const std::string out = cl.value("o").toStdString();
    write_synthetic_hf(spec, out, print_progress);
    const std::int64_t params = spec.config.parameter_count();
    if (cl.json())
        print_json(QJsonObject{{"output", QString::fromStdString(out)},
                               {"shape", QString::fromStdString(spec.shape_name)},
                               {"parameters", static_cast<double>(params)},
                               {"layers", spec.config.n_layers},
                               {"dtype", dtype}});
    else
        std::printf("wrote %s: SYNTHETIC %s shape, %d layers, %lld parameters, %s\n", out.c_str(),
                    spec.shape_name.c_str(), spec.config.n_layers, static_cast<long long>(params), qPrintable(dtype));
    return 0;
}

int run_convert(const QStringList& args)
{
    CommandLine cl("convert", "Write a model in another format.", "[MODEL]");
    cl.parser().addOption({"to", "Target format: hf (config.json + model.safetensors + the tokenizer files) or llama2c "
                                 "(version 1 .bin).", "FORMAT"});
    cl.parser().addOption({{"o", "output"}, "Output folder (hf) or file (llama2c).", "PATH"});
    cl.parser().addOption({"tokenizer", "Tokenizer to copy along: tokenizer.model or tokenizer.json (default: found beside the model).", "TOK"});
    cl.parser().addOption({"force", "Overwrite an existing output."});
    cl.parse(args);
    if (!cl.is_set("to") || !cl.is_set("o"))
        throw UsageError{"--to FORMAT and -o PATH are required"};
    const QString to = cl.value("to");
    if (to != "hf" && to != "llama2c")
        throw UsageError{"--to must be hf or llama2c (got '" + to.toStdString() + "')"};
    const std::string out = cl.value("o").toStdString();
    const Model m = cl.load_model();
    if (to == "hf") {
        HfExportOptions options;
        options.overwrite = cl.is_set("force");
        options.tokenizer_path = m.tokenizer_path;
        save_hf(m, out, options);
    } else {
        if (QFileInfo::exists(QString::fromStdString(out)) && !cl.is_set("force"))
            throw Error(out + ": exists; refusing to overwrite (use --force)");
        save_llama2c_v1(m, out);
    }
    if (!cl.json())
        std::printf("wrote %s (%s)\n", out.c_str(), to == "hf" ? "Hugging Face safetensors" : "llama2.c version 1");
    else
        print_json(QJsonObject{{"output", QString::fromStdString(out)}, {"format", to}});
    return 0;
}

} // namespace pbllm::cli

// pbllm bench: throughput of perplexity evaluation and batch-1 generation, with the machine's
// own fp32 matmul rate and memory bandwidth measured in the same run as the yardsticks.
#include "app/cli/bench_util.h"
#include "app/cli/cli_common.h"

#include "core/decoder.h"
#include "core/evaluation.h"
#include "core/kernels/matvec.h"
#include "core/model_io.h"
#include "core/synthetic.h"
#include "core/system.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <QFileInfo>
#include <QJsonArray>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>

namespace pbllm::cli {
namespace {

struct ModelBench {
    std::string name;
    bool synthetic = false;
    std::int64_t parameters = 0;
    int eval_windows = 0, eval_seqlen = 0;
    double eval_tokens_per_second = 0.0, eval_gflops = 0.0;
    int gen_tokens = 0;
    double gen_cpu_tokens_per_second = 0.0, gen_torch_tokens_per_second = 0.0, gen_cpu_gbps = 0.0;
};

ModelBench bench_model(const std::string& name, const Model& model, const std::vector<int>& text_tokens, int runs,
                       int gen_tokens, bool synthetic)
{
    c10::InferenceMode inference;
    const ModelConfig& c = model.config;
    ModelBench r;
    r.name = name;
    r.synthetic = synthetic;
    r.parameters = c.parameter_count();
    r.eval_seqlen = std::min(c.max_seq_len, 512);
    r.eval_windows = 8;
    std::vector<int> tokens = text_tokens;
    if (static_cast<int>(tokens.size()) < r.eval_windows * r.eval_seqlen) {
        // Random token ids (synthetic models have no tokenizer; speed does not depend on the ids).
        const at::Tensor ids = at::randint(c.vocab_size, {r.eval_windows * r.eval_seqlen}, at::kLong);
        tokens.assign(ids.data_ptr<std::int64_t>(), ids.data_ptr<std::int64_t>() + ids.numel());
    }
    PerplexitySettings ps;
    ps.seqlen = r.eval_seqlen;
    ps.max_windows = r.eval_windows;
    r.eval_tokens_per_second =
        median_rate(runs, [&] { return evaluate_perplexity(model, tokens, ps).tokens_per_second; });
    // Per token: 2 FLOPs per weight of the Linears and the head, plus causal attention
    // (QK^T and PV average T/2 keys: 2 * 2 * T/2 * heads x head_dim per layer).
    const double linear_params = static_cast<double>(c.parameter_count() - static_cast<std::int64_t>(c.vocab_size) * c.dim *
                                                                                (c.tied_embeddings ? 0 : 1));
    const double flops_per_token = 2.0 * linear_params + 2.0 * c.n_layers * r.eval_seqlen * c.q_dim();
    r.eval_gflops = r.eval_tokens_per_second * flops_per_token / 1e9;

    r.gen_tokens = std::min(gen_tokens, c.max_seq_len - 1);
    auto decode_rate = [&](DecoderBackend backend) {
        auto decoder = make_decoder(model, backend, r.gen_tokens + 1);
        return median_rate(runs, [&] {
            decoder->reset();
            const double s = seconds_of([&] {
                int token = 1;
                for (int i = 0; i < r.gen_tokens; ++i) {
                    const float* logits = decoder->step(token);
                    token = static_cast<int>(std::max_element(logits, logits + c.vocab_size) - logits);
                }
            });
            return r.gen_tokens / s;
        });
    };
    r.gen_cpu_tokens_per_second = decode_rate(DecoderBackend::Cpu);
    // libtorch has no half-precision matmul on the CPU: its decoder runs float32 models only.
    const bool float32 = model.tok_embeddings.scalar_type() == at::kFloat;
    r.gen_torch_tokens_per_second = float32 ? decode_rate(DecoderBackend::Torch) : 0.0;
    r.gen_cpu_gbps = r.gen_cpu_tokens_per_second * static_cast<double>(c.parameter_count()) *
                     static_cast<double>(model.tok_embeddings.element_size()) / 1e9;
    return r;
}

} // namespace

int run_bench(const QStringList& args)
{
    CommandLine cl("bench", "Measure evaluation and generation speed (medians of several runs).", "");
    cl.parser().addOption({"runs", "Timed runs per measurement (after one warm-up).", "N", "5"});
    cl.parser().addOption({"models", "Comma-separated: stories260K, synthetic-15M, synthetic-110M; a synthetic "
                                     "name ending in -f16 or -bf16 stores its weights so (the decoder reads them as "
                                     "they are).", "LIST", "stories260K,synthetic-15M,synthetic-110M"});
    cl.parser().addOption({"gen-tokens", "Tokens per generation run.", "N", "128"});
    cl.parser().addOption({"suite", "eval (evaluation and generation), quant (PB-GPTQ, previews), methods (each method on a 4096 x 4096 Linear), packed (packed "
                                    "kernels vs dequantized float32 and FP16), kernels (the packed suite's kernel "
                                    "lines alone) or tokenizer (encoding speed).", "S", "eval"});
    cl.parser().addOption({"tokenizers", "tokenizer suite: comma-separated tokenizer files (default: tok512 and the "
                                         "shared tokenizer.json files).", "LIST"});
    cl.parser().addOption({"methods", "methods suite: comma-separated methods to time (default: every post-training "
                                      "method).", "LIST"});
    cl.parser().addOption({"shape", "packed suite: synthetic model shape.", "NAME", "stories110m"});
    cl.parser().addOption({"layers", "packed suite: decoder layers (default: the shape's).", "N", "0"});
    cl.parser().addOption({"salient", "packed suite: salient ratio.", "R", "0.1"});
    cl.parser().addOption({"file", "packed suite: measure this .pbllm.h5 run packed against dequantized (perplexity, "
                                   "KL divergence, greedy text) instead of speed.", "FILE"});
    cl.parser().addOption({"text", "packed suite with --file: evaluation text; tokenizer suite: text to encode (its "
                                   "first MiB; default tinystories_val).", "FILE"});
    cl.parser().addOption({"windows", "packed suite with --file: windows of 256 tokens (0 = all).", "N", "0"});
    cl.parse(args);
    const int runs = cl.int_value("runs", 1, 1000);
    const int gen_tokens = cl.int_value("gen-tokens", 1, 1 << 16);
    if (cl.value("suite") == "quant")
        return run_quant_bench(runs, cl.json());
    if (cl.value("suite") == "methods")
        return run_methods_bench(runs, cl.json(), cl.is_set("methods") ? cl.value("methods").toStdString() : "");
    if (cl.value("suite") == "packed" && cl.is_set("file")) {
        if (!cl.is_set("text"))
            throw UsageError{"--file needs --text FILE"};
        return run_packed_quality(cl.value("file").toStdString(), cl.value("text").toStdString(),
                                  cl.int_value("windows", 0, 1 << 24), gen_tokens, cl.json());
    }
    if (cl.value("suite") == "kernels")
        return run_kernel_bench(runs, cl.double_value("salient", 0.0, 1.0), cl.json());
    if (cl.value("suite") == "packed")
        return run_packed_bench(runs, gen_tokens, cl.value("shape").toStdString(), cl.int_value("layers", 0, 1024),
                                cl.double_value("salient", 0.0, 1.0), cl.json());
    if (cl.value("suite") == "tokenizer")
        return run_tokenizer_bench(runs, cl.value("tokenizers").split(',', Qt::SkipEmptyParts),
                                   cl.value("text").toStdString(), cl.json());
    if (cl.value("suite") != "eval")
        throw UsageError{"--suite must be eval, quant, methods, packed, kernels or tokenizer"};
    const Baselines base = measure_baselines(runs);
    std::vector<ModelBench> results;
    for (const QString& which : cl.value("models").split(',', Qt::SkipEmptyParts)) {
        if (which == "stories260K") {
            const ModelLocation where = locate_default_model(print_progress);
            const Model m = load_model(where.model_path, {where.tokenizer_path});
            std::vector<int> tokens;
            const std::string val = QFileInfo(QString::fromStdString(where.model_path)).absolutePath().toStdString() +
                                    "/../../data/tinystories/tinystories_val.txt";
            if (QFileInfo::exists(QString::fromStdString(val))) {
                std::string text = read_text_file(val);
                text.resize(std::min<std::size_t>(text.size(), 64 * 1024));
                tokens = Tokenizer::from_file(where.tokenizer_path).encode(text);
            }
            results.push_back(bench_model("stories260K", m, tokens, runs, gen_tokens, false));
        } else if (which.startsWith("synthetic-")) {
            // synthetic-<15M|110M>[-f16|-bf16]
            const QStringList parts = which.split('-');
            const QString size = parts.value(1), dtype = parts.value(2, "f32");
            if ((size != "15M" && size != "110M") || parts.size() > 3 || (dtype != "f32" && dtype != "f16" && dtype != "bf16"))
                throw UsageError{"unknown model '" + which.toStdString() + "' in --models"};
            const at::ScalarType type = dtype == "f16" ? at::kHalf : dtype == "bf16" ? at::kBFloat16 : at::kFloat;
            const Model m = make_synthetic_model(size == "15M" ? stories15m_shape() : stories110m_shape());
            results.push_back(bench_model(which.toStdString(), m.to(at::kCPU, type), {}, runs, gen_tokens, true));
        } else {
            throw UsageError{"unknown model '" + which.toStdString() + "' in --models"};
        }
    }

    if (cl.json()) {
        QJsonArray models;
        for (const ModelBench& r : results)
            models.append(QJsonObject{{"name", QString::fromStdString(r.name)},
                                      {"synthetic", r.synthetic},
                                      {"parameters", static_cast<double>(r.parameters)},
                                      {"eval_windows", r.eval_windows},
                                      {"eval_seqlen", r.eval_seqlen},
                                      {"eval_tokens_per_second", r.eval_tokens_per_second},
                                      {"eval_gflops", r.eval_gflops},
                                      {"eval_fraction_of_matmul", r.eval_gflops / base.matmul_gflops},
                                      {"gen_tokens", r.gen_tokens},
                                      {"gen_cpu_tokens_per_second", r.gen_cpu_tokens_per_second},
                                      {"gen_torch_tokens_per_second", r.gen_torch_tokens_per_second},
                                      {"gen_cpu_over_torch", r.gen_torch_tokens_per_second > 0 ? r.gen_cpu_tokens_per_second / r.gen_torch_tokens_per_second : 0.0},
                                      {"gen_cpu_weight_gbps", r.gen_cpu_gbps},
                                      {"gen_fraction_of_memory_bandwidth", r.gen_cpu_gbps / base.memory_gbps}});
        print_json(QJsonObject{{"threads", at::get_num_threads()},
                               {"matvec_kernel", kernels::matvec_kernel_name()},
                               {"runs", runs},
                               {"matmul_gflops", base.matmul_gflops},
                               {"memory_gbps", base.memory_gbps},
                               {"models", models}});
        return 0;
    }
    std::printf("threads %d, medians of %d runs, matvec kernel %s\n", at::get_num_threads(), runs,
                kernels::matvec_kernel_name());
    std::printf("baselines: fp32 GEMM 2048^2 %.1f GFLOP/s, memory read %.1f GB/s\n\n", base.matmul_gflops,
                base.memory_gbps);
    std::printf("%-21s %11s | %-26s | %-52s\n", "model", "params", "perplexity eval", "batch-1 generation");
    for (const ModelBench& r : results) {
        std::printf("%-21s %11lld | %8.0f tok/s %5.1f%% GEMM | plain loop %7.1f tok/s (%4.1f%% of mem bw), ",
                    r.name.c_str(), static_cast<long long>(r.parameters), r.eval_tokens_per_second,
                    100.0 * r.eval_gflops / base.matmul_gflops, r.gen_cpu_tokens_per_second,
                    100.0 * r.gen_cpu_gbps / base.memory_gbps);
        if (r.gen_torch_tokens_per_second > 0)
            std::printf("libtorch ops %7.1f tok/s (x%.2f)\n", r.gen_torch_tokens_per_second,
                        r.gen_cpu_tokens_per_second / r.gen_torch_tokens_per_second);
        else
            std::printf("libtorch ops: float32 only\n");
    }
    std::printf("\nsynthetic-* models have random weights of the real shapes: speed only, never quality.\n");
    return 0;
}

} // namespace pbllm::cli
